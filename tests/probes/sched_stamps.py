"""Where the scheduler's stamps fall against its tracepoints (hand-run evidence for DESIGN,
"Shares under contention"; needs root, bpftrace and debugfs).

    python3 tests/probes/sched_stamps.py COMM -- COMMAND...

COMMAND is the fsync loop workload (tests/workloads/fsync_loop.py, or through chroot): it prints
"zombie PID WALL_NS" and waits for a line. COMM is the loop's task name. Beside 4 shell spinners,
sched_stamps.bt records each switch, waking and wakeup of the loop with the run queue's clock
(rq->clock) and the task's run_delay stamp (sched_info.last_queued); the mono - rq clock offset
comes from /sys/kernel/debug/sched/debug, whose ktime and cpu_clk are read together with
interrupts off. Prints, per kind of transition, how long before its tracepoint the scheduler
stamped it, and run_delay against the event-timed waits.
"""
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    comm, cmd = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    spinners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(4)]
    bt = subprocess.Popen(["bpftrace", os.path.join(HERE, "sched_stamps.bt"), comm[:15]],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env={**os.environ, "BPFTRACE_PERF_RB_PAGES": "4096"})
    assert "Attaching" in bt.stdout.readline()
    offsets = []
    loop = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    while True:
        offsets.append(clock_offset())
        line = loop.stdout.readline()  # blocks until the loop ends; one offset before, one after
        if line.startswith("zombie"):
            break
    _, pid, wall = line.split()
    pid, wall = int(pid), int(wall)
    on_cpu, run_delay, _ = map(int, open(f"/proc/{pid}/schedstat").read().split())
    offsets.append(clock_offset())
    loop.stdin.write("\n")
    loop.stdin.close()
    loop.wait()
    bt.terminate()
    out = bt.communicate()[0]
    for s in spinners:
        s.kill()
        s.wait()
    analyze(out, pid, wall, on_cpu, run_delay, offsets)


def clock_offset():
    """(mono ns, mono - rq clock ns) at one instant."""
    f = {l.split(":")[0].strip(): l.split(":")[1].strip() for l in open("/sys/kernel/debug/sched/debug").readlines()[1:4]}
    ktime, cpu_clk = (int(float(f[k]) * 1e6) for k in ("ktime", "cpu_clk"))
    return ktime, ktime - cpu_clk


def analyze(out, pid, wall, on_cpu, run_delay, offsets):
    (t0, o0), (t1, o1) = offsets[0], offsets[-1]
    off = lambda t: o0 + (o1 - o0) * (t - t0) / max(1, t1 - t0)
    ev = sorted((l.split() for l in out.splitlines()), key=lambda f: int(f[2]) if len(f) > 2 and f[2].isdigit() else 0)
    ev = [f for f in ev if len(f) > 3 and f[1] == str(pid)]
    before = {"wakeup (waker on the task's CPU)": [], "wakeup (remote)": [], "switch-out, sleeping": [],
              "switch-out, preempted": [], "switch-in": []}
    span, waits, incr = [], [], []
    out_state = waking = wakeup = out_at = None
    for f in ev:
        kind, t = f[0], int(f[2])
        if kind == "O":
            out_state, out_at, waking, wakeup = int(f[4]), t, None, None
            before["switch-out, " + ("preempted" if out_state in (0, 256) else "sleeping")].append(t - off(t) - int(f[5]))
        elif kind == "K" and out_state not in (None, 0, 256) and wakeup is None:
            waking = t
        elif kind == "W" and out_state not in (None, 0, 256) and wakeup is None:
            wakeup = t
            before["wakeup (" + ("waker on the task's CPU" if f[3] == f[4] else "remote") + ")"].append(t - off(t) - int(f[5]))
            if waking is not None:
                span.append(t - waking)
        elif kind == "I" and out_at is not None:
            before["switch-in"].append(t - off(t) - int(f[5]))
            start = out_at if out_state in (0, 256) else wakeup
            if start is not None and int(f[4]):
                waits.append(t - start)
                incr.append(int(f[5]) - int(f[4]))
            out_at = None
    print(f"loop {pid}: wall {wall / 1e9:.3f} s, cpu {on_cpu / 1e6:.1f} ms, run_delay {run_delay / 1e6:.1f} ms; "
          f"mono - rq clock {o0} -> {o1} ns over {(t1 - t0) / 1e9:.1f} s")
    for name, xs in before.items():
        print(f"  stamp before the tracepoint, {name}: {summary(xs)}")
    print(f"  sched_waking to sched_wakeup: {summary(span)}")
    print(f"  run_delay per wait minus the event-timed wait: {summary([a - b for a, b in zip(incr, waits)])}")


def summary(xs):
    if not xs:
        return "none"
    xs = sorted(xs)
    n = len(xs)
    return (f"n={n} mean {statistics.mean(xs) / 1e3:.2f} us, p10 {xs[n // 10] / 1e3:.2f}, "
            f"median {xs[n // 2] / 1e3:.2f}, p90 {xs[9 * n // 10] / 1e3:.2f}")


if __name__ == "__main__":
    main()
