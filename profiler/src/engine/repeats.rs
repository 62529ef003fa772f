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
//!
//! A repeat is looked up from its record's bytes, before it is decoded ([`key_of`]): decoding
//! it into a [`super::events::Sample`] (four vectors allocated and filled) and building a key
//! of typed fields from it, to drop both on a hit, was most of what a repeat cost.
use std::{mem::offset_of, ops::Range};

use foldhash::HashMap;
use profiler_common::{OffCpuInfo, sample_record::SampleHead};

use super::{aggregate::Weight, events::PackedSample};

/// Distinct events remembered per window at most; past it, new ones are not remembered (a
/// window rarely has more distinct off-CPU stacks than this).
const MAX_ENTRIES: usize = 65_536;

/// The head's bytes that make two off-CPU events the same but for their times: the thread
/// (pid, then tid), the lengths of the stacks and `py_status` and the thread's name, and the
/// call (syscall, first argument, state). The lengths are there because the body's parts are
/// packed one after the other: without them, kernel `[a, b]` and user `[c]` would read as
/// kernel `[a]` and user `[b, c]`. Left out: the CPU, the times, the switch count, and the
/// leaf's stack pointer and how the walk ended (only frame-pointer walks are repeats, whose
/// stacks do not depend on the stack pointer).
const HEAD_KEY: [Range<usize>; 3] = [
    offset_of!(SampleHead, pid)..offset_of!(SampleHead, tid) + 4,
    offset_of!(SampleHead, kernel_stack_len)..offset_of!(SampleHead, off),
    offset_of!(SampleHead, off) + offset_of!(OffCpuInfo, syscall_nr)
        ..offset_of!(SampleHead, off) + offset_of!(OffCpuInfo, state) + 4,
];

const _: () = {
    // Each range holds exactly the fields named above, in the head's order.
    assert!(offset_of!(SampleHead, pid) == 8 && offset_of!(SampleHead, tid) == 12);
    assert!(offset_of!(SampleHead, user_stack_len) == offset_of!(SampleHead, kernel_stack_len) + 4);
    assert!(offset_of!(SampleHead, py_frames_len) == offset_of!(SampleHead, user_stack_len) + 4);
    assert!(offset_of!(SampleHead, py_status) == offset_of!(SampleHead, py_frames_len) + 4);
    assert!(offset_of!(SampleHead, comm) == offset_of!(SampleHead, py_status) + 4);
    assert!(offset_of!(SampleHead, off) == offset_of!(SampleHead, comm) + profiler_common::TASK_COMM_LEN);
    assert!(offset_of!(OffCpuInfo, arg0) == offset_of!(OffCpuInfo, syscall_nr) + 8);
    assert!(offset_of!(OffCpuInfo, state) == offset_of!(OffCpuInfo, arg0) + 8);
};

/// Copies what identifies `rec`'s event into `key` (emptied first): [`HEAD_KEY`], then the
/// record's body, which is the filled part of each stack and nothing else (the record was cut
/// at its layout's end when it was checked). Starts with the pid ([`pid_of`]).
pub fn key_of(rec: &PackedSample<'_>, key: &mut Vec<u8>) {
    key.clear();
    for range in HEAD_KEY {
        key.extend_from_slice(&rec.bytes[range]);
    }
    key.extend_from_slice(&rec.bytes[size_of::<SampleHead>()..]);
}

/// The pid a key of [`key_of`] was made for.
fn pid_of(key: &[u8]) -> u32 {
    u32::from_ne_bytes(key[..4].try_into().expect("a key starts with the pid"))
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
    /// Keyed by [`key_of`]'s bytes.
    seen: HashMap<Box<[u8]>, Placed<S>>,
    /// The key of the record looked up last: one buffer, reused for every record.
    key: Vec<u8>,
}

impl<S> Default for Repeats<S> {
    fn default() -> Self {
        Self { seen: HashMap::default(), key: Vec::new() }
    }
}

impl<S> Repeats<S> {
    /// Where the event `rec` repeats went, if it was remembered.
    pub(super) fn get_mut(&mut self, rec: &PackedSample<'_>) -> Option<&mut Placed<S>> {
        key_of(rec, &mut self.key);
        self.seen.get_mut(self.key.as_slice())
    }

    /// Remembers where the event `rec` went; `add` takes the weights of repeats the entry it
    /// replaces still held.
    pub(super) fn remember(&mut self, rec: &PackedSample<'_>, placed: Placed<S>, mut add: impl FnMut(&S, Weight)) {
        key_of(rec, &mut self.key);
        if let Some(entry) = self.seen.get_mut(self.key.as_slice()) {
            let mut old = std::mem::replace(entry, placed);
            old.drain_pending().for_each(|(s, w)| add(s, w));
        } else if self.seen.len() < MAX_ENTRIES {
            self.seen.insert(self.key.as_slice().into(), placed);
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
        self.seen.retain(|key, placed| {
            let of_pid = pid_of(key) == pid;
            if of_pid {
                placed.drain_pending().for_each(|(s, w)| add(s, w));
            }
            !of_pid
        });
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::{
        EventKind, MAX_NATIVE_FRAMES, MAX_PY_FRAMES, PyFrameRecord, SampleEvent, TASK_COMM_LEN,
        sample_record::HEAD_BYTES, unwind,
    };

    use super::*;
    use crate::engine::events::{self, DecodeError, Event, Sample, pack};

    const FRAME: PyFrameRecord = PyFrameRecord { code: 0x2000, instr: 0x2010, fingerprint: 7, owner: 3 };

    /// An off-CPU event as the kernel fills it in: a frame-pointer user stack, one Python frame.
    fn event(blocked_ns: u64, kernel: &[u64]) -> SampleEvent {
        let user = [0x1000, 0x1008];
        let mut ev = SampleEvent {
            kind: EventKind::OffCpu as u32,
            cpu: 0,
            pid: 10,
            tid: 11,
            time_ns: blocked_ns * 3,
            kernel_stack_len: kernel.len() as u32,
            user_stack_len: user.len() as u32,
            py_frames_len: 1,
            py_status: 0,
            comm: [b'w'; TASK_COMM_LEN],
            off: OffCpuInfo { blocked_ns, runq_ns: 5, syscall_nr: 230, arg0: 0, state: 1, switches: 1 },
            kernel_stack: [0; MAX_NATIVE_FRAMES],
            user_stack: [0; MAX_NATIVE_FRAMES],
            py_frames: [PyFrameRecord::default(); MAX_PY_FRAMES],
            user_sp: 0x7ff0,
            user_end: unwind::end::FRAME_POINTERS,
            _pad: 0,
            user_cfa: [0; MAX_NATIVE_FRAMES],
        };
        ev.kernel_stack[..kernel.len()].copy_from_slice(kernel);
        ev.user_stack[..user.len()].copy_from_slice(&user);
        ev.py_frames[0] = FRAME;
        ev
    }

    fn checked(raw: &[u8]) -> PackedSample<'_> {
        match events::decode(raw) {
            Ok(Event::OffCpu(rec)) => rec,
            other => panic!("not an off-CPU record: {other:?}"),
        }
    }

    fn key(ev: &SampleEvent) -> Vec<u8> {
        let mut key = Vec::new();
        key_of(&checked(&pack(ev)), &mut key);
        key
    }

    /// What the decoded path keyed a repeat by: the decoded sample's fields but its times, its
    /// CPU, switch count, stack pointer, walk end and CFAs.
    fn decoded_key(ev: &SampleEvent) -> impl Eq + std::fmt::Debug + use<> {
        let s: Sample = checked(&pack(ev)).sample();
        let off = (s.off.state, s.off.syscall_nr, s.off.arg0);
        (s.pid, s.tid, s.comm, off, s.py_status, s.kernel_stack, s.user_stack, s.py_frames)
    }

    /// The event changed in one field each: (what, the change, whether it is the same event).
    fn variants() -> Vec<(&'static str, SampleEvent, bool)> {
        let v = |what, same, change: fn(&mut SampleEvent)| {
            let mut ev = event(50_000_000, &[1, 2, 3]);
            change(&mut ev);
            (what, ev, same)
        };
        vec![
            v("unchanged", true, |_| {}),
            v("blocked time", true, |e| e.off.blocked_ns += 1),
            v("run-queue time", true, |e| e.off.runq_ns += 1),
            v("time", true, |e| e.time_ns += 1),
            v("cpu", true, |e| e.cpu = 1),
            v("switches", true, |e| e.off.switches = 2),
            v("stack pointer", true, |e| e.user_sp += 8),
            v("pid", false, |e| e.pid += 1),
            v("tid", false, |e| e.tid += 1),
            v("comm", false, |e| e.comm[15] = b'x'),
            v("state", false, |e| e.off.state = 2),
            v("syscall", false, |e| e.off.syscall_nr = 7),
            v("arg0", false, |e| e.off.arg0 = 1),
            v("py_status", false, |e| e.py_status = 1),
            v("kernel address", false, |e| e.kernel_stack[2] = 4),
            v("kernel frame dropped", false, |e| e.kernel_stack_len = 2),
            v("user address", false, |e| e.user_stack[1] += 8),
            // The same bytes in the body, split differently between the stacks.
            v("kernel frame moved to the user stack", false, |e| {
                e.kernel_stack_len = 2;
                e.user_stack[..3].copy_from_slice(&[3, 0x1000, 0x1008]);
                e.user_stack_len = 3;
            }),
            v("frame code", false, |e| e.py_frames[0].code += 1),
            v("frame instruction", false, |e| e.py_frames[0].instr += 2),
            v("frame fingerprint", false, |e| e.py_frames[0].fingerprint += 1),
            v("frame owner", false, |e| e.py_frames[0].owner += 1),
            v("frame added", false, |e| {
                e.py_frames[1] = FRAME;
                e.py_frames_len = 2
            }),
        ]
    }

    #[test]
    fn record_keys_match_exactly_when_the_decoded_events_are_the_same_but_for_their_times() {
        let all = variants();
        let base = &all[0].1;
        for (what, ev, same) in &all {
            assert_eq!(decoded_key(ev) == decoded_key(base), *same, "{what}: the decoded key");
            assert_eq!(key(ev) == key(base), *same, "{what}: the record's key");
        }
        // Every pair, not only against the first: bytes equal exactly when the decoded keys are.
        for (a, ev_a, _) in &all {
            for (b, ev_b, _) in &all {
                assert_eq!(key(ev_a) == key(ev_b), decoded_key(ev_a) == decoded_key(ev_b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn a_repeat_finds_where_its_event_went_and_any_other_event_misses() {
        let mut repeats = Repeats::<u32>::default();
        let first = pack(&event(50_000_000, &[1, 2, 3]));
        repeats.remember(&checked(&first), Placed::new(Some(1), Some(2), 0), |_, _| panic!("nothing replaced"));
        for (what, ev, same) in variants() {
            let raw = pack(&ev);
            let found = repeats.get_mut(&checked(&raw)).map(|p| (p.runq, p.blocked));
            assert_eq!(found, same.then_some((Some(1), Some(2))), "{what}");
        }
        // A record longer than its parts (its tail is not read) is the same event.
        let mut longer = first.clone();
        longer.extend_from_slice(&[0xff; 16]);
        assert!(repeats.get_mut(&checked(&longer)).is_some());

        repeats.forget(11, |_, _| {});
        assert!(repeats.get_mut(&checked(&first)).is_some(), "forgets by pid, not tid");
        repeats.forget(10, |_, _| {});
        assert!(repeats.get_mut(&checked(&first)).is_none(), "exec forgets the process");
    }

    #[test]
    fn a_record_shorter_than_its_lengths_say_or_placing_a_part_past_its_array_is_refused() {
        let raw = pack(&event(1, &[1, 2, 3]));
        for cut in [0, 3, HEAD_BYTES - 1, HEAD_BYTES, raw.len() - 24, raw.len() - 1] {
            let len = cut;
            assert_eq!(events::decode(&raw[..cut]), Err(DecodeError::Short { len }), "cut at {cut}");
        }
        for (field, max) in [(24, MAX_NATIVE_FRAMES), (28, MAX_NATIVE_FRAMES), (32, MAX_PY_FRAMES)] {
            let mut bad = raw.clone();
            bad.resize(size_of::<SampleEvent>() * 2, 0);
            bad[field..field + 4].copy_from_slice(&(max as u32 + 1).to_ne_bytes());
            assert_eq!(events::decode(&bad), Err(DecodeError::BadLength { kind: EventKind::OffCpu as u32 }));
        }
    }

    #[test]
    fn pending_weights_are_handed_over_once_whenever_an_entry_is_taken_replaced_or_forgotten() {
        let raw = pack(&event(1, &[1, 2, 3]));
        let rec = checked(&raw);
        let mut repeats = Repeats::<u32>::default();
        let mut added = Vec::new();
        let pend = |repeats: &mut Repeats<u32>, runq: u64, blocked: u64| {
            let p = repeats.get_mut(&rec).unwrap();
            p.pending[0].samples += 1;
            p.pending[0].ns += runq;
            p.pending[1].samples += 1;
            p.pending[1].ns += blocked;
        };
        repeats.remember(&rec, Placed::new(Some(1), Some(2), 0), |_, _| panic!("nothing replaced"));
        pend(&mut repeats, 5, 50);
        pend(&mut repeats, 6, 60);
        repeats.take_pending(|&s, w| added.push((s, w.samples, w.ns)));
        assert_eq!(added, [(1, 2, 11), (2, 2, 110)]);
        added.clear();
        repeats.take_pending(|&s, w| added.push((s, w.samples, w.ns)));
        assert!(added.is_empty(), "taken once");

        // Replaced (worked out again): the old entry's weights go to its own stacks.
        pend(&mut repeats, 7, 70);
        repeats.remember(&rec, Placed::new(None, Some(3), 1), |&s, w| added.push((s, w.samples, w.ns)));
        assert_eq!(added, [(1, 1, 7), (2, 1, 70)]);
        added.clear();

        // A part without a stack has nothing to hand over; forgetting hands over the rest.
        let p = repeats.get_mut(&rec).unwrap();
        p.pending[1] = Weight { samples: 1, ns: 80 };
        repeats.forget(10, |&s, w| added.push((s, w.samples, w.ns)));
        assert_eq!(added, [(3, 1, 80)]);
    }
}
