//! Off-CPU events that repeat one already seen in the window: the same thread blocked again in
//! the same call with the same stacks (a worker's `time.sleep` loop, a thread waiting on the
//! same queue). A `--all` daemon beside 20 services of 4 threads waking 20 times a second gets
//! ~1,600 such events a second, and working each one out again (Python frames resolved, the
//! wait classified, its name interned, the stack built, hashed and noted for symbolization)
//! was the biggest part of its CPU. The aggregator remembers, per distinct event, the raw stacks
//! its two parts were added to, and adds a repeat's weights to them directly.
//!
//! Only what is worked out the same way every time is remembered: waits not named by a
//! descriptor (those are looked at again on every event, see [`crate::offcpu::classify`]),
//! stacks walked by frame pointers (mixed stacks depend on the stack pointers too), and
//! processes known to be Python. The classifier's generation is checked on every hit: a GIL
//! found, a parking lot, an event loop's idle poll seen, or a process forgotten since makes
//! the event worked out again. The aggregator is new each window, and so is this.
use std::hash::{Hash, Hasher};

use foldhash::HashMap;
use profiler_common::{PyFrameRecord, TASK_COMM_LEN};

use super::events::Sample;

/// Distinct events remembered per window at most; past it, new ones are not remembered (a
/// window rarely has more distinct off-CPU stacks than this).
const MAX_ENTRIES: usize = 65_536;

/// What makes two off-CPU events the same but for their times: the thread, its name, the
/// call, and the stacks.
#[derive(PartialEq, Eq)]
pub(super) struct RepeatKey {
    pid: u32,
    tid: u32,
    comm: [u8; TASK_COMM_LEN],
    state: u32,
    syscall_nr: i64,
    arg0: u64,
    py_status: u32,
    kernel_stack: Vec<u64>,
    user_stack: Vec<u64>,
    py_frames: Vec<PyFrameRecord>,
}

impl Hash for RepeatKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (self.pid, self.tid, self.comm, self.state, self.syscall_nr, self.arg0, self.py_status).hash(h);
        self.kernel_stack.hash(h);
        self.user_stack.hash(h);
        // `PyFrameRecord` is the kernel contract's type, without `Hash`.
        for f in &self.py_frames {
            (f.code, f.instr, f.fingerprint, f.owner).hash(h);
        }
    }
}

impl RepeatKey {
    /// Moves the key's parts out of a sample (no copy); [`RepeatKey::restore`] puts them back.
    pub(super) fn take(s: &mut Sample) -> Self {
        RepeatKey {
            pid: s.pid,
            tid: s.tid,
            comm: s.comm,
            state: s.off.state,
            syscall_nr: s.off.syscall_nr,
            arg0: s.off.arg0,
            py_status: s.py_status,
            kernel_stack: std::mem::take(&mut s.kernel_stack),
            user_stack: std::mem::take(&mut s.user_stack),
            py_frames: std::mem::take(&mut s.py_frames),
        }
    }

    /// Gives the sample copies of its parts back, for it to be worked out (the key is kept
    /// to remember the outcome under).
    pub(super) fn restore_copy(&self, s: &mut Sample) {
        s.kernel_stack = self.kernel_stack.clone();
        s.user_stack = self.user_stack.clone();
        s.py_frames = self.py_frames.clone();
    }
}

/// Where an event's parts were added: the aggregator's stack `S` of its run-queue part and of
/// its blocked part (None: that part was zero then, and the event is worked out again when it
/// is not).
pub(super) struct Placed<S> {
    pub runq: Option<S>,
    pub blocked: Option<S>,
    /// The classifier's generation when it was worked out.
    pub generation: u64,
}

pub(super) struct Repeats<S> {
    seen: HashMap<RepeatKey, Placed<S>>,
}

impl<S> Default for Repeats<S> {
    fn default() -> Self {
        Self { seen: HashMap::default() }
    }
}

impl<S> Repeats<S> {
    pub(super) fn get(&self, key: &RepeatKey) -> Option<&Placed<S>> {
        self.seen.get(key)
    }

    pub(super) fn remember(&mut self, key: RepeatKey, placed: Placed<S>) {
        if self.seen.len() < MAX_ENTRIES || self.seen.contains_key(&key) {
            self.seen.insert(key, placed);
        }
    }

    /// Process `pid` exec'd: its frames and symbols are a new program's.
    pub(super) fn forget(&mut self, pid: u32) {
        self.seen.retain(|k, _| k.pid != pid);
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::OffCpuInfo;

    use super::*;

    fn sample(blocked_ns: u64, kernel: &[u64]) -> Sample {
        Sample {
            cpu: 0,
            pid: 10,
            tid: 11,
            time_ns: blocked_ns * 3,
            comm: [b'w'; TASK_COMM_LEN],
            kernel_stack: kernel.to_vec(),
            user_stack: vec![0x1000],
            py_status: 0,
            py_frames: vec![PyFrameRecord { code: 0x2000, instr: 0x2010, fingerprint: 7, owner: 0 }],
            off: OffCpuInfo { blocked_ns, runq_ns: 5, syscall_nr: 230, arg0: 0, state: 1, switches: 1 },
            user_sp: 0,
            user_end: 0,
            user_cfa: Vec::new(),
        }
    }

    #[test]
    fn events_differing_only_in_their_times_are_repeats() {
        let mut repeats = Repeats::<u32>::default();
        let mut first = sample(50_000_000, &[1, 2, 3]);
        let key = RepeatKey::take(&mut first);
        assert!(first.kernel_stack.is_empty(), "the parts were moved, not copied");
        key.restore_copy(&mut first);
        assert_eq!(first, sample(50_000_000, &[1, 2, 3]), "restored whole");
        repeats.remember(key, Placed { runq: Some(1), blocked: Some(2), generation: 0 });

        let mut again = sample(49_000_000, &[1, 2, 3]);
        let placed = repeats.get(&RepeatKey::take(&mut again)).expect("a repeat");
        assert_eq!((placed.runq, placed.blocked), (Some(1), Some(2)));

        let mut other_stack = sample(50_000_000, &[1, 2, 4]);
        assert!(repeats.get(&RepeatKey::take(&mut other_stack)).is_none());
        let mut other_call = sample(50_000_000, &[1, 2, 3]);
        other_call.off.arg0 = 1;
        assert!(repeats.get(&RepeatKey::take(&mut other_call)).is_none());

        repeats.forget(10);
        assert!(repeats.get(&RepeatKey::take(&mut sample(1, &[1, 2, 3]))).is_none(), "exec forgets the process");
    }
}
