"""Threads that give up the CPU in a tight loop (os.sched_yield), for as many context
switches inside syscalls as the machine can make: with an off-CPU threshold of 0 each one is
an event with stacks, far more than the ring buffer can hold.

Usage: yield_burst.py SECONDS THREADS. Prints "ready" once every thread runs.
"""
import os
import sys
import threading
import time


def yield_loop(deadline):
    while time.time() < deadline:
        for _ in range(1000):
            os.sched_yield()


if __name__ == "__main__":
    seconds, count = float(sys.argv[1]), int(sys.argv[2])
    deadline = time.time() + seconds
    threads = [threading.Thread(target=yield_loop, args=(deadline,)) for _ in range(count)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    yield_loop(deadline)
    for t in threads:
        t.join()
