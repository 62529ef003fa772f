//! asyncio task sampling: snapshots of every task of every asyncio process (see
//! `python::asyncio`), taken from the session's tick at `--task-rate` within a CPU budget
//! (`--task-budget`), each weighted by wall time, and summed per (task, await chain, state,
//! target) into `processes[].tasks`.
//!
//! Each gap between two snapshots of a process is split in halves: the first goes to the
//! tasks as the earlier snapshot saw them, the second to the later one's (each snapshot stands
//! for the time nearest to it). Weighing a whole gap by its end gave a late snapshot (the
//! profiler's tick delayed ~0.9 s on a loaded host) the whole gap in states it only reached at
//! the end: a fetcher's last round trip counted as `main` being ready after it. The earlier
//! snapshot's half is added when the later one is taken, so it lands in the later one's window
//! when a window boundary falls between them.
//!
//! The budget is adaptive: after each round of snapshots the next one waits at least
//! `cost / budget` (a round that took 2 ms under a 1% budget is followed by 200 ms of
//! nothing), so a process with thousands of tasks is read less often, never more than the
//! budget allows; weights stay wall time, since each snapshot stands for the time since the
//! last. A round's cost is the CPU time of the thread that took it, not its wall time: on a
//! loaded machine a round preempted for 100 ms would otherwise count as 100 ms of reading and
//! stop sampling for 10 s under a 1% budget.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    host::clock::thread_cpu_ns,
    model::{ProcessProfile, PythonFrame, TaskProfile, tasks::is_application},
    offcpu::fdinfo::{DEFAULT_TABLE_MAX_AGE, FdCache},
    python::{
        PyFrame, PythonRegistry,
        asyncio::{AsyncioState, TaskSample, aggregate_name},
    },
};

/// Task sampling settings.
#[derive(Clone, Copy, Debug)]
pub struct TaskConfig {
    /// Snapshots per second per process at most.
    pub rate_hz: f64,
    /// Share of one CPU the snapshots may use (0.01 = 1%).
    pub budget: f64,
}

/// A snapshot stands for the time since the process's previous one, up to this much (a
/// stall of ours longer than that is not the tasks' time).
const MAX_WEIGHT: Duration = Duration::from_secs(10);
/// Weight of the newest round's cost in the running average the budget is applied to, so that
/// one slow round (new code objects to read) does not stop sampling for seconds.
const COST_SMOOTHING: f64 = 0.2;
/// Rounds (after a process's cold first one) whose cheapest cost starts the running average.
/// The first of them reads the code objects of the tasks that started meanwhile: taken alone
/// it set the average outright (there is no average yet to cap a spike against), and one
/// 4.5 ms round under a 1% budget spaced the next rounds 450, 375, 313 ... ms apart.
const WARMUP_ROUNDS: u32 = 3;

type Key = (String, Vec<PythonFrame>, &'static str, Option<String>, Option<usize>);

#[derive(Default)]
struct ProcessTasks {
    state: AsyncioState,
    last: Option<Instant>,
    /// The previous snapshot's tasks, owed the first half of the gap to the next one.
    previous: Vec<Key>,
    sums: HashMap<Key, u64>,
}

impl ProcessTasks {
    /// Weighs a snapshot taken at `at`: half the gap since the previous one to each (the
    /// first snapshot stands for `period`).
    fn record(&mut self, keys: Vec<Key>, at: Instant, period: Duration) {
        match self.last {
            Some(last) => {
                let gap = at.duration_since(last).min(MAX_WEIGHT).as_nanos() as u64;
                let earlier = gap / 2;
                add(&mut self.sums, &self.previous, earlier);
                add(&mut self.sums, &keys, gap - earlier);
            }
            None => add(&mut self.sums, &keys, period.min(MAX_WEIGHT).as_nanos() as u64),
        }
        self.last = Some(at);
        self.previous = keys;
    }
}

/// The sampler: per-process state and sums for the current window.
pub struct TaskSampler {
    cfg: TaskConfig,
    processes: HashMap<u32, ProcessTasks>,
    /// What a stream's socket is connected to, as off-CPU targets are named.
    fds: FdCache,
    next_round: Option<Instant>,
    /// Running average of a round's cost, in seconds.
    average_cost: Option<f64>,
    /// Rounds counted in the average so far (up to `WARMUP_ROUNDS`).
    counted_rounds: u32,
    /// CPU time spent in snapshots, and how many, since the start (for the notes).
    pub spent: Duration,
    pub snapshots: u64,
}

impl TaskSampler {
    pub fn new(cfg: TaskConfig) -> Self {
        Self {
            cfg,
            processes: HashMap::new(),
            fds: FdCache::new(DEFAULT_TABLE_MAX_AGE),
            next_round: None,
            average_cost: None,
            counted_rounds: 0,
            spent: Duration::ZERO,
            snapshots: 0,
        }
    }

    /// Takes a round of snapshots if one is due.
    pub fn tick(&mut self, python: &mut PythonRegistry) {
        let now = Instant::now();
        if self.next_round.is_some_and(|t| now < t) {
            return;
        }
        let cpu_started = thread_cpu_ns();
        let mut cold = false;
        for pid in python.known_pids() {
            let Some(process) = python.get_mut(pid) else { continue };
            if !process.asyncio_supported() {
                continue;
            }
            let entry = self.processes.entry(pid).or_default();
            let Some(mut tasks) = process.asyncio_tasks(&mut entry.state) else { continue };
            // A process's first snapshot reads its code objects and types once: not the
            // steady cost the budget is about.
            cold |= entry.last.is_none();
            log::trace!("pid {pid}: {} tasks", tasks.len());
            for t in &mut tasks {
                if let Some(fd) = t.fd
                    && let Some(target) = self.fds.describe(pid, fd)
                {
                    t.target = Some(target.to_string());
                }
            }
            entry.record(keys(tasks), Instant::now(), Duration::from_secs_f64(1.0 / self.cfg.rate_hz));
            self.snapshots += 1;
        }
        let cost = Duration::from_nanos(thread_cpu_ns().saturating_sub(cpu_started));
        self.spent += cost;
        let cost_s = cost.as_secs_f64();
        let average = if cold {
            self.average_cost.unwrap_or(0.0)
        } else {
            let average = next_average(self.average_cost, self.counted_rounds, cost_s);
            self.average_cost = Some(average);
            self.counted_rounds = self.counted_rounds.saturating_add(1);
            average
        };
        log::debug!("asyncio task round: {:.3} ms (average {:.3} ms)", cost.as_secs_f64() * 1e3, average * 1e3);
        let min_gap = Duration::from_secs_f64(1.0 / self.cfg.rate_hz);
        let budget_gap = Duration::from_secs_f64(average / self.cfg.budget.max(1e-4));
        self.next_round = Some(now + min_gap.max(budget_gap));
    }

    /// The window's task stacks of `pid`, heaviest first.
    pub fn window(&self, pid: u32) -> Vec<TaskProfile> {
        let Some(p) = self.processes.get(&pid) else { return Vec::new() };
        let mut out: Vec<TaskProfile> = p
            .sums
            .iter()
            .map(|((task, frames, state, target, handler_index), &weight_ns)| TaskProfile {
                task: task.clone(),
                frames: frames.clone(),
                state: state.to_string(),
                target: target.clone(),
                weight_ns,
                handler_index: *handler_index,
            })
            .collect();
        out.sort_by(|a, b| b.weight_ns.cmp(&a.weight_ns).then_with(|| a.task.cmp(&b.task)));
        out
    }

    /// Starts a new window.
    pub fn clear_window(&mut self) {
        for p in self.processes.values_mut() {
            p.sums.clear();
        }
    }

    /// Drops processes that have exited.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
        self.fds.forget_process(pid);
    }
}

/// The running average of a round's cost after a round that cost `cost_s`, `counted` rounds
/// having been averaged before: the cheapest of the first `WARMUP_ROUNDS`, then a smoothed
/// average where a spike (new code objects to read) moves it at most 4 times as far.
fn next_average(average: Option<f64>, counted: u32, cost_s: f64) -> f64 {
    match average {
        Some(avg) if counted < WARMUP_ROUNDS => avg.min(cost_s),
        Some(avg) => avg + COST_SMOOTHING * (cost_s.min(4.0 * avg) - avg),
        None => cost_s,
    }
}

/// A snapshot's tasks as the keys their time is summed under.
fn keys(tasks: Vec<TaskSample>) -> Vec<Key> {
    tasks
        .into_iter()
        .map(|t| {
            // The handler: the innermost coroutine of application code (a running task's chain
            // also holds the plain functions its step calls).
            let handler = t.frames.iter().rposition(|f| f.coroutine && is_application(&f.file));
            let frames = t.frames.iter().map(model_frame).collect();
            (aggregate_name(&t.name).to_string(), frames, t.state.as_str(), t.target, handler)
        })
        .collect()
}

fn add(sums: &mut HashMap<Key, u64>, keys: &[Key], weight_ns: u64) {
    if weight_ns == 0 {
        return;
    }
    for key in keys {
        match sums.get_mut(key) {
            Some(sum) => *sum += weight_ns,
            None => {
                sums.insert(key.clone(), weight_ns);
            }
        }
    }
}

fn model_frame(f: &PyFrame) -> PythonFrame {
    PythonFrame { function: f.function.clone(), file: f.file.clone(), line: f.line, first_line: f.first_line }
}

/// Gives each process of a window its task stacks.
pub fn attach(sampler: &mut Option<TaskSampler>, mut processes: Vec<ProcessProfile>) -> Vec<ProcessProfile> {
    if let Some(sampler) = sampler {
        for p in &mut processes {
            p.tasks = sampler.window(p.pid);
        }
        if sampler.snapshots > 0 {
            log::info!(
                "asyncio task snapshots: {} in {:.1} ms of CPU",
                sampler.snapshots,
                sampler.spent.as_secs_f64() * 1e3
            );
        }
    }
    processes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first round that reads new code objects does not set the pace: the cheapest of the
    /// first rounds does, and later spikes move the average a bounded step.
    #[test]
    fn each_gap_is_split_between_the_snapshots_around_it() {
        let key = |state: &'static str| ("fetcher".to_string(), Vec::new(), state, None, None);
        let mut p = ProcessTasks::default();
        let t0 = Instant::now();
        p.record(vec![key("awaiting")], t0, Duration::from_millis(50));
        // Late by 900 ms: the fetcher was awaiting until about half way, then done.
        p.record(vec![key("running")], t0 + Duration::from_millis(900), Duration::from_millis(50));
        assert_eq!(p.sums[&key("awaiting")], 50_000_000 + 450_000_000);
        assert_eq!(p.sums[&key("running")], 450_000_000);
        // A new window: the pending half of the next gap goes to the snapshot before it.
        p.sums.clear();
        p.record(vec![], t0 + Duration::from_millis(1000), Duration::from_millis(50));
        assert_eq!(p.sums.get(&key("running")), Some(&50_000_000));
        assert_eq!(p.sums.len(), 1);
    }

    #[test]
    fn the_budget_starts_from_the_cheapest_first_round() {
        let mut average = None;
        for (counted, cost) in [4.5e-3, 0.67e-3, 0.64e-3].into_iter().enumerate() {
            average = Some(next_average(average, counted as u32, cost));
        }
        assert_eq!(average, Some(0.64e-3));
        let after_spike = next_average(average, WARMUP_ROUNDS, 1.0);
        assert!((after_spike - 0.64e-3 * (1.0 + COST_SMOOTHING * 3.0)).abs() < 1e-12, "{after_spike}");
        // A steady cost is kept: a process with many tasks stays within the budget.
        let mut average = None;
        for counted in 0..10 {
            average = Some(next_average(average, counted, 0.06));
        }
        assert_eq!(average, Some(0.06));
    }
}
