//! Exact time per thread per category, from the kernel's cumulative maps: on-CPU time per
//! thread, and every off-CPU interval's blocked part in its wait's category and its run-queue
//! part in `runqueue`. Waits are classified by [`Classifier`], the one place that does it for
//! both the kernel's sums and the events that carry stacks.
use std::collections::HashMap;

use profiler_common::{OffCpuKey, OffCpuSum, ThreadTimes};

use crate::{
    model::{Category, Totals},
    offcpu::classify::Classifier,
};

/// Exact time per category per (pid, tid).
pub type ThreadTotals = HashMap<(u32, u32), Totals>;

/// Adds the kernel's sums into per-thread totals.
pub fn thread_totals(
    times: &[(u32, ThreadTimes)],
    sums: &[(OffCpuKey, OffCpuSum)],
    classifier: &mut Classifier,
) -> ThreadTotals {
    let mut totals = ThreadTotals::new();
    for (tid, t) in times {
        totals.entry((t.pid, *tid)).or_default().add(Category::Cpu, t.oncpu_ns);
    }
    for (pid, key, sum) in with_pids(times, sums) {
        let wait = classifier.classify(pid, key.state, key.syscall_nr, key.arg0);
        let entry = totals.entry((pid, key.tid)).or_default();
        entry.add(wait.category, sum.blocked_ns);
        entry.add(Category::Runqueue, sum.runq_ns);
    }
    totals
}

/// Passes of [`ClassifiedWaits::classify`] in which a descriptor wait is looked at again after
/// its last change (4 passes: ~1 s at the housekeeping tick): a new connection's socket table
/// is re-read at most 4 times a second, so its peer shows within that.
const FD_RECHECK_PASSES: u8 = 4;

/// Classifies the waits the sums hold, while the processes still have the descriptors open
/// (classes are cached, so the profile's totals later find them). Called every few drains: a
/// socket or file closed before the profile ends is still named.
///
/// Each pass classifies only the waits that changed since the one before: a new key, a key
/// with more waits (its descriptor may have been reused), any key after the classifier's
/// generation moved (an earlier answer may differ: a GIL learned, a process forgotten), and a
/// descriptor wait for [`FD_RECHECK_PASSES`] passes after that. Classifying every key on
/// every pass cost a quarter of `daemon --all`'s CPU beside a Python process that starts
/// children: each `wait4` on a new child is a new key, tens of thousands of them.
#[derive(Default)]
pub struct ClassifiedWaits {
    /// Key → what it was classified at.
    seen: HashMap<OffCpuKey, Seen>,
}

#[derive(Clone, Copy)]
struct Seen {
    count: u64,
    generation: u64,
    rechecks_left: u8,
}

impl ClassifiedWaits {
    pub fn classify(
        &mut self,
        times: &[(u32, ThreadTimes)],
        sums: &[(OffCpuKey, OffCpuSum)],
        classifier: &mut Classifier,
    ) {
        let mut current: HashMap<OffCpuKey, Seen> = HashMap::with_capacity(sums.len());
        for (pid, key, sum) in with_pids(times, sums) {
            let generation = classifier.generation();
            let seen = match self.seen.get(key) {
                Some(&s) if s.count == sum.count && s.generation == generation && s.rechecks_left == 0 => s,
                Some(&s) if s.count == sum.count && s.generation == generation => {
                    classifier.classify(pid, key.state, key.syscall_nr, key.arg0);
                    Seen { rechecks_left: s.rechecks_left - 1, ..s }
                }
                _ => {
                    classifier.classify(pid, key.state, key.syscall_nr, key.arg0);
                    let stable = Classifier::is_stable(key.syscall_nr, key.arg0);
                    // The generation after: classifying may move it (nothing here does now).
                    Seen {
                        count: sum.count,
                        generation: classifier.generation(),
                        rechecks_left: if stable { 0 } else { FD_RECHECK_PASSES },
                    }
                }
            };
            current.insert(*key, seen);
        }
        // Only the keys the sums still hold (an exited thread's are deleted from the map).
        self.seen = current;
    }
}

/// The sums of threads whose process is known from their times.
fn with_pids<'a>(
    times: &'a [(u32, ThreadTimes)],
    sums: &'a [(OffCpuKey, OffCpuSum)],
) -> impl Iterator<Item = (u32, &'a OffCpuKey, &'a OffCpuSum)> {
    let pid_of: HashMap<u32, u32> = times.iter().map(|(tid, t)| (*tid, t.pid)).collect();
    sums.iter().filter_map(move |(key, sum)| Some((*pid_of.get(&key.tid)?, key, sum)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pass_classifies_what_changed() {
        let pid = std::process::id();
        let times = [(pid, ThreadTimes::new(pid, 0, 0))];
        let key = |nr, arg0| OffCpuKey { tid: pid, state: profiler_common::off_state::SLEEPING, syscall_nr: nr, arg0 };
        let sum = |count| OffCpuSum { blocked_ns: 1, runq_ns: 0, count };
        // nanosleep: stable; read(0): a descriptor wait.
        let (sleep, read) = (key(35, 0), key(0, 0));
        let mut c = Classifier::default();
        let mut w = ClassifiedWaits::default();
        w.classify(&times, &[(sleep, sum(1)), (read, sum(1))], &mut c);
        assert_eq!(w.seen[&sleep].rechecks_left, 0);
        assert_eq!(w.seen[&read].rechecks_left, FD_RECHECK_PASSES);
        // Unchanged: the descriptor wait is looked at again a few passes, then left alone.
        for left in (0..FD_RECHECK_PASSES).rev() {
            w.classify(&times, &[(sleep, sum(1)), (read, sum(1))], &mut c);
            assert_eq!(w.seen[&read].rechecks_left, left);
        }
        w.classify(&times, &[(sleep, sum(1)), (read, sum(1))], &mut c);
        assert_eq!(w.seen[&read].rechecks_left, 0);
        // One more wait on it: looked at again.
        w.classify(&times, &[(sleep, sum(1)), (read, sum(2))], &mut c);
        assert_eq!((w.seen[&read].count, w.seen[&read].rechecks_left), (2, FD_RECHECK_PASSES));
        // A key the sums no longer hold is forgotten.
        w.classify(&times, &[(read, sum(2))], &mut c);
        assert!(!w.seen.contains_key(&sleep));
        // The classifier's generation moving (it forgets a process it had classes of):
        // everything classified again.
        let before = c.generation();
        c.forget(pid);
        assert_ne!(c.generation(), before);
        w.classify(&times, &[(read, sum(2))], &mut c);
        assert_eq!((w.seen[&read].generation, w.seen[&read].rechecks_left), (c.generation(), FD_RECHECK_PASSES));
    }
}
