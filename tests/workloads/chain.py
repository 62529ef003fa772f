"""A known call chain burning CPU in several threads.

module code -> run -> Worker.work -> Worker.work.<locals>.inner -> burn (CPU loop).
Lines marked `# CALL <name>` are the call sites the profiler must report; the test finds them
by these markers, so editing this file cannot silently break line expectations.
Usage: chain.py SECONDS THREADS. Prints "ready" once every thread is burning.
"""
import sys
import threading
import time


def burn(deadline):
    x = 0
    while time.time() < deadline:  # LOOP start
        for i in range(3000):
            x += i * i
    return x  # LOOP end


class Worker:
    def work(self, deadline):
        def inner():
            return burn(deadline)  # CALL burn
        return inner()  # CALL inner


def run(deadline):
    return Worker().work(deadline)  # CALL work


def thread_main(deadline, started):
    started.release()
    run(deadline)  # CALL run-thread


if __name__ == "__main__":
    seconds = float(sys.argv[1])
    threads = int(sys.argv[2])
    deadline = time.time() + seconds
    started = threading.Semaphore(0)
    workers = [threading.Thread(target=thread_main, args=(deadline, started), name=f"burner-{i}") for i in range(threads)]
    for t in workers:
        t.start()
    for _ in workers:
        started.acquire()
    print("ready", flush=True)
    run(deadline)  # CALL run-main
    for t in workers:
        t.join()
