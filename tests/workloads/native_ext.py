"""Python -> C extension -> Python -> C, burning CPU in the innermost C function.

outer() calls nativeext.call_through(callback) (C: py_call_through -> ext_call_through ->
ext_middle -> PyObject_CallObject), which calls callback() back in Python, which calls
nativeext.spin() (C: py_spin -> ext_spin -> ext_spin_inner, a leaf without a frame).
The extension is built -O2 -fomit-frame-pointer with the limited API, so one build loads in
every CPython 3.8+.
Usage: native_ext.py SECONDS EXTENSION_DIR. Prints "ready" once it runs.
"""
import sys
import time

sys.path.insert(0, sys.argv[2])
import nativeext  # noqa: E402


def callback():
    nativeext.spin(3_000_000)


def outer():
    nativeext.call_through(callback)


deadline = time.time() + float(sys.argv[1])
print("ready", flush=True)
while time.time() < deadline:
    outer()
