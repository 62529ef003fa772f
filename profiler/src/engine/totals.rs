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

/// Classifies every wait the sums hold now, while the processes still have the descriptors
/// open (classes are cached, so the profile's totals later find them). Called every few
/// drains: a socket or file closed before the profile ends is still named.
pub fn classify_waits(times: &[(u32, ThreadTimes)], sums: &[(OffCpuKey, OffCpuSum)], classifier: &mut Classifier) {
    for (pid, key, _) in with_pids(times, sums) {
        classifier.classify(pid, key.state, key.syscall_nr, key.arg0);
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
