"""THREADS threads, of which BUSY burn CPU and the rest sleep. Prints "ready" once all run."""
import sys
import threading
import time


def idle(stop):
    stop.wait()


def busy_loop(deadline):
    x = 0
    while time.time() < deadline:
        for i in range(2000):
            x += i
    return x


if __name__ == "__main__":
    seconds, total, busy = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    stop = threading.Event()
    sleepers = [threading.Thread(target=idle, args=(stop,), daemon=True) for _ in range(total - busy)]
    for t in sleepers:
        t.start()
    deadline = time.time() + seconds
    burners = [threading.Thread(target=busy_loop, args=(deadline,)) for _ in range(busy)]
    for t in burners:
        t.start()
    print("ready", flush=True)
    for t in burners:
        t.join()
    stop.set()
