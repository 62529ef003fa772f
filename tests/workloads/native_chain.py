"""Threads blocked in native code called through ctypes, for `dump --native`.

- "c_sleeper": call_chain() -> chain_f -> chain_g -> chain_h, which sleeps in nanosleep
  for ever (C frames under a Python frame).
- "cb_sleeper": call_with_callback() -> chain_cb_f -> chain_cb_g -> chain_cb_h, which calls
  back into Python: in_callback() sleeps in time.sleep (Python frames on both sides of C).
- "spinner": spins in pure Python (on a CPU, or waiting for one: no stable registers).
The library is built -O2 -fomit-frame-pointer (CFI only).
Usage: native_chain.py LIBRARY. Prints "ready" once every thread is where it stays.
"""
import ctypes
import sys
import threading
import time

lib = ctypes.CDLL(sys.argv[1])
CALLBACK = ctypes.CFUNCTYPE(None)
started = threading.Barrier(4)


def call_chain():
    lib.chain_f(3600)


def in_callback():
    time.sleep(3600)


def call_with_callback():
    lib.chain_cb_f(CALLBACK(in_callback))


def c_sleeper():
    started.wait()
    call_chain()


def cb_sleeper():
    started.wait()
    call_with_callback()


def spin_forever():
    started.wait()
    n = 0
    while True:
        n += 1


for name, target in [("c_sleeper", c_sleeper), ("cb_sleeper", cb_sleeper), ("spinner", spin_forever)]:
    threading.Thread(target=target, name=name, daemon=True).start()
started.wait()
time.sleep(0.5)
print("ready", flush=True)
time.sleep(3600)
