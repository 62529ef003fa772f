"""CPU-bound pure-Python workload for `cargo xtask bench python`.

usage: python_workload.py DEPTH ITERATIONS [--wait]

Recurses until the Python stack is DEPTH frames deep (counting <module>), then runs ITERATIONS
iterations of a tight arithmetic loop in that deepest frame, so every on-CPU sample sees the
whole DEPTH-frame stack. With --wait it prints "ready" once at depth and waits for a line on
stdin before starting the clock: the benchmark attaches a profiler in between, so attaching is
not timed. The last stdout line is JSON: iterations, elapsed (wall) and CPU seconds, and the
rate of each chunk of CHUNK iterations (iterations per second), so that the benchmark can tell
chunks the hypervisor took time from from undisturbed ones.
"""
import json
import sys
import time

# Arithmetic steps per iteration: large enough that loop bookkeeping is negligible, small
# enough that a few seconds hold many iterations.
STEPS = 1000
# Iterations timed together: about 0.1 s, long enough for timer reads not to matter.
CHUNK = 1000


def hot(iterations, wait):
    if wait:
        print("ready", flush=True)
        sys.stdin.readline()
    start_wall = time.perf_counter()
    start_cpu = time.process_time()
    x = 0
    chunk_rates = []
    done = 0
    while done < iterations:
        n = min(CHUNK, iterations - done)
        chunk_start = time.perf_counter()
        for _ in range(n):
            for i in range(STEPS):
                x = (x * 31 + i) & 0xFFFFFFFF
        chunk_rates.append(n / (time.perf_counter() - chunk_start))
        done += n
    return {
        "iterations": iterations,
        "elapsed_s": time.perf_counter() - start_wall,
        "cpu_s": time.process_time() - start_cpu,
        "chunk_rates": chunk_rates,
        "checksum": x,
    }


def descend(frames_left, iterations, wait):
    # descend(k) puts k descend frames on the stack, the last of which calls hot().
    if frames_left == 1:
        return hot(iterations, wait)
    return descend(frames_left - 1, iterations, wait)


depth, iterations = int(sys.argv[1]), int(sys.argv[2])
if depth < 3:
    sys.exit("DEPTH must be at least 3 (<module>, descend, hot)")
# <module> + (depth - 2) descend frames + hot = depth frames.
print(json.dumps(descend(depth - 2, iterations, "--wait" in sys.argv[3:])), flush=True)
