"""A process that corrupts its own interpreter's memory with ctypes while it is profiled.

Three threads, each spinning in a counted loop (no calls, so the interpreter itself does not
look at what was corrupted) while its state is broken, restoring it between rounds:
- "cycle": its caller's frame points back to itself as its previous frame (an endless chain);
- "code": its caller's frame points to a fake code object: random bytes whose type pointer is
  the real code type, so it passes a type check and every field after that is garbage;
- "tstate": its thread state's current-frame pointer is a wild address, or random bytes.
The layouts are those of profiler/src/python/offsets_generated.rs (free-threaded builds' object
headers are 16 bytes longer: `ob_tid` and split reference counts). Corrupting a live
interpreter can still crash it: the profiler under test must not care.
Usage: hostile.py SECONDS. Prints "ready" once the threads run.
"""
import ctypes
import os
import sys
import sysconfig
import threading
import time

V = sys.version_info[:2]
# Extra bytes of a free-threaded build's object header, before every object field.
HEAD = 16 if sysconfig.get_config_var("Py_GIL_DISABLED") else 0
# _PyInterpreterFrame.previous / f_code (PyFrameObject.f_back / f_code before 3.11).
PREVIOUS = {(3, 11): 48}.get(V, 8 if V >= (3, 12) else 24)
CODE = {(3, 11): 32}.get(V, 0 if V >= (3, 12) else 32)
ROUND = range(200_000)


def u64(addr):
    return ctypes.c_uint64.from_address(addr)


def iframe(frame):
    """Address of the frame the interpreter walks for a frame object."""
    if V >= (3, 11):
        return u64(id(frame) + 24 + HEAD).value  # PyFrameObject.f_frame
    return id(frame)


def current_frame_slot():
    """The thread state's pointer to the innermost frame."""
    get = ctypes.pythonapi.PyThreadState_Get
    get.restype = ctypes.c_void_p
    tstate = get()
    if V >= (3, 13):
        return u64(tstate + 72)
    if V >= (3, 11):
        cframe = u64(tstate + 56).value
        return u64(cframe + (8 if V == (3, 11) else 0))
    return u64(tstate + 24)


def cycle_spinner(deadline):
    caller = iframe(sys._getframe(1))
    slot = u64(caller + PREVIOUS)
    original = slot.value
    rounds = 0
    while time.monotonic() < deadline:
        slot.value = caller  # caller -> caller -> caller ...
        for _ in ROUND:
            pass
        slot.value = original
        rounds += 1
    return rounds


def cycle_caller(deadline):
    return cycle_spinner(deadline)  # CALL cycle_spinner


def code_spinner(deadline):
    fake = ctypes.create_string_buffer(os.urandom(1024))
    u64(ctypes.addressof(fake) + 8 + HEAD).value = id(type(cycle_caller.__code__))  # ob_type
    slot = u64(iframe(sys._getframe(1)) + CODE)
    original = slot.value
    rounds = 0
    while time.monotonic() < deadline:
        slot.value = ctypes.addressof(fake)
        for _ in ROUND:
            pass
        slot.value = original
        ctypes.memmove(ctypes.addressof(fake) + 16, os.urandom(1000), 1000)
        rounds += 1
    return rounds


def code_caller(deadline):
    return code_spinner(deadline)  # CALL code_spinner


def tstate_spinner(deadline):
    slot = current_frame_slot()
    original = slot.value
    junk = ctypes.create_string_buffer(os.urandom(4096))
    rounds = 0
    while time.monotonic() < deadline:
        slot.value = 0xDEAD0000 if rounds % 2 else ctypes.addressof(junk) + 64
        for _ in ROUND:
            pass
        slot.value = original
        rounds += 1
    return rounds


if __name__ == "__main__":
    deadline = time.monotonic() + float(sys.argv[1])
    threads = [
        threading.Thread(target=cycle_caller, args=(deadline,), name="cycle"),
        threading.Thread(target=code_caller, args=(deadline,), name="code"),
        threading.Thread(target=tstate_spinner, args=(deadline,), name="tstate"),
    ]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()
