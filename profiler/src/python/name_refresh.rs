//! When to read a process's Python thread names again: when a thread appears that has no name
//! yet, and otherwise only now and then, for renames.
//!
//! Reading the names walks `threading`'s dicts in the target's memory (dozens of
//! `process_vm_readv` calls per thread); doing it every second for every Python process was a
//! fifth of a `--all` daemon's CPU on a host with 20 idle services. Listing the process's
//! threads (`/proc/PID/task`, one directory read) says whether one is new. A thread listed
//! before it registers with `threading` (the read raced its start) is tried again on the next
//! checks, up to [`TRIES`] times; native threads that never get a Python name stop costing
//! anything after that. `Thread.name = ...` changes nothing the kernel shows, so renames are
//! picked up by a read every [`RENAMES_EVERY`].
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How often the thread list is checked for new threads.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the names are read again regardless (renamed threads).
pub const RENAMES_EVERY: Duration = Duration::from_secs(30);
/// Reads a thread without a Python name is worth (it may not have registered yet).
const TRIES: u8 = 3;

#[derive(Default)]
pub struct NameRefresh {
    checked: Option<Instant>,
    read: Option<Instant>,
    /// Threads without a name after a read, and how many reads they were absent from.
    unnamed: HashMap<u32, u8>,
}

impl NameRefresh {
    /// Is a read due at `now`? `tids` lists the process's threads (called only when the
    /// thread list is due for a check); `named` are the threads that have a name.
    pub fn due(&mut self, now: Instant, named: &HashMap<u32, String>, tids: impl FnOnce() -> Vec<u32>) -> bool {
        if self.checked.is_some_and(|t| now.saturating_duration_since(t) < CHECK_EVERY) {
            return false;
        }
        self.checked = Some(now);
        if self.read.is_none_or(|t| now.saturating_duration_since(t) >= RENAMES_EVERY) {
            return true;
        }
        let tids = tids();
        let live: HashSet<u32> = tids.iter().copied().collect();
        // Threads gone: nothing more to learn about them.
        self.unnamed.retain(|tid, _| live.contains(tid));
        tids.iter().any(|tid| !named.contains_key(tid) && self.unnamed.get(tid).is_none_or(|&n| n < TRIES))
    }

    /// Records a read at `now` that found `named`, with `tids` the threads listed for it.
    pub fn read_done(&mut self, now: Instant, named: &HashMap<u32, String>, tids: &[u32]) {
        self.read = Some(now);
        for &tid in tids {
            if !named.contains_key(&tid) {
                *self.unnamed.entry(tid).or_default() += 1;
            }
        }
    }
}

/// The thread ids of a process, as /proc/PID/task lists them (empty once it is gone).
pub fn task_ids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tids: &[u32]) -> HashMap<u32, String> {
        tids.iter().map(|&t| (t, format!("t{t}"))).collect()
    }

    #[test]
    fn reads_on_new_threads_and_for_renames_only() {
        let mut r = NameRefresh::default();
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // The first check reads.
        assert!(r.due(at(0.0), &names(&[]), || vec![1, 2]));
        r.read_done(at(0.0), &names(&[1, 2]), &[1, 2]);
        // Same threads, all named: nothing to read, and the list is not even asked for
        // within CHECK_EVERY.
        assert!(!r.due(at(0.5), &names(&[1, 2]), || panic!("checked too soon")));
        assert!(!r.due(at(1.0), &names(&[1, 2]), || vec![1, 2]));
        // A new thread: read.
        assert!(r.due(at(2.0), &names(&[1, 2]), || vec![1, 2, 3]));
        r.read_done(at(2.0), &names(&[1, 2, 3]), &[1, 2, 3]);
        assert!(!r.due(at(3.0), &names(&[1, 2, 3]), || vec![1, 2, 3]));
        // Renames: a read every RENAMES_EVERY.
        assert!(r.due(at(32.5), &names(&[1, 2, 3]), || vec![1, 2, 3]));
    }

    #[test]
    fn a_thread_without_a_python_name_is_tried_a_few_times() {
        let mut r = NameRefresh::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let named = names(&[1]);
        let mut reads = 0;
        for s in 0..10 {
            if r.due(at(s), &named, || vec![1, 9]) {
                reads += 1;
                r.read_done(at(s), &named, &[1, 9]);
            }
        }
        assert_eq!(reads, usize::from(TRIES), "thread 9 (native) is given up after {TRIES} reads");
    }
}
