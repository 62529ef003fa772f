//! When to read a process's Python thread names again: when the kernel says a thread appeared
//! or renamed itself, and otherwise only now and then, for renames it cannot see.
//!
//! Reading the names walks `threading`'s dicts in the target's memory (dozens of
//! `process_vm_readv` calls per thread); doing it every second for every Python process was a
//! fifth of a `--all` daemon's CPU on a host with 20 idle services, and listing each process's
//! threads every second to notice new ones was most of what was left. The kernel now reports
//! a CPython process's new threads (the fork hook) and every rename (`task_rename`: 3.14+
//! gives a `threading.Thread`'s name to the OS thread when it starts and when the thread
//! renames itself, and `pthread_setname_np`, `prctl` do on every version). A thread that has
//! not registered with `threading` yet when it is read (the read raced its start) is tried
//! again, up to [`TRIES`] times; native threads that never get a Python name stop costing
//! anything after that. `Thread.name = ...` on 3.8–3.13, or from another thread, changes
//! nothing the kernel shows: those renames are picked up by a read every [`RENAMES_EVERY`].
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Reads for new threads at most this often (a server starting a thread per request).
pub const NEW_THREADS_EVERY: Duration = Duration::from_secs(1);
/// Reads for a rename the kernel saw at most this often: soon, since a thread that renames
/// itself may exit shortly after, and `threading` forgets it then.
pub const RENAMED_EVERY: Duration = Duration::from_millis(200);
/// How often the names are read again regardless (renames the kernel does not see).
pub const RENAMES_EVERY: Duration = Duration::from_secs(30);
/// Reads a thread without a Python name is worth (it may not have registered yet).
const TRIES: u8 = 3;

#[derive(Default)]
pub struct NameRefresh {
    read: Option<Instant>,
    /// New threads without a name yet, and how many reads they were absent from.
    unnamed: HashMap<u32, u8>,
    /// A thread renamed itself since the last read.
    renamed: bool,
}

impl NameRefresh {
    /// The kernel reported a new thread.
    pub fn started(&mut self, tid: u32) {
        self.unnamed.entry(tid).or_insert(0);
    }

    /// The kernel reported a rename (a new thread's first name, on 3.14+).
    pub fn renamed(&mut self, tid: u32) {
        self.renamed = true;
        self.unnamed.entry(tid).or_insert(0);
    }

    /// The thread exited: nothing more to learn about it.
    pub fn exited(&mut self, tid: u32) {
        self.unnamed.remove(&tid);
    }

    /// Is a read due at `now`? `named` are the threads that have a name.
    pub fn due(&self, now: Instant, named: &HashMap<u32, String>) -> bool {
        let Some(read) = self.read else { return true };
        let since = now.saturating_duration_since(read);
        since >= RENAMES_EVERY
            || (self.renamed && since >= RENAMED_EVERY)
            || (since >= NEW_THREADS_EVERY && self.unnamed.keys().any(|tid| !named.contains_key(tid)))
    }

    /// Records a read at `now` after which `named` are the threads with a name.
    pub fn read_done(&mut self, now: Instant, named: &HashMap<u32, String>) {
        self.read = Some(now);
        self.renamed = false;
        self.unnamed.retain(|tid, tries| {
            *tries += 1;
            !named.contains_key(tid) && *tries < TRIES
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tids: &[u32]) -> HashMap<u32, String> {
        tids.iter().map(|&t| (t, format!("t{t}"))).collect()
    }

    #[test]
    fn reads_on_new_threads_renames_and_now_and_then() {
        let mut r = NameRefresh::default();
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // The first check reads.
        assert!(r.due(at(0.0), &names(&[])));
        r.read_done(at(0.0), &names(&[1, 2]));
        // Nothing new: no read until RENAMES_EVERY.
        assert!(!r.due(at(5.0), &names(&[1, 2])));
        // A new thread: read, at most every NEW_THREADS_EVERY.
        r.started(3);
        assert!(r.due(at(5.0), &names(&[1, 2])));
        r.read_done(at(5.0), &names(&[1, 2, 3]));
        assert!(!r.due(at(6.0), &names(&[1, 2, 3])));
        // A rename: read soon.
        r.renamed(2);
        assert!(!r.due(at(5.1), &names(&[1, 2, 3])));
        assert!(r.due(at(5.3), &names(&[1, 2, 3])));
        r.read_done(at(5.3), &names(&[1, 2, 3]));
        assert!(!r.due(at(6.0), &names(&[1, 2, 3])));
        // Renames the kernel cannot see: a read every RENAMES_EVERY.
        assert!(r.due(at(35.5), &names(&[1, 2, 3])));
    }

    #[test]
    fn a_thread_without_a_python_name_is_tried_a_few_times() {
        let mut r = NameRefresh::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let named = names(&[1]);
        r.read_done(at(0), &named);
        r.started(9);
        let mut reads = 0;
        for s in 1..10 {
            if r.due(at(s), &named) {
                reads += 1;
                r.read_done(at(s), &named);
            }
        }
        assert_eq!(reads, usize::from(TRIES), "thread 9 (native) is given up after {TRIES} reads");
        // One that exits is given up at once.
        r.started(10);
        r.exited(10);
        assert!(!r.due(at(12), &named));
    }
}
