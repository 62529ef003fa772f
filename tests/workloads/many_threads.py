"""THREADS threads, of which BUSY burn CPU and the rest sleep, for SECONDS after "ready".

The busy threads start first: CPython puts new threads at the head of its thread list, so they
end up at its tail, beyond any short scan from the head.
"""
import sys
import threading
import time


def idle(stop):
    stop.wait()


def busy_loop(stop):
    x = 0
    while not stop.is_set():
        for i in range(2000):
            x += i
    return x


if __name__ == "__main__":
    seconds, total, busy = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    stop = threading.Event()
    burners = [threading.Thread(target=busy_loop, args=(stop,)) for _ in range(busy)]
    for t in burners:
        t.start()
    sleepers = [threading.Thread(target=idle, args=(stop,), daemon=True) for _ in range(total - busy)]
    for t in sleepers:
        t.start()
    print("ready", flush=True)
    time.sleep(seconds)
    stop.set()
    for t in burners:
        t.join()
