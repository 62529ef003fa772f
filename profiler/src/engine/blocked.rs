//! Stacks of waits still going on when a profile is taken. The kernel takes a wait's stacks
//! when the thread leaves the syscall (`sys_exit`), in the thread's own context; a thread
//! blocked since before tracking began, or through the whole window (a server in `accept()`,
//! a worker on a lock for an hour, a deadlock) never gets there, and all its time was
//! stackless (`short waits (no stack)`: the opposite of the truth).
//!
//! At each snapshot, every wait in progress at least as long as the off-CPU threshold gets
//! the stack its thread is blocked in: Python frames read from its thread state in userspace
//! ([`crate::python::walk`], the kernel unwinder's walk), the kernel stack from the task
//! iterator (which also gives 3.8–3.10 threads their `pthread_t`), syscall and target from
//! the wait's own key. It weighs the part of the wait inside the window. A blocked thread's
//! stacks cannot change until it runs, so each wait is read once (keyed by thread and the
//! time it went off the CPU) and the cache holds only waits still going on.
use std::collections::HashMap;

use profiler_common::{OffCpuInfo, OffCpuKey, OffCpuSum, TASK_COMM_LEN, ThreadTimes, off_state, py_status, unwind};

use super::{aggregate::Aggregator, events::Sample};
use crate::{
    bpf::Bpf,
    host::{procinfo, symbols::Symbols},
    offcpu::classify::Classifier,
    python::{PythonRegistry, ThreadStateIndex},
};

/// Stacks of waits in progress, read once per wait.
#[derive(Default)]
pub struct BlockedStacks {
    /// (tid, off-CPU since) → the stacks it waits in (weights unset).
    taken: HashMap<(u32, u64), Sample>,
}

/// What a snapshot needs to weigh waits in progress.
pub struct Window<'a> {
    /// CLOCK_MONOTONIC ns: the window's start and now.
    pub start_ns: u64,
    pub now_ns: u64,
    pub threshold_ns: u64,
    pub max_depth: usize,
    /// Threads that exited (their last switch-out was no wait).
    pub exits: &'a super::exits::Exits,
}

/// The part of an off-CPU interval inside the window that starts at `start`, split as the
/// kernel splits it: a wakeup before the window makes all of it run-queue time.
fn window_part(t: &ThreadTimes, start: u64, now: u64) -> (u64, u64) {
    let from = t.off_since_ns.max(start);
    if t.off_state != off_state::RUNNABLE && t.wake_ns != 0 && t.wake_ns < from && t.wake_ns >= t.off_since_ns {
        return (0, now.saturating_sub(from));
    }
    profiler_common::split_off_interval(t.off_state, from, t.wake_ns, now)
}

/// The waits in progress that get a stack: blocked in a syscall or asleep (a preemption's
/// stack is the kernel's, taken as it happens), for at least the threshold.
fn long_waits<'a>(
    times: &'a HashMap<u32, ThreadTimes>,
    in_progress: &'a [(OffCpuKey, OffCpuSum)],
    threshold_ns: u64,
) -> impl Iterator<Item = (&'a OffCpuKey, &'a ThreadTimes)> {
    in_progress.iter().filter_map(move |(key, sum)| {
        let t = times.get(&key.tid)?;
        let long = sum.blocked_ns + sum.runq_ns >= threshold_ns.max(1);
        (long && (key.state != off_state::RUNNABLE || key.syscall_nr >= 0)).then_some((key, t))
    })
}

impl BlockedStacks {
    /// Adds the stacks of the long waits in progress to `agg`, weighed by their part in the
    /// window (provisionally: the caller takes them back if the window goes on).
    #[allow(clippy::too_many_arguments, reason = "the session's parts a snapshot hands over")]
    pub fn add(
        &mut self,
        bpf: &mut Bpf,
        window: &Window<'_>,
        agg: &mut Aggregator,
        symbols: &mut Symbols,
        python: &mut PythonRegistry,
        classifier: &mut Classifier,
    ) {
        let times: HashMap<u32, ThreadTimes> = bpf.thread_times().into_iter().collect();
        let list: Vec<(u32, ThreadTimes)> = times.iter().map(|(&tid, &t)| (tid, t)).collect();
        let in_progress = bpf.offcpu_in_progress_of(&list, window.now_ns, |_, tid| !window.exits.thread_gone(tid));
        let waits: Vec<(OffCpuKey, ThreadTimes)> =
            long_waits(&times, &in_progress, window.threshold_ns).map(|(k, t)| (*k, *t)).collect();
        // Only waits still going on are kept.
        self.taken.retain(|(tid, since), _| times.get(tid).is_some_and(|t| t.off_since_ns == *since));
        if waits.iter().any(|(k, t)| !self.taken.contains_key(&(k.tid, t.off_since_ns))) {
            self.take(bpf, &waits, python, window.max_depth);
        }
        for (key, t) in &waits {
            let Some(s) = self.taken.get(&(key.tid, t.off_since_ns)) else { continue };
            let (blocked_ns, runq_ns) = window_part(t, window.start_ns, window.now_ns);
            if blocked_ns + runq_ns == 0 {
                continue;
            }
            let mut s = s.clone();
            s.off = OffCpuInfo {
                blocked_ns,
                runq_ns,
                syscall_nr: key.syscall_nr,
                arg0: key.arg0,
                state: key.state,
                switches: 0,
            };
            agg.add_off_cpu(s, symbols, python, classifier);
        }
    }

    /// Reads the stacks of the waits not read yet: one run of the task iterator for all of
    /// them, one walk of each process's thread list.
    fn take(&mut self, bpf: &mut Bpf, waits: &[(OffCpuKey, ThreadTimes)], python: &mut PythonRegistry, depth: usize) {
        let tasks: HashMap<u32, profiler_common::task_iter::TaskRecord> =
            bpf.tasks().into_iter().map(|r| (r.tid, r)).collect();
        let mut indexes: HashMap<u32, Option<ThreadStateIndex>> = HashMap::new();
        for (key, t) in waits {
            if self.taken.contains_key(&(key.tid, t.off_since_ns)) {
                continue;
            }
            let pid = t.pid;
            let task = tasks.get(&key.tid);
            let index = indexes.entry(pid).or_insert_with(|| {
                python.observe(pid);
                python.get_mut(pid).map(|p| p.thread_state_index())
            });
            let (py_frames, py_status) = match (index.as_ref(), python.get_mut(pid)) {
                (Some(index), Some(proc)) => proc
                    .thread_frames(index, key.tid, task.map(|r| r.fsbase), depth)
                    .unwrap_or((Vec::new(), py_status::PYTHON_PROCESS)),
                _ => (Vec::new(), 0),
            };
            let mut comm = [0u8; TASK_COMM_LEN];
            let name = procinfo::thread_comm(pid, key.tid).unwrap_or_default();
            let n = name.len().min(TASK_COMM_LEN - 1);
            comm[..n].copy_from_slice(&name.as_bytes()[..n]);
            let kernel_stack = task.map(|r| r.kstack[..(r.kstack_len as usize).min(r.kstack.len())].to_vec());
            self.taken.insert(
                (key.tid, t.off_since_ns),
                Sample {
                    cpu: 0,
                    pid,
                    tid: key.tid,
                    time_ns: t.off_since_ns,
                    comm,
                    kernel_stack: kernel_stack.unwrap_or_default(),
                    user_stack: Vec::new(),
                    py_status,
                    py_frames,
                    off: OffCpuInfo::default(),
                    user_sp: 0,
                    user_end: unwind::end::FRAME_POINTERS,
                    user_cfa: Vec::new(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(state: u32, since: u64, wake: u64) -> ThreadTimes {
        ThreadTimes { off_since_ns: since, off_state: state, wake_ns: wake, ..ThreadTimes::new(1, 0, 0) }
    }

    #[test]
    fn a_wait_weighs_its_part_inside_the_window() {
        // Asleep since before the window (100 → now 1000, window from 400): 600 blocked.
        assert_eq!(window_part(&times(off_state::SLEEPING, 100, 0), 400, 1000), (600, 0));
        // Woken at 700: blocked until then, waiting for a CPU after.
        assert_eq!(window_part(&times(off_state::SLEEPING, 100, 700), 400, 1000), (300, 300));
        // Woken before the window started: all of the window in the run queue.
        assert_eq!(window_part(&times(off_state::SLEEPING, 100, 200), 400, 1000), (0, 600));
        // Went off inside the window.
        assert_eq!(window_part(&times(off_state::UNINTERRUPTIBLE, 500, 0), 400, 1000), (500, 0));
    }

    #[test]
    fn only_long_waits_in_syscalls_or_asleep_get_stacks() {
        let key = |tid, state, nr| OffCpuKey { tid, state, syscall_nr: nr, arg0: 0 };
        let sum = |ns| OffCpuSum { blocked_ns: ns, runq_ns: 0, count: 0 };
        let t: HashMap<u32, ThreadTimes> = (1..=4).map(|tid| (tid, times(off_state::SLEEPING, 1, 0))).collect();
        let in_progress = [
            (key(1, off_state::SLEEPING, 43), sum(50)),
            (key(2, off_state::SLEEPING, 43), sum(5)),
            (key(3, off_state::RUNNABLE, -1), sum(50)),
            (key(4, off_state::RUNNABLE, 0), sum(50)),
            (key(9, off_state::SLEEPING, 0), sum(50)),
        ];
        let tids: Vec<u32> = long_waits(&t, &in_progress, 10).map(|(k, _)| k.tid).collect();
        assert_eq!(tids, [1, 4]);
    }
}
