"""Short-lived wait targets, one per "request", for SECONDS (argv[1]) in directory DIR (argv[2]):

- file-requests: each request opens a new file DIR/req-N.dat, writes it, fsyncs it, closes and
  deletes it, then holds another file open for 10 ms (DIR/held/held-N.txt, which gets the
  descriptor number the first had)                → disk waits on DIR/req-N.dat
- conn-requests: each request connects to a local TCP server (which answers after 20 ms),
  sends, waits for the reply, closes              → net waits on tcp 127.0.0.1:PORT
Prints "port PORT", then "ready"; at the end "slow_fsyncs N", the fsyncs that took 1 ms or more
(none on a filesystem whose fsync does not wait, such as tmpfs: there is no disk wait to name).

Every descriptor is closed (and its number reused by the next request) long before a profiler
could look it up in /proc after the fact: only what was captured at the syscall names it.
"""
import os
import socket
import sys
import threading
import time

END = time.time() + float(sys.argv[1])
DIR = sys.argv[2]
slow_fsyncs = 0


def serve(listener):
    while True:
        conn, _ = listener.accept()
        with conn:
            if conn.recv(64):
                time.sleep(0.020)
                conn.sendall(b"pong")


def file_request(n):
    path = os.path.join(DIR, f"req-{n}.dat")
    with open(path, "wb") as f:
        f.write(b"x" * 262144)
        f.flush()
        start = time.perf_counter()
        os.fsync(f.fileno())
        if time.perf_counter() - start >= 0.001:
            global slow_fsyncs
            slow_fsyncs += 1
    os.unlink(path)
    held = os.path.join(DIR, "held", f"held-{n}.txt")
    with open(held, "w"):
        time.sleep(0.010)
    os.unlink(held)


def file_requests():
    n = 0
    while time.time() < END:
        file_request(n)
        n += 1


def connection_request(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"ping")
        s.recv(64)


def conn_requests(port):
    while time.time() < END:
        connection_request(port)


if __name__ == "__main__":
    os.makedirs(os.path.join(DIR, "held"), exist_ok=True)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    print("port", port, flush=True)
    threading.Thread(target=serve, args=(listener,), name="server", daemon=True).start()
    threads = [
        threading.Thread(target=file_requests, name="file-requests"),
        threading.Thread(target=conn_requests, args=(port,), name="conn-requests"),
    ]
    print("ready", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("slow_fsyncs", slow_fsyncs, flush=True)
