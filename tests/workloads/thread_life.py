"""Threads and a process that start, rename themselves and exit while profiled.

A thread (Python name "starter") burns CPU, renames itself: its Python name with
`Thread.name = "renamed-worker"` (3.14+ also gives it to the OS thread), then its OS name with
`pthread_setname_np` ("renamed-os"), sleeps, burns again and exits; before it exits it prints
its own truth as a JSON line: its tid, its CPU time (`time.thread_time_ns()`: the kernel's
own count, exact when read) and the wall time from its first line. Then a child process burns CPU and exits, printing the same
(pid, CPU time). The main thread waits a little after both, so that both ended well inside
the profile, and exits."""
import ctypes
import json
import os
import threading
import time

libc = ctypes.CDLL("libc.so.6")
libc.pthread_self.restype = ctypes.c_ulong
libc.pthread_setname_np.argtypes = [ctypes.c_ulong, ctypes.c_char_p]


def burn_in_thread(seconds):
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1
    return x


def renaming_worker():
    start = time.monotonic_ns()
    tid = threading.get_native_id()
    burn_in_thread(0.3)
    threading.current_thread().name = "renamed-worker"
    libc.pthread_setname_np(libc.pthread_self(), b"renamed-os")
    # Long enough for the rename to be read (a thread's name is forgotten by `threading`
    # when it exits).
    time.sleep(0.8)
    burn_in_thread(0.3)
    truth = {"thread": tid, "cpu_ns": time.thread_time_ns(), "wall_ns": time.monotonic_ns() - start}
    print(json.dumps(truth), flush=True)


def burn_in_child(seconds):
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1
    return x


def child():
    burn_in_child(0.6)
    print(json.dumps({"child": os.getpid(), "cpu_ns": time.process_time_ns()}), flush=True)
    os._exit(0)


time.sleep(0.3)
t = threading.Thread(target=renaming_worker, name="starter")
t.start()
t.join()
pid = os.fork()
if pid == 0:
    child()
os.waitpid(pid, 0)
time.sleep(0.5)
