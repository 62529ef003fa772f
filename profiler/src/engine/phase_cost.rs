//! The session's own CPU per part of its work, logged once per window (and at a `profile`'s end) at debug level
//! (`RUST_LOG=pyebpf=debug`, or `-v -v`): where a `daemon --all` or a `profile` spends its time, measured
//! inside it with the thread's CPU clock, so the shares hold on a loaded host where wall time
//! and a sampling profiler's counts do not.
//!
//! Off unless debug logging is on: reading the thread's CPU clock is a system call, and the
//! session would make ~10 a tick for nothing.
use crate::host::clock::thread_cpu_ns;

/// A part of the session's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Ring-buffer records decoded and aggregated.
    Drain,
    /// asyncio task snapshots.
    Tasks,
    /// Exited processes unmapped, the /proc rescan when due.
    Exits,
    /// New addresses symbolized.
    Symbols,
    /// Python thread names read again.
    ThreadNames,
    /// Cached code objects re-checked.
    Codes,
    /// The housekeeping's wait classification (two whole-map batch reads, then new keys).
    Classify,
    /// New processes looked at, Python ones registered.
    Discover,
    /// The snapshot's stacks of waits going on.
    Blocked,
    /// The snapshot's totals, the profile built.
    Build,
    /// The rotation's rest: the window's tables dropped, the baseline read, memory released.
    Rotate,
}

const PHASES: [Phase; 11] = [
    Phase::Drain,
    Phase::Tasks,
    Phase::Exits,
    Phase::Symbols,
    Phase::ThreadNames,
    Phase::Codes,
    Phase::Classify,
    Phase::Discover,
    Phase::Blocked,
    Phase::Build,
    Phase::Rotate,
];

/// CPU nanoseconds per phase since the last report.
#[derive(Debug, Default)]
pub struct PhaseCost {
    on: bool,
    ns: [u64; PHASES.len()],
    /// Records drained since the last report.
    pub records: u64,
}

impl PhaseCost {
    pub fn new() -> Self {
        Self { on: log::log_enabled!(log::Level::Debug), ..Self::default() }
    }

    /// The thread's CPU clock now (0 when off): pass it to [`PhaseCost::add`].
    pub fn start(&self) -> u64 {
        if self.on { thread_cpu_ns() } else { 0 }
    }

    /// Charges `phase` with the CPU used since `started` (from [`PhaseCost::start`]); returns
    /// the clock now, to start the next phase from.
    pub fn add(&mut self, phase: Phase, started: u64) -> u64 {
        if !self.on {
            return 0;
        }
        let now = thread_cpu_ns();
        self.ns[phase as usize] += now.saturating_sub(started);
        now
    }

    /// One line of the phases' milliseconds since the last call, which starts the next count.
    pub fn report(&mut self) -> Option<String> {
        if !self.on {
            return None;
        }
        let total: u64 = self.ns.iter().sum();
        let mut line = format!("session CPU {:.1} ms ({} records):", total as f64 / 1e6, self.records);
        for (phase, ns) in PHASES.iter().zip(self.ns) {
            line.push_str(&format!(" {phase:?} {:.1}", ns as f64 / 1e6));
        }
        self.ns = [0; PHASES.len()];
        self.records = 0;
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_listed_in_their_order() {
        for (i, p) in PHASES.iter().enumerate() {
            assert_eq!(*p as usize, i);
        }
    }

    #[test]
    fn a_phase_is_charged_the_cpu_it_used() {
        let mut cost = PhaseCost { on: true, ..PhaseCost::default() };
        let t = cost.start();
        let mut x = 0u64;
        while thread_cpu_ns() < t + 2_000_000 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        cost.add(Phase::Build, t);
        assert!(cost.ns[Phase::Build as usize] >= 2_000_000);
        let line = cost.report().unwrap();
        assert!(line.contains(" Build "), "{line}");
        assert_eq!(cost.ns, [0; PHASES.len()]);
    }
}
