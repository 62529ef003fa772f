"""Syscall-heavy workloads for `cargo xtask bench off-cpu`. Prints one JSON line at the end.

pingpong SECONDS: two threads hand one byte back and forth over pipes (every hand-off blocks a
                  thread: two context switches per round trip).
echo SECONDS:     a client thread makes small request/response round trips to a local TCP
                  echo server thread.
"""
import json
import os
import socket
import sys
import threading
import time

mode, seconds = sys.argv[1], float(sys.argv[2])
end = time.time() + seconds
count = 0

if mode == "pingpong":
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()

    def echo():
        while os.read(a_r, 1) != b"q":
            os.write(b_w, b"x")

    t = threading.Thread(target=echo)
    t.start()
    start = time.time()
    while time.time() < end:
        os.write(a_w, b"x")
        os.read(b_r, 1)
        count += 1
    os.write(a_w, b"q")
    t.join()
else:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve():
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(64)
            if not data:
                return
            conn.sendall(data)

    t = threading.Thread(target=serve)
    t.start()
    client = socket.create_connection(listener.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.time()
    while time.time() < end:
        client.sendall(b"ping")
        client.recv(64)
        count += 1
    client.close()
    t.join()

print(json.dumps({"round_trips": count, "seconds": time.time() - start}), flush=True)
