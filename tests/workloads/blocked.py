"""Threads blocked since before any profile starts, each in a function of its own: a server
in accept() (acceptor), a thread asleep for an hour (sleeper), a lock holder asleep while
holding it (holder) and a thread waiting for that lock (waiter). Prints "ready" once all are
blocked, then the main thread joins the sleeper."""
import socket
import threading
import time

lock = threading.Lock()
held = threading.Event()


def accept_forever(server):
    while True:
        conn, _ = server.accept()  # accept-line
        conn.close()


def sleep_an_hour():
    time.sleep(3600)  # sleep-line


def hold_lock():
    with lock:
        held.set()
        time.sleep(3600)  # hold-line


def wait_for_lock():
    held.wait()
    with lock:  # wait-line
        pass


server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
threads = [
    threading.Thread(target=accept_forever, args=(server,), name="acceptor", daemon=True),
    threading.Thread(target=sleep_an_hour, name="sleeper", daemon=True),
    threading.Thread(target=hold_lock, name="holder", daemon=True),
    threading.Thread(target=wait_for_lock, name="waiter", daemon=True),
]
for t in threads:
    t.start()
held.wait()
time.sleep(0.2)
print("ready", flush=True)
threads[1].join()
