"""A write+fsync loop for SECONDS (argv[1]) in a child process forked for it: disk time, CPU
time and, beside CPU burners, run-queue time, over the child's whole life.

The parent reads the clock just before the fork; the child reads it just before it exits
(then only writes it and calls _exit). The parent waits for the child's exit without reaping
it (waitid WNOWAIT), prints "zombie PID WALL_NS" and waits for a line on stdin before it reaps
it: meanwhile the reader (outside any chroot: the test) reads the zombie's schedstat, which is
then final: on-CPU and run-queue time of every moment of its life, none still to be added.
The profiler follows the child from its
creation, so both sides cover the same interval (the first line of Python or the exec would
not: the interpreter's start-up would be on one side only).
"""
import os
import sys
import tempfile
import time

SECONDS = float(sys.argv[1])
r, w = os.pipe()
start = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
pid = os.fork()
if pid == 0:
    os.close(r)
    path = os.path.join(tempfile.gettempdir(), f"pyebpf-fsync-loop-{os.getpid()}.dat")
    end_at = time.monotonic() + SECONDS
    with open(path, "wb") as f:
        while time.monotonic() < end_at:
            f.write(b"x" * 65536)
            f.flush()
            os.fsync(f.fileno())
            # Bounded: a killed run leaves this file behind (see offcpu.py).
            if f.tell() >= 16 << 20:
                f.seek(0)
    os.unlink(path)
    os.write(w, str(time.clock_gettime_ns(time.CLOCK_MONOTONIC)).encode())
    os._exit(0)
os.close(w)
os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
end = int(os.read(r, 64))
print("zombie", pid, end - start, flush=True)
sys.stdin.readline()
os.waitpid(pid, 0)
