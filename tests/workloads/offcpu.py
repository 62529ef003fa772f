"""Threads whose off-CPU time is known by construction, for SECONDS:

- compute-sleep: computes 40 ms, sleeps 60 ms, in a loop      → cpu 40%, sleep 60%
- net-client:    asks a local TCP server that answers after 30 ms → net ~100%
- lock-waiter:   waits for a threading.Lock another thread holds → lock ~100%
- fsync:         writes and fsyncs a file in a loop             → disk, with the file's path
- (with "gil") gil-a, gil-b: two CPU-bound threads fighting for the GIL → gil
Prints the server port, then "ready".
"""
import os
import socket
import sys
import tempfile
import threading
import time

SECONDS = float(sys.argv[1])
END = time.time() + SECONDS


def compute_for(seconds):
    end = time.time() + seconds
    x = 0
    while time.time() < end:
        x += 1
    return x


def compute_sleep():
    while time.time() < END:
        compute_for(0.040)
        time.sleep(0.060)


def serve(listener):
    conn, _ = listener.accept()
    while conn.recv(64):
        time.sleep(0.030)
        conn.sendall(b"pong")


def client_loop(port):
    s = socket.create_connection(("127.0.0.1", port))
    while time.time() < END:
        s.sendall(b"ping")
        s.recv(64)
    s.close()


def hold_lock(lock):
    while time.time() < END:
        with lock:
            time.sleep(0.050)
        time.sleep(0.0005)


def wait_for_lock(lock):
    time.sleep(0.01)
    while time.time() < END:
        with lock:
            pass


MAX_FILE_BYTES = 16 << 20


def fsync_loop(path):
    with open(path, "wb") as f:
        while time.time() < END:
            f.write(b"x" * 65536)
            f.flush()
            os.fsync(f.fileno())
            # Bounded: a killed run leaves this file behind (at gigabytes a minute unbounded,
            # a few runs filled the test machine's disk).
            if f.tell() >= MAX_FILE_BYTES:
                f.seek(0)


def spin():
    x = 0
    while time.time() < END:
        x += 1


if __name__ == "__main__":
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    lock = threading.Lock()
    path = os.path.join(tempfile.gettempdir(), f"pyebpf-fsync-{os.getpid()}.dat")
    threads = [
        threading.Thread(target=serve, args=(listener,), name="server", daemon=True),
        threading.Thread(target=compute_sleep, name="compute-sleep"),
        threading.Thread(target=client_loop, args=(port,), name="net-client"),
        threading.Thread(target=hold_lock, args=(lock,), name="lock-holder"),
        threading.Thread(target=wait_for_lock, args=(lock,), name="lock-waiter"),
        threading.Thread(target=fsync_loop, args=(path,), name="fsync"),
    ]
    if "gil" in sys.argv[2:]:
        threads = [threading.Thread(target=spin, name=n) for n in ("gil-a", "gil-b")]
    print(port, flush=True)
    print("ready", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        if not t.daemon:
            t.join()
    if os.path.exists(path):
        os.unlink(path)
