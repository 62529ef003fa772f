//! The scheduler's own record of a thread's runs, from ftrace, for tests whose truth is
//! schedstat.
//!
//! schedstat's on-CPU time (`sum_exec_runtime`) is what the scheduler charged, and it charges a
//! task woken with a preemption from before its switch-in: the wakeup asks for a reschedule and
//! marks the run queue's clock "skip the next update" (`wakeup_preempt`, `rq_clock_skip_update`),
//! so the `__schedule` that switches the task in reuses the clock of its wakeup, and the
//! microseconds from the wakeup to the switch-in (the preempted task running on to its
//! reschedule point, the IPI of a remote wakeup) count as the woken task's on-CPU time and not
//! as its `run_delay`. pyebpf measures runs from switch-in to switch-out, as they happened
//! (DESIGN, Shares under contention). To compare like with like, a test records each run of the
//! thread (`sched_switch`) and each charge the scheduler makes for it (`sched_stat_runtime`, at
//! every `update_curr`), and moves what a run was charged beyond its own length from schedstat's
//! on-CPU time to its run-queue time, and what it was charged short of its length (the end of
//! the run, charged to the next task) back to on-CPU time.
//!
//! The same holds for every transition, not only a skipped clock: the scheduler stamps each one
//! with the run queue's clock read at the start of the locked section that makes it, and the
//! tracepoint fires at its end. A wakeup's `run_delay` starts at `try_to_wake_up`'s clock
//! update, just before the enqueue, and `sched_wakeup` fires after the enqueue and the
//! preemption check: 2.2 us later here for a wakeup on the task's own CPU, 7.5 us for a remote
//! one (DESIGN, Shares under contention). No event marks that update; it lies after
//! `sched_waking` (which fires before the CPU is chosen and its run queue locked), so the trace
//! bounds, per wakeup, how much of schedstat's run-queue time pyebpf rightly counts as blocked:
//! [`Runs::wakeup_span_ns`].
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

const TRACEFS: &str = "/sys/kernel/tracing";
/// Per CPU: the loop's runs and charges and those of its parent, a few MiB in 4 s.
const BUFFER_KIB: &str = "16384";
const EVENTS: [&str; 5] = ["sched_switch", "sched_stat_runtime", "sched_wakeup", "sched_wakeup_new", "sched_waking"];

/// A tracefs instance of its own (the global buffer and other instances untouched) recording
/// the runs and charges of tasks named `comm`; removed on drop.
pub struct SchedTrace {
    instance: PathBuf,
}

impl SchedTrace {
    /// Starts recording switches from and to tasks named `comm` (the kernel's 15-byte task name)
    /// and the scheduler's runtime charges to them. Mounts tracefs if it is not mounted.
    pub fn start(comm: &str) -> Result<Self, String> {
        let root = Path::new(TRACEFS);
        if !root.join("instances").is_dir() {
            let status = Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]).status();
            if !status.is_ok_and(|s| s.success()) || !root.join("instances").is_dir() {
                return Err(format!("tracefs is not mounted at {TRACEFS} and could not be"));
            }
        }
        let instance = root.join("instances").join(format!("pyebpf-test-{}", std::process::id()));
        if instance.exists() {
            let _ = fs::remove_dir(&instance);
        }
        fs::create_dir(&instance).map_err(|e| format!("{}: {e}", instance.display()))?;
        let trace = SchedTrace { instance };
        trace.write("tracing_on", "0")?;
        trace.write("buffer_size_kb", BUFFER_KIB)?;
        // The clock `bpf_ktime_get_ns` reads: events of different CPUs compare (the default,
        // `local`, is each CPU's own), and each time is comparable with pyebpf's own.
        trace.write("trace_clock", "mono")?;
        trace.write(
            "events/sched/sched_switch/filter",
            &format!("prev_comm == \"{comm}\" || next_comm == \"{comm}\""),
        )?;
        for event in &EVENTS[1..] {
            trace.write(&format!("events/sched/{event}/filter"), &format!("comm == \"{comm}\""))?;
        }
        for event in EVENTS {
            trace.write(&format!("events/sched/{event}/enable"), "1")?;
        }
        trace.write("tracing_on", "1")?;
        Ok(trace)
    }

    /// Stops recording and returns the trace text; an error if any event was lost (a run or a
    /// charge missing would make every sum wrong).
    pub fn finish(&self) -> Result<String, String> {
        self.write("tracing_on", "0")?;
        for cpu in fs::read_dir(self.instance.join("per_cpu")).map_err(|e| e.to_string())?.flatten() {
            let stats = fs::read_to_string(cpu.path().join("stats")).map_err(|e| e.to_string())?;
            let lost = stats
                .lines()
                .filter(|l| l.starts_with("overrun:") || l.starts_with("dropped events:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                .sum::<u64>();
            if lost != 0 {
                return Err(format!("ftrace lost {lost} events on {}", cpu.file_name().to_string_lossy()));
            }
        }
        let text = fs::read_to_string(self.instance.join("trace")).map_err(|e| e.to_string())?;
        // `PYEBPF_TEST_TRACE_DIR=DIR`: keep the trace for an event-by-event look.
        if let Some(dir) = std::env::var_os("PYEBPF_TEST_TRACE_DIR") {
            let name = self.instance.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let _ = fs::write(Path::new(&dir).join(format!("{name}-{}.txt", now_ns())), &text);
        }
        Ok(text)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        fs::write(self.instance.join(file), value).map_err(|e| format!("{}/{file}: {e}", self.instance.display()))
    }
}

impl Drop for SchedTrace {
    fn drop(&mut self) {
        let _ = self.write("tracing_on", "0");
        for event in EVENTS {
            let _ = self.write(&format!("events/sched/{event}/enable"), "0");
        }
        let _ = fs::remove_dir(&self.instance);
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// One thread's runs as ftrace saw them and what the scheduler charged for them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Runs {
    /// Completed runs (switch-in to switch-out).
    pub runs: u64,
    /// Their total length.
    pub on_cpu_ns: u64,
    /// Everything the scheduler charged the thread (its final `sum_exec_runtime` when the
    /// trace covers its whole life).
    pub charged_ns: u64,
    /// What runs were charged beyond their own length: time before the switch-in (the wait
    /// after a preempting wakeup), run-queue time by the switches.
    pub charged_before_switch_in_ns: u64,
    /// What runs were charged short of their own length (microseconds a run): the scheduler
    /// stops charging a task at the clock update at the start of the `__schedule` that switches
    /// it out and charges the rest, the pick of the next task, to that next task; on-CPU time
    /// by the switches.
    pub charged_short_ns: u64,
    /// Waits for a CPU by the switches and wakeups: from a preemption or a wakeup (or the
    /// thread's creation) to the switch-in, as pyebpf measures them.
    pub runq_ns: u64,
    /// Sleeps by the switches and wakeups: from a switch-out in a sleep to the wakeup.
    pub blocked_ns: u64,
    /// Wakeups that ended a sleep (`sched_wakeup` after a switch-out in a sleep).
    pub wakeups: u64,
    /// For those wakeups, the time from `sched_waking` (or the switch-out, if the wakeup began
    /// while the thread was still switching out) to `sched_wakeup`: the scheduler's own stamp
    /// of the wakeup, where `run_delay` starts, lies inside it, so this bounds how much earlier
    /// than `sched_wakeup` schedstat's run-queue time may start.
    pub wakeup_span_ns: u64,
}

/// Thread `tid`'s runs and charges in ftrace's text output.
pub fn runs(trace: &str, tid: u32) -> Runs {
    let mut out = Runs::default();
    // Start of the run in progress and what it has been charged so far.
    let mut run: Option<(u64, u64)> = None;
    // Start of the wait in progress, whether runnable all along, and its wakeup.
    let mut off: Option<(u64, bool, Option<u64>)> = None;
    // The last `sched_waking` not yet followed by its `sched_wakeup`.
    let mut waking: Option<u64> = None;
    for line in trace.lines().filter(|l| !l.starts_with('#')) {
        let Some((event, at, fields)) = parse_line(line) else { continue };
        let field = |name: &str| {
            fields.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        let is_tid = |name: &str| field(name) == Some(tid as u64);
        match event {
            "sched_wakeup_new" if is_tid("pid") => off = Some((at, true, None)),
            "sched_waking" if is_tid("pid") => waking = Some(at),
            "sched_wakeup" if is_tid("pid") => {
                let began = waking.take();
                if let Some((start, false, wake @ None)) = off.as_mut() {
                    *wake = Some(at);
                    out.wakeups += 1;
                    out.wakeup_span_ns += at.saturating_sub(began.map_or(at, |b| b.max(*start)));
                }
            }
            "sched_stat_runtime" if field("pid") == Some(tid as u64) => {
                let charge = field("runtime").unwrap_or(0);
                out.charged_ns += charge;
                if let Some((_, charged)) = run.as_mut() {
                    *charged += charge;
                }
            }
            "sched_switch" => {
                // The charge of a run's end comes before its switch-out (the dequeue or the
                // put of the outgoing task, in the same `__schedule`).
                if is_tid("prev_pid")
                    && let Some((start, charged)) = run.take()
                {
                    let length = at.saturating_sub(start);
                    out.runs += 1;
                    out.on_cpu_ns += length;
                    out.charged_before_switch_in_ns += charged.saturating_sub(length);
                    out.charged_short_ns += length.saturating_sub(charged);
                }
                if is_tid("prev_pid") {
                    let state = fields.split_whitespace().find_map(|kv| kv.strip_prefix("prev_state="));
                    off = Some((at, state.is_some_and(|s| s.starts_with('R')), None));
                }
                if is_tid("next_pid") {
                    run = Some((at, 0));
                    if let Some((start, runnable, wake)) = off.take() {
                        let woken = if runnable { start } else { wake.unwrap_or(at) };
                        out.blocked_ns += woken.saturating_sub(start);
                        out.runq_ns += at.saturating_sub(woken);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// `(event, timestamp in ns, fields)` of one line of ftrace's default text format:
/// `TASK-PID [CPU] FLAGS SECONDS.MICROS: EVENT: FIELDS`.
fn parse_line(line: &str) -> Option<(&str, u64, &str)> {
    let (event, fields) = EVENTS.iter().find_map(|e| {
        let marker = format!(": {e}: ");
        let at = line.find(&marker)?;
        Some(((at, *e), &line[at + marker.len()..]))
    })?;
    let (at, name) = event;
    let stamp = line[..at].rsplit(' ').next()?;
    let (secs, micros) = stamp.split_once('.')?;
    let ns = secs.parse::<u64>().ok()? * 1_000_000_000 + micros.parse::<u64>().ok()? * 1_000;
    Some((name, ns, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_charged_from_before_its_switch_in_counts_the_excess() {
        let trace = "\
# tracer: nop
          python-7 [001] d..2. 10.000000: sched_switch: prev_comm=python prev_pid=7 prev_prio=120 prev_state=D ==> next_comm=spin next_pid=9 next_prio=120
           spin-9 [001] d..2. 10.001000: sched_stat_runtime: comm=spin pid=9 runtime=1000000 [ns]
           spin-9 [001] d..2. 10.001000: sched_switch: prev_comm=spin prev_pid=9 prev_prio=120 prev_state=R+ ==> next_comm=python next_pid=7 next_prio=120
          python-7 [001] d..2. 10.001050: sched_stat_runtime: comm=python pid=7 runtime=53000 [ns]
          python-7 [001] d..2. 10.001050: sched_switch: prev_comm=python prev_pid=7 prev_prio=120 prev_state=D ==> next_comm=spin next_pid=9 next_prio=120
";
        let r = runs(trace, 7);
        assert_eq!((r.runs, r.on_cpu_ns, r.charged_ns, r.charged_before_switch_in_ns), (1, 50_000, 53_000, 3_000));
        assert_eq!((r.charged_short_ns, r.blocked_ns, r.runq_ns), (0, 1_000_000, 0));
        let short = trace.replace("runtime=53000", "runtime=49000");
        let r = runs(&short, 7);
        assert_eq!((r.charged_before_switch_in_ns, r.charged_short_ns), (0, 1_000));
    }

    #[test]
    fn a_wakeups_span_runs_from_sched_waking_or_the_switch_out_to_sched_wakeup() {
        let trace = "\
          python-7 [001] d..2. 10.000000: sched_switch: prev_comm=python prev_pid=7 prev_prio=120 prev_state=D ==> next_comm=spin next_pid=9 next_prio=120
          <idle>-0 [000] dNh4. 10.000100: sched_waking: comm=python pid=7 prio=120 target_cpu=001
          <idle>-0 [000] dNh5. 10.000103: sched_wakeup: comm=python pid=7 prio=120 target_cpu=001
           spin-9 [001] d..2. 10.000110: sched_switch: prev_comm=spin prev_pid=9 prev_prio=120 prev_state=R+ ==> next_comm=python next_pid=7 next_prio=120
           spin-8 [000] d..2. 10.000200: sched_waking: comm=python pid=7 prio=120 target_cpu=001
          python-7 [001] d..2. 10.000201: sched_switch: prev_comm=python prev_pid=7 prev_prio=120 prev_state=S ==> next_comm=spin next_pid=9 next_prio=120
          <idle>-0 [001] dNh5. 10.000205: sched_wakeup: comm=python pid=7 prio=120 target_cpu=001
           spin-9 [001] d..2. 10.000300: sched_switch: prev_comm=spin prev_pid=9 prev_prio=120 prev_state=R+ ==> next_comm=python next_pid=7 next_prio=120
";
        let r = runs(trace, 7);
        // 3 us from the first waking; the second began before the switch-out: 4 us from it.
        assert_eq!((r.wakeups, r.wakeup_span_ns), (2, 7_000));
        assert_eq!((r.blocked_ns, r.runq_ns), (103_000 + 4_000, 7_000 + 95_000));
    }
}
