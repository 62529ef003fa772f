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
    /// Whose thread each key's is.
    pids: ThreadPids,
}

/// The process of each tracked thread, as `THREAD_TIMES` had it when last read here. Read
/// again only when a sum names a thread not seen at the last read, or when events may have
/// been lost; a thread that exits, or whose process execs, leaves it at once (its id may be
/// another process's next). The batch read walks all 65,536 buckets of the map whatever it
/// holds, and 4 passes a second of it, with `OFFCPU_SUMS`' walk, were the largest part of a
/// `daemon --all`'s housekeeping beside 20 idle services.
#[derive(Default)]
struct ThreadPids {
    pid_of: HashMap<u32, u32>,
    /// Threads the sums named that the last read did not have (evicted from the LRU map, or
    /// not timed yet): read for again after [`MISSING_RETRY_PASSES`], not on every pass.
    missing: std::collections::HashSet<u32>,
    /// Passes since the last read.
    passes: u8,
    /// Processes that exec'd since the last pass: their threads leave `pid_of` then.
    execed: std::collections::HashSet<u32>,
    /// The count of lost events at the last read (None: never read).
    read_at: Option<u64>,
}

/// Passes (~1 s) after which threads the last read did not have are read for again: as
/// long as a thread was skipped before it had times.
const MISSING_RETRY_PASSES: u8 = 4;

/// Lost events so far (a thread's exit may be among them), or None when the session cannot
/// tell thread exits at all (the exit hook is not attached): then every pass reads the times.
pub type LostEvents = Option<u64>;

impl ThreadPids {
    /// The tid → pid map for `sums`, read from `times()` when it may be incomplete or stale.
    fn get(
        &mut self,
        lost: LostEvents,
        sums: &[(OffCpuKey, OffCpuSum)],
        times: impl FnOnce() -> Vec<(u32, ThreadTimes)>,
    ) -> &HashMap<u32, u32> {
        if !self.execed.is_empty() {
            let execed = std::mem::take(&mut self.execed);
            self.pid_of.retain(|_, pid| !execed.contains(pid));
        }
        self.passes = self.passes.saturating_add(1);
        let retry_missing = !self.missing.is_empty() && self.passes >= MISSING_RETRY_PASSES;
        let unknown = |tid: &u32| !self.pid_of.contains_key(tid) && !self.missing.contains(tid);
        if lost.is_none() || self.read_at != lost || retry_missing || sums.iter().any(|(k, _)| unknown(&k.tid)) {
            self.pid_of = times().iter().map(|(tid, t)| (*tid, t.pid)).collect();
            self.missing = sums.iter().map(|(k, _)| k.tid).filter(|t| !self.pid_of.contains_key(t)).collect();
            self.read_at = lost;
            self.passes = 0;
        }
        &self.pid_of
    }
}

#[derive(Clone, Copy)]
struct Seen {
    count: u64,
    generation: u64,
    rechecks_left: u8,
}

impl ClassifiedWaits {
    /// Thread `tid` exited: its id may be another process's from now on.
    pub fn thread_exited(&mut self, tid: u32) {
        self.pids.pid_of.remove(&tid);
        self.pids.missing.remove(&tid);
    }

    /// Process `pid` exec'd: a thread other than its leader that calls exec takes the leader's
    /// id, and its own is freed without an exit.
    pub fn process_execed(&mut self, pid: u32) {
        if self.pids.execed.len() < 4096 {
            self.pids.execed.insert(pid);
        } else {
            self.pids.read_at = None;
            self.pids.pid_of.clear();
        }
    }

    /// `times` reads `THREAD_TIMES`, when needed (see [`ThreadPids`]).
    pub fn classify(
        &mut self,
        lost: LostEvents,
        times: impl FnOnce() -> Vec<(u32, ThreadTimes)>,
        sums: &[(OffCpuKey, OffCpuSum)],
        classifier: &mut Classifier,
    ) {
        let mut current: HashMap<OffCpuKey, Seen> = HashMap::with_capacity(sums.len());
        let pid_of = self.pids.get(lost, sums, times);
        for (key, sum) in sums {
            let Some(&pid) = pid_of.get(&key.tid) else { continue };
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
        w.classify(None, || times.to_vec(), &[(sleep, sum(1)), (read, sum(1))], &mut c);
        assert_eq!(w.seen[&sleep].rechecks_left, 0);
        assert_eq!(w.seen[&read].rechecks_left, FD_RECHECK_PASSES);
        // Unchanged: the descriptor wait is looked at again a few passes, then left alone.
        for left in (0..FD_RECHECK_PASSES).rev() {
            w.classify(None, || times.to_vec(), &[(sleep, sum(1)), (read, sum(1))], &mut c);
            assert_eq!(w.seen[&read].rechecks_left, left);
        }
        w.classify(None, || times.to_vec(), &[(sleep, sum(1)), (read, sum(1))], &mut c);
        assert_eq!(w.seen[&read].rechecks_left, 0);
        // One more wait on it: looked at again.
        w.classify(None, || times.to_vec(), &[(sleep, sum(1)), (read, sum(2))], &mut c);
        assert_eq!((w.seen[&read].count, w.seen[&read].rechecks_left), (2, FD_RECHECK_PASSES));
        // A key the sums no longer hold is forgotten.
        w.classify(None, || times.to_vec(), &[(read, sum(2))], &mut c);
        assert!(!w.seen.contains_key(&sleep));
        // The classifier's generation moving (it forgets a process it had classes of):
        // everything classified again.
        let before = c.generation();
        c.forget(pid);
        assert_ne!(c.generation(), before);
        w.classify(None, || times.to_vec(), &[(read, sum(2))], &mut c);
        assert_eq!((w.seen[&read].generation, w.seen[&read].rechecks_left), (c.generation(), FD_RECHECK_PASSES));
    }

    #[test]
    fn thread_pids_are_read_again_only_when_a_thread_may_have_changed_process() {
        let key = |tid| OffCpuKey { tid, state: 1, syscall_nr: 35, arg0: 0 };
        let sum = OffCpuSum { blocked_ns: 1, runq_ns: 0, count: 1 };
        let get = |w: &mut ClassifiedWaits, lost: LostEvents, tids: &[u32], times: &[(u32, u32)]| {
            let sums: Vec<_> = tids.iter().map(|&t| (key(t), sum)).collect();
            let times: Vec<_> = times.iter().map(|&(tid, pid)| (tid, ThreadTimes::new(pid, 0, 0))).collect();
            let mut read = false;
            let map = w
                .pids
                .get(lost, &sums, || {
                    read = true;
                    times
                })
                .clone();
            (map, read)
        };
        let mut w = ClassifiedWaits::default();
        let (m, read) = get(&mut w, Some(0), &[11, 12], &[(11, 10), (12, 10)]);
        assert!(read && m[&11] == 10 && m[&12] == 10);
        // Same threads, nothing lost: the cache.
        let (_, read) = get(&mut w, Some(0), &[11, 12], &[]);
        assert!(!read);
        // A thread not seen at the last read: read again; one the map lacks is not read for
        // again.
        let (_, read) = get(&mut w, Some(0), &[11, 99], &[(11, 10)]);
        assert!(read);
        let (m, read) = get(&mut w, Some(0), &[11, 99], &[]);
        assert!(!read && !m.contains_key(&99));
        // ...until a few passes later, when it may have times.
        for _ in 2..MISSING_RETRY_PASSES {
            assert!(!get(&mut w, Some(0), &[11, 99], &[]).1);
        }
        let (m, read) = get(&mut w, Some(0), &[11, 99], &[(11, 10), (99, 10)]);
        assert!(read && m[&99] == 10);
        // A thread exited (its id may be another process's now): read again when named.
        w.thread_exited(11);
        let (m, read) = get(&mut w, Some(0), &[11], &[(11, 20)]);
        assert!(read && m[&11] == 20);
        // Its process exec'd: the same.
        w.process_execed(20);
        let (m, read) = get(&mut w, Some(0), &[11], &[(11, 30)]);
        assert!(read && m[&11] == 30);
        // Events lost: read again. Cannot tell exits at all: read every time.
        let (_, read) = get(&mut w, Some(1), &[11], &[(11, 30)]);
        assert!(read);
        let (_, read) = get(&mut w, None, &[11], &[(11, 30)]);
        let (_, again) = get(&mut w, None, &[11], &[(11, 30)]);
        assert!(read && again);
    }
}
