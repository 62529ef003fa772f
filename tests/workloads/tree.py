"""Process trees for the subprocess tests (tests/tests/trees.rs).

    tree.py pool WORKERS SECONDS [EXIT_STATUS]
        A multiprocessing.Pool of WORKERS processes maps pool_work (pure-Python CPU) over
        tasks for about SECONDS; the parent waits in the pool. Prints one JSON line
        {"parent": PID, "workers": [PID...]} (the pids that ran tasks) and exits with
        EXIT_STATUS (default 0).

    tree.py stubborn PIDFILE
        Starts a tree that does not end easily, then waits forever: a multiprocessing child
        burning CPU (burner_work), a child that ignores SIGINT and SIGTERM, and a grandchild
        that left the process group and session (os.setsid). Each process appends
        "PID ROLE" to PIDFILE once running; the parent last, as "PID parent", once all are.

Both use the platform's default start method (fork up to 3.13, forkserver from 3.14).
"""
import json
import multiprocessing
import os
import signal
import sys
import time


def pool_work(seconds):
    """Burns CPU in Python for `seconds`; returns the pid that ran it."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for i in range(500):
            x += i * i
    return os.getpid()


def pool(workers, seconds, status):
    tasks = workers * 8
    with multiprocessing.Pool(workers) as p:
        ran = sorted(set(p.map(pool_work, [seconds / 8.0] * tasks, chunksize=1)))
    print(json.dumps({"parent": os.getpid(), "workers": ran}), flush=True)
    sys.exit(status)


def note(pidfile, role):
    with open(pidfile, "a") as f:
        f.write(f"{os.getpid()} {role}\n")


def burner_work(pidfile):
    note(pidfile, "burner")
    x = 0
    while True:
        x += 1


def deaf(pidfile):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    note(pidfile, "deaf")
    while True:
        time.sleep(0.1)


def escaped(pidfile):
    # Its own session (and process group): out of reach of a signal to the command's group.
    pid = os.fork()
    if pid == 0:
        os.setsid()
        note(pidfile, "escaped")
        while True:
            time.sleep(0.1)
    os.waitpid(pid, 0)


def stubborn(pidfile):
    open(pidfile, "a").close()
    children = [
        multiprocessing.Process(target=burner_work, args=(pidfile,), name="burner"),
        multiprocessing.Process(target=deaf, args=(pidfile,), name="deaf"),
        multiprocessing.Process(target=escaped, args=(pidfile,), name="escaped"),
    ]
    for c in children:
        c.start()
    while True:
        with open(pidfile) as f:
            if len(f.read().splitlines()) >= 3:
                break
        time.sleep(0.05)
    note(pidfile, "parent")
    for c in children:
        c.join()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "pool":
        pool(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    elif mode == "stubborn":
        stubborn(sys.argv[2])
    else:
        sys.exit(f"unknown mode {mode}")
