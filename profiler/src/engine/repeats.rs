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
//!
//! A repeat's weights are summed here, on the entry the look-up found ([`Placed::pending`]),
//! and added to the aggregator's stacks when it needs them whole ([`Repeats::take_pending`]:
//! at a snapshot, before an entry is replaced or forgotten). Adding them to the stacks on every
//! repeat was two more look-ups of whole stacks per event (hashing and comparing ~50 frames
//! each, in tables the event's thread had left cold): the largest part of the drain.
use std::hash::{Hash, Hasher};

use foldhash::HashMap;
use profiler_common::{PyFrameRecord, TASK_COMM_LEN};

use super::{aggregate::Weight, events::Sample};

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
    /// Repeats' weights not yet added to the stacks: `[runq, blocked]`.
    pub pending: [Weight; 2],
}

impl<S> Placed<S> {
    pub(super) fn new(runq: Option<S>, blocked: Option<S>, generation: u64) -> Self {
        Placed { runq, blocked, generation, pending: [Weight::default(); 2] }
    }

    /// The stacks and the repeats' weights not added to them yet, which are zeroed.
    fn drain_pending(&mut self) -> impl Iterator<Item = (&S, Weight)> {
        let pending = std::mem::take(&mut self.pending);
        [self.runq.as_ref(), self.blocked.as_ref()]
            .into_iter()
            .zip(pending)
            .filter_map(|(stack, w)| Some((stack?, w)).filter(|(_, w)| w.samples > 0))
    }
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
    pub(super) fn get_mut(&mut self, key: &RepeatKey) -> Option<&mut Placed<S>> {
        self.seen.get_mut(key)
    }

    /// Remembers where an event went; `add` takes the weights of repeats the entry it replaces
    /// still held.
    pub(super) fn remember(&mut self, key: RepeatKey, placed: Placed<S>, mut add: impl FnMut(&S, Weight)) {
        if (self.seen.len() < MAX_ENTRIES || self.seen.contains_key(&key))
            && let Some(mut old) = self.seen.insert(key, placed)
        {
            old.drain_pending().for_each(|(s, w)| add(s, w));
        }
    }

    /// Hands `add` every repeat's weight not added to its stack yet.
    pub(super) fn take_pending(&mut self, mut add: impl FnMut(&S, Weight)) {
        for placed in self.seen.values_mut() {
            placed.drain_pending().for_each(|(s, w)| add(s, w));
        }
    }

    /// Process `pid` exec'd: its frames and symbols are a new program's. `add` takes the
    /// weights of its repeats not added yet.
    pub(super) fn forget(&mut self, pid: u32, mut add: impl FnMut(&S, Weight)) {
        self.seen.retain(|k, placed| {
            if k.pid == pid {
                placed.drain_pending().for_each(|(s, w)| add(s, w));
            }
            k.pid != pid
        });
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
        repeats.remember(key, Placed::new(Some(1), Some(2), 0), |_, _| panic!("nothing replaced"));

        let mut again = sample(49_000_000, &[1, 2, 3]);
        let placed = repeats.get_mut(&RepeatKey::take(&mut again)).expect("a repeat");
        assert_eq!((placed.runq, placed.blocked), (Some(1), Some(2)));

        let mut other_stack = sample(50_000_000, &[1, 2, 4]);
        assert!(repeats.get_mut(&RepeatKey::take(&mut other_stack)).is_none());
        let mut other_call = sample(50_000_000, &[1, 2, 3]);
        other_call.off.arg0 = 1;
        assert!(repeats.get_mut(&RepeatKey::take(&mut other_call)).is_none());

        repeats.forget(10, |_, _| {});
        assert!(repeats.get_mut(&RepeatKey::take(&mut sample(1, &[1, 2, 3]))).is_none(), "exec forgets the process");
    }

    #[test]
    fn pending_weights_are_handed_over_once_whenever_an_entry_is_taken_replaced_or_forgotten() {
        let key = || RepeatKey::take(&mut sample(1, &[1, 2, 3]));
        let mut repeats = Repeats::<u32>::default();
        let mut added = Vec::new();
        let pend = |repeats: &mut Repeats<u32>, runq: u64, blocked: u64| {
            let p = repeats.get_mut(&key()).unwrap();
            p.pending[0].samples += 1;
            p.pending[0].ns += runq;
            p.pending[1].samples += 1;
            p.pending[1].ns += blocked;
        };
        repeats.remember(key(), Placed::new(Some(1), Some(2), 0), |_, _| panic!("nothing replaced"));
        pend(&mut repeats, 5, 50);
        pend(&mut repeats, 6, 60);
        repeats.take_pending(|&s, w| added.push((s, w.samples, w.ns)));
        assert_eq!(added, [(1, 2, 11), (2, 2, 110)]);
        added.clear();
        repeats.take_pending(|&s, w| added.push((s, w.samples, w.ns)));
        assert!(added.is_empty(), "taken once");

        // Replaced (worked out again): the old entry's weights go to its own stacks.
        pend(&mut repeats, 7, 70);
        repeats.remember(key(), Placed::new(None, Some(3), 1), |&s, w| added.push((s, w.samples, w.ns)));
        assert_eq!(added, [(1, 1, 7), (2, 1, 70)]);
        added.clear();

        // A part without a stack has nothing to hand over; forgetting hands over the rest.
        let p = repeats.get_mut(&key()).unwrap();
        p.pending[1] = Weight { samples: 1, ns: 80 };
        repeats.forget(10, |&s, w| added.push((s, w.samples, w.ns)));
        assert_eq!(added, [(3, 1, 80)]);
    }
}
