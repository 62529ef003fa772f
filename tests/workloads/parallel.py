"""Threads running Python at the same time (free-threaded builds), each in its own call chain
into shared code.

thread "lane-N": lane_N -> Stage.run -> burn. `burn` and `Stage.run` are one code object for
every thread, so a free-threaded 3.14+ interpreter runs them from per-thread copies of their
bytecode once each thread has specialized them; the lines must come out right for every copy.
Lines marked `# CALL <name>` / `# LOOP` are what the profiler must report (the test finds them
by these markers). Usage: parallel.py SECONDS. Prints "ready" once every lane is running.
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


class Stage:
    def run(self, deadline):
        return burn(deadline)  # CALL burn


def lane_0(deadline):
    return Stage().run(deadline)  # CALL lane-0


def lane_1(deadline):
    return Stage().run(deadline)  # CALL lane-1


def lane_2(deadline):
    return Stage().run(deadline)  # CALL lane-2


def lane_3(deadline):
    return Stage().run(deadline)  # CALL lane-3


LANES = [lane_0, lane_1, lane_2, lane_3]


def start(lane, deadline, started):
    started.release()
    lane(deadline)


if __name__ == "__main__":
    deadline = time.time() + float(sys.argv[1])
    started = threading.Semaphore(0)
    threads = [
        threading.Thread(target=start, args=(lane, deadline, started), name=f"lane-{i}")
        for i, lane in enumerate(LANES)
    ]
    for t in threads:
        t.start()
    for _ in threads:
        started.acquire()
    print("ready", flush=True)
    for t in threads:
        t.join()
