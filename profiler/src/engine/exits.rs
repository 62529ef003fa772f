//! Threads and processes that exited during the window, learnt from the kernel's exit events
//! (`sched_process_exit`, see `profiler_common::lifecycle`) instead of checking /proc for
//! every tracked thread and known process at each window, and the slow rescan of /proc kept
//! as a safety net for what events can miss.
//!
//! An exited process leaves the kernel's target and layout maps at once (the session's next
//! housekeeping tick): a pid reused meanwhile is not profiled for it. What userspace keeps of
//! it (exact times in the kernel's per-thread maps, symbols, Python code objects, thread
//! names) is still needed by the window's profile, so it is dropped when the window ends.
//!
//! Events are missed when the ring buffer is full (a burst of samples): any lost event makes
//! the next tick rescan /proc (at most once a second), and so does a rescan every
//! [`RESCAN_EVERY`] regardless (without the exit hook, every [`RESCAN_WITHOUT_EVENTS`]).
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

/// The safety net: /proc is rescanned this often even when no event was lost.
pub const RESCAN_EVERY: Duration = Duration::from_secs(30);
/// How often /proc is rescanned when the kernel sends no exit events (hooks not attached), and
/// at most when events keep being lost (a host so loaded that the ring overflows all along
/// would otherwise rescan at every tick).
pub const RESCAN_WITHOUT_EVENTS: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Exits {
    /// Threads that exited in this window: tid → pid.
    threads: HashMap<u32, u32>,
    /// Processes that exited in this window.
    processes: HashSet<u32>,
    /// Exited processes still in the kernel's maps (dropped at the next tick).
    unmap: Vec<u32>,
    /// Main threads that exited while the kernel could not tell whether their process did:
    /// looked up in /proc at the next tick.
    to_check: Vec<u32>,
    /// Last names of the threads that exited in this window: (pid, tid) → name.
    names: HashMap<(u32, u32), String>,
    /// Lost events counted when /proc was last rescanned.
    lost_at_rescan: u64,
    rescanned: Option<Instant>,
}

impl Exits {
    /// Thread `tid` of process `pid` exited, named `name` (None: found gone by a rescan).
    pub fn thread_exited(&mut self, pid: u32, tid: u32, name: Option<String>) {
        self.threads.insert(tid, pid);
        if let Some(name) = name {
            self.names.insert((pid, tid), name);
        }
    }

    /// Process `pid` exited (its last thread did).
    pub fn process_exited(&mut self, pid: u32) {
        if self.processes.insert(pid) {
            self.unmap.push(pid);
        }
    }

    /// Its main thread exited; whether the process did is checked at the next tick.
    pub fn leader_exited(&mut self, pid: u32) {
        self.to_check.push(pid);
    }

    /// A thread started with the id of one that exited in this window: it is another thread.
    pub fn started(&mut self, tid: u32) {
        self.threads.remove(&tid);
    }

    /// Has thread `tid` exited in this window?
    pub fn thread_gone(&self, tid: u32) -> bool {
        self.threads.contains_key(&tid)
    }

    /// The name thread `tid` of process `pid` had when it exited in this window.
    pub fn last_name(&self, pid: u32, tid: u32) -> Option<&str> {
        self.names.get(&(pid, tid)).map(String::as_str)
    }

    /// Processes whose exit was learnt since the last call (to drop from the kernel's maps
    /// now), with the main threads whose process turned out to be gone.
    pub fn take_unmapped(&mut self, alive: impl Fn(u32) -> bool) -> Vec<u32> {
        for pid in std::mem::take(&mut self.to_check) {
            if !alive(pid) {
                self.process_exited(pid);
            }
        }
        std::mem::take(&mut self.unmap)
    }

    /// Is the /proc rescan due at `now`, with `lost` events counted so far? `events`: the
    /// kernel sends exit events.
    pub fn rescan_due(&mut self, now: Instant, lost: u64, events: bool) -> bool {
        let every = if events { RESCAN_EVERY } else { RESCAN_WITHOUT_EVENTS };
        let since = self.rescanned.map(|t| now.saturating_duration_since(t));
        let due =
            since.is_none_or(|since| since >= every || (lost > self.lost_at_rescan && since >= RESCAN_WITHOUT_EVENTS));
        if due {
            self.rescanned = Some(now);
            self.lost_at_rescan = lost;
        }
        due
    }

    /// Ends the window: the threads and processes that exited in it, to forget everywhere.
    pub fn end_window(&mut self) -> (Vec<u32>, Vec<u32>) {
        self.names.clear();
        let tids = self.threads.drain().map(|(tid, _)| tid).collect();
        let pids = self.processes.drain().collect();
        (tids, pids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_kept_for_the_window_then_handed_over_once() {
        let mut e = Exits::default();
        e.thread_exited(10, 11, Some("worker".into()));
        e.thread_exited(10, 10, None);
        e.process_exited(10);
        e.process_exited(10);
        assert!(e.thread_gone(11) && !e.thread_gone(12));
        assert_eq!((e.last_name(10, 11), e.last_name(10, 10)), (Some("worker"), None));
        assert_eq!(e.take_unmapped(|_| true), [10]);
        assert!(e.take_unmapped(|_| true).is_empty(), "unmapped once");
        let (mut tids, pids) = e.end_window();
        tids.sort_unstable();
        assert_eq!((tids, pids), (vec![10, 11], vec![10]));
        assert_eq!(e.last_name(10, 11), None);
        assert_eq!(e.end_window(), (vec![], vec![]));
    }

    #[test]
    fn a_reused_tid_is_a_new_thread() {
        let mut e = Exits::default();
        e.thread_exited(10, 11, Some("old".into()));
        e.started(11);
        assert!(!e.thread_gone(11));
    }

    #[test]
    fn a_main_thread_exit_is_checked() {
        let mut e = Exits::default();
        e.leader_exited(20);
        e.leader_exited(21);
        assert_eq!(e.take_unmapped(|pid| pid == 21), [20]);
        assert_eq!(e.end_window().1, [20]);
    }

    #[test]
    fn rescans_when_events_were_lost_and_now_and_then() {
        let mut e = Exits::default();
        let t0 = Instant::now();
        assert!(e.rescan_due(t0, 0, true), "the first tick rescans");
        assert!(!e.rescan_due(t0 + Duration::from_secs(1), 0, true));
        assert!(e.rescan_due(t0 + Duration::from_secs(2), 5, true), "lost events");
        assert!(!e.rescan_due(t0 + Duration::from_millis(2500), 9, true), "lost again, within a second");
        assert!(e.rescan_due(t0 + Duration::from_secs(3), 9, true), "lost again, a second later");
        assert!(!e.rescan_due(t0 + Duration::from_millis(3500), 9, true));
        assert!(e.rescan_due(t0 + Duration::from_secs(4), 9, false), "no exit events: every second");
        assert!(e.rescan_due(t0 + RESCAN_EVERY + Duration::from_secs(4), 5, true));
    }
}
