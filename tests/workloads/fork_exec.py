"""A process that forks and execs while it is being profiled.

The parent burns in parent_burn, then forks twice: one child keeps running Python in the
copied interpreter (forked_child_burn, no exec), the other execs a fresh interpreter on
chain.py. The parent goes on burning. Prints one JSON line with the three pids first.
Usage: fork_exec.py SECONDS CHAIN_PY
"""
import json
import os
import sys
import time


def parent_burn(seconds):
    end = time.time() + seconds
    x = 0
    while time.time() < end:
        x += 1
    return x


def forked_child_burn(seconds):
    end = time.time() + seconds
    x = 0
    while time.time() < end:
        x += 1
    return x


if __name__ == "__main__":
    seconds, chain = float(sys.argv[1]), sys.argv[2]
    parent_burn(seconds / 3)
    plain = os.fork()
    if plain == 0:
        forked_child_burn(seconds / 2)
        os._exit(0)
    execd = os.fork()
    if execd == 0:
        os.execv(sys.executable, [sys.executable, chain, str(seconds / 2), "0"])
    print(json.dumps({"parent": os.getpid(), "forked": plain, "execd": execd}), flush=True)
    parent_burn(seconds * 2 / 3)
    os.waitpid(plain, 0)
    os.waitpid(execd, 0)
