"""A write+fsync loop in the main thread for SECONDS (argv[1]): disk time, CPU time and,
beside CPU burners, run-queue time. Prints its tid first; when the loop ends, "done" and the
CLOCK_BOOTTIME ns of that moment, then sleeps a second (while it sleeps, its schedstat is
current: a waiting thread's run-queue time is only added when it next runs)."""
import os
import sys
import tempfile
import threading
import time

END = time.time() + float(sys.argv[1])
path = os.path.join(tempfile.gettempdir(), f"pyebpf-fsync-loop-{os.getpid()}.dat")
print(threading.get_native_id(), flush=True)
try:
    with open(path, "wb") as f:
        while time.time() < END:
            f.write(b"x" * 65536)
            f.flush()
            os.fsync(f.fileno())
finally:
    os.unlink(path)
print("done", time.clock_gettime_ns(time.CLOCK_BOOTTIME), flush=True)
time.sleep(1.0)
