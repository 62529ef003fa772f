"""Legal but extreme Python, each in its own thread, all burning CPU:
- "huge": a loop over a 100,000-line body (a line table of 200 KB to 900 KB);
- "longname": a function whose name is 10,000 characters long;
- "nonutf8": code from a file whose path is not valid UTF-8 (DIR/caf\\xe9/mod.py);
- "deep": 5,000-deep recursion.
Usage: extremes.py SECONDS DIR. Writes the generated sources under DIR (so frames have real
files; huge.py's body is lines 4 to 100,003) and prints "ready" once every thread runs.
"""
import os
import sys
import threading
import time

BODY_LINES = 100_000


def load(path, source, name):
    with open(path, "w") as f:
        f.write(source)
    namespace = {"time": time}
    exec(compile(source, path, "exec"), namespace)
    return namespace[name]


def deep(n, deadline):
    if n == 0:
        x = 0
        while time.time() < deadline:
            x += 1
        return x
    return deep(n - 1, deadline)


if __name__ == "__main__":
    seconds, root = float(sys.argv[1]), sys.argv[2].encode()
    huge_src = (
        "def huge_body(deadline):\n    x = 0\n    while time.time() < deadline:\n"
        + "".join("        x = x + %d\n" % (i % 7) for i in range(BODY_LINES))
        + "    return x\n"
    )
    huge = load(os.path.join(root, b"huge.py").decode(), huge_src, "huge_body")
    long_name = "f" * 10_000
    long_fn = load(
        os.path.join(root, b"long.py").decode(),
        "def %s(deadline):\n    x = 0\n    while time.time() < deadline:\n        x += 1\n" % long_name,
        long_name,
    )
    bad_dir = os.path.join(root, b"caf\xe9")  # Latin-1 e-acute: not UTF-8
    os.makedirs(bad_dir, exist_ok=True)
    bad_path = os.fsdecode(os.path.join(bad_dir, b"mod.py"))  # surrogate-escaped str
    nonutf8 = load(
        bad_path,
        "def in_non_utf8_file(deadline):\n    x = 0\n    while time.time() < deadline:\n        x += 1\n",
        "in_non_utf8_file",
    )
    sys.setrecursionlimit(20_000)
    threading.stack_size(256 << 20)  # 3.8-3.10 recurse on the C stack too
    deadline = time.time() + seconds
    threads = [
        threading.Thread(target=huge, args=(deadline,), name="huge"),
        threading.Thread(target=long_fn, args=(deadline,), name="longname"),
        threading.Thread(target=nonutf8, args=(deadline,), name="nonutf8"),
        threading.Thread(target=deep, args=(5_000, deadline), name="deep"),
    ]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()
