//! Accumulates decoded events while profiling, as raw stacks with their weights: native
//! addresses stay raw (they are symbolized in batches, see [`crate::host::symbols`]); Python
//! frames are named as they arrive, while the process is surely alive to read its code objects.
//! [`super::build`] turns what is accumulated here into the model.
// foldhash, not SipHash: these tables are keyed by every event's stack (thousands a second
// on a busy host), and SipHash over the stacks was a twentieth of the daemon's CPU.
use foldhash::{HashMap, HashSet};

use profiler_common::{PY_FRAME_IS_ENTRY, PY_OWNER_ENTRY_MIN, off_state, py_status, unwind};

use crate::{
    engine::{
        events::{PackedSample, Sample, comm_cow},
        repeats::{Placed, Repeats},
    },
    host::{
        cgroup::{self, CgroupIdentity},
        procinfo,
        symbols::Symbols,
    },
    model::{Frame, Marker, PythonFrame, Wait},
    native::merge::{Grouping, NativeIn, Piece, PyIn, merge},
    offcpu::{classify::Classifier, syscalls},
    python::{
        PyFrame, PythonProcess, PythonRegistry, Resolved,
        event_loop::{LoopState, loop_state},
    },
};

/// Interned frames (many samples share them): the model's frame, and for Python frames the
/// interpreter's view of it (which the event-loop rules read).
#[derive(Default)]
pub(super) struct Frames {
    pub frame: Vec<Frame>,
    pub python: Vec<Option<PyFrame>>,
    index: HashMap<Frame, u32>,
}

impl Frames {
    pub(super) fn intern(&mut self, frame: Frame, python: Option<PyFrame>) -> u32 {
        if let Some(&id) = self.index.get(&frame) {
            return id;
        }
        let id = self.frame.len() as u32;
        self.index.insert(frame.clone(), id);
        self.frame.push(frame);
        self.python.push(python);
        id
    }
}

/// One frame of a raw stack's user part.
#[derive(Hash, PartialEq, Eq, Clone, Copy, Debug)]
pub(super) enum RawFrame {
    /// An interned frame: a Python frame or a marker.
    Interned(u32),
    /// A native address, symbolized when the profile is built; `leaf` when it is the sampled
    /// instruction itself (other addresses are return addresses, looked up at addr - 1).
    Native { addr: u64, leaf: bool },
}

/// A stack's user and kernel parts.
type StackParts = (Box<[RawFrame]>, Box<[u64]>);

/// One distinct stack of a thread, in one wait.
#[derive(Hash, PartialEq, Eq, Clone)]
pub(super) struct RawStack {
    pub pid: u32,
    pub tid: u32,
    /// Interned [`Wait`] of an off-CPU stack; [`ON_CPU`] for on-CPU samples.
    pub wait: u32,
    /// The user stack, root first: Python frames, native frames, or both interleaved (mixed
    /// stacks), with markers.
    pub user: Box<[RawFrame]>,
    pub kernel: Box<[u64]>,
    /// What the wait meant for a coroutine or event loop on the thread.
    pub on_loop: LoopWait,
}

/// An off-CPU stack seen from an event loop's side.
#[derive(Hash, PartialEq, Eq, Clone, Copy, Debug)]
pub(super) struct LoopWait {
    /// Interned frame of the innermost coroutine (or loop callback) on the stack, [`NO_FRAME`]
    /// when none.
    pub coroutine: u32,
    /// The thread runs an event loop and this wait held it up: nothing else on the loop could
    /// run until the call returned.
    pub stalled: bool,
}

pub(super) const NO_FRAME: u32 = u32::MAX;

impl LoopWait {
    pub(super) const NONE: LoopWait = LoopWait { coroutine: NO_FRAME, stalled: false };
}

/// A process's names, parent and cgroup, read when it is first seen (it may be gone when the profile
/// is built).
pub(super) struct ProcessInfo {
    pub comm: String,
    pub cmdline: Option<String>,
    pub ppid: Option<u32>,
    pub cgroup: Option<CgroupIdentity>,
}

/// `RawStack::wait` of on-CPU samples.
pub(super) const ON_CPU: u32 = u32::MAX;

/// How much a stack weighs: samples (or off-CPU intervals) and nanoseconds.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Weight {
    pub samples: u64,
    pub ns: u64,
}

/// Key of a resolved Python frame: (pid, code, fingerprint, instruction, owner).
type PyFrameKey = (u32, u64, u32, u64, u32);

#[derive(Default)]
pub struct Aggregator {
    /// Nanoseconds one on-CPU sample stands for (the sampling period).
    pub(super) period_ns: u64,
    pub(super) stacks: HashMap<RawStack, Weight>,
    pub(super) waits: Vec<Wait>,
    wait_ids: HashMap<Wait, u32>,
    /// (pid, tid) → (latest thread name, on-CPU samples).
    pub(super) threads: HashMap<(u32, u32), (String, u64)>,
    pub(super) processes: HashMap<u32, ProcessInfo>,
    pub(super) frames: Frames,
    /// Resolved Python frames: None for frames not shown.
    py_frames: HashMap<PyFrameKey, Option<u32>>,
    pub samples: u64,
    /// Samples of Python processes, and how many of them carried Python frames.
    pub python_samples: u64,
    pub python_samples_with_frames: u64,
    pub off_cpu_events: u64,
    /// tid → its latest preemption (stacks at the switch-out), until its wait's end arrives.
    preempted: HashMap<u32, Sample>,
    /// Threads some of whose off-CPU stacks were not taken (over the stack rate).
    pub(super) sampled_out: HashSet<(u32, u32)>,
    /// Mixed stacks keep the interpreter's own native frames (`--interpreter-frames`).
    pub interpreter_frames: bool,
    /// Processes whose native walk hit an address in no mapping it knew: their mappings are
    /// to be read again (a library loaded since).
    pub unmapped_pids: HashSet<u32>,
    /// While Some: the stacks added, to be taken back by [`Aggregator::retract_provisional`]
    /// (waits still going on, weighed up to a snapshot that does not end the window).
    /// With the event count when they began.
    provisional: Option<(Vec<(RawStack, u64)>, u64)>,
    /// Off-CPU events worked out this window, for their repeats.
    repeats: Repeats<RawStack>,
}

/// Where an event's stack is accumulated: its wait, weight and what it meant for a loop.
struct Placement {
    wait: u32,
    ns: u64,
    on_cpu: bool,
    on_loop: LoopWait,
}

impl Aggregator {
    pub fn new(frequency_hz: u32) -> Self {
        Self { period_ns: 1_000_000_000 / frequency_hz.max(1) as u64, ..Default::default() }
    }

    /// An on-CPU sample: one sampling period on its stack.
    pub fn add(&mut self, s: Sample, symbols: &mut Symbols, python: &mut PythonRegistry) {
        self.samples += 1;
        let ids = self.python_frames(&s, python);
        let at = Placement { wait: ON_CPU, ns: self.period_ns, on_cpu: true, on_loop: LoopWait::NONE };
        self.add_stack(s, ids, &[at], symbols, python, false);
    }

    /// A long blocking syscall from the ring buffer: its blocked time goes to the wait's
    /// category, its run-queue time (after the wakeup) to `runqueue`, both on the stack it
    /// blocked in. A repeat of an event worked out before in this window is found from the
    /// record's bytes and its weights go straight to the stacks that one was added to, without
    /// decoding it (see engine::repeats).
    pub fn add_off_cpu_record(
        &mut self,
        rec: &PackedSample<'_>,
        symbols: &mut Symbols,
        python: &mut PythonRegistry,
        classifier: &mut Classifier,
    ) {
        let h = &rec.head;
        let repeatable = h.user_end == unwind::end::FRAME_POINTERS
            && Classifier::is_stable(h.off.syscall_nr, h.off.arg0)
            && python.version(h.pid).is_some();
        if repeatable && self.add_repeat(rec, classifier.generation()) {
            self.off_cpu_events += 1;
            classifier.skip_event(h.tid, h.off.syscall_nr, h.off.arg0);
            return;
        }
        self.work_out_off_cpu(rec.sample(), symbols, python, classifier, repeatable.then_some(rec));
    }

    /// A wait's stacks not sent as a record (a wait still going on at a snapshot, see
    /// [`super::blocked`]): worked out in full, as [`Self::add_off_cpu_record`] works out an
    /// event it has not seen.
    pub fn add_off_cpu(
        &mut self,
        s: Sample,
        symbols: &mut Symbols,
        python: &mut PythonRegistry,
        classifier: &mut Classifier,
    ) {
        self.work_out_off_cpu(s, symbols, python, classifier, None);
    }

    /// Resolves, classifies and adds an off-CPU event; remembered for its repeats under
    /// `record`'s bytes when given.
    fn work_out_off_cpu(
        &mut self,
        s: Sample,
        symbols: &mut Symbols,
        python: &mut PythonRegistry,
        classifier: &mut Classifier,
        record: Option<&PackedSample<'_>>,
    ) {
        self.off_cpu_events += 1;
        let ids = self.python_frames(&s, python);
        let polls = s.off.syscall_nr >= 0 && syscalls::class(s.off.syscall_nr as u64) == syscalls::SyscallClass::Poll;
        let state = {
            let frames: Vec<Option<&PyFrame>> =
                ids.iter().map(|&id| self.frames.python[id as usize].as_ref()).collect();
            loop_state(&frames, polls)
        };
        let at = |i: Option<usize>| i.map_or(NO_FRAME, |i| ids[i]);
        let on_loop = match state {
            LoopState::Idle if s.off.state == off_state::SLEEPING => {
                // The loop waiting for work: idle, for this interval and, through the
                // classifier, for every short one on the same poll that carries no stack.
                classifier.mark_loop_idle(s.pid, s.off.syscall_nr, s.off.arg0);
                LoopWait::NONE
            }
            LoopState::Idle | LoopState::NotLoop { coroutine: None } => LoopWait::NONE,
            LoopState::NotLoop { coroutine: Some(c) } => LoopWait { coroutine: ids[c], stalled: false },
            LoopState::Stalled { culprit } => LoopWait { coroutine: at(culprit), stalled: true },
        };
        let wait = classifier.classify_event(s.pid, s.tid, s.off.state, s.off.syscall_nr, s.off.arg0);
        let (blocked_ns, runq_ns) = (s.off.blocked_ns, s.off.runq_ns);
        // Both parts on the same stack, built once.
        let runq_wait = (runq_ns > 0).then(|| self.intern_wait(Wait::runqueue_after(&wait)));
        let blocked_wait = (blocked_ns > 0).then(|| self.intern_wait(wait));
        let places: Vec<Placement> = [(runq_wait, runq_ns), (blocked_wait, blocked_ns)]
            .into_iter()
            .filter_map(|(id, ns)| Some(Placement { wait: id?, ns, on_cpu: false, on_loop }))
            .collect();
        if places.is_empty() {
            return;
        }
        let (pid, tid) = (s.pid, s.tid);
        let stacks = self.add_stack(s, ids, &places, symbols, python, record.is_some());
        if let (Some(record), Some((user, kernel))) = (record, stacks) {
            let raw = |wait: u32| RawStack { pid, tid, wait, user: user.clone(), kernel: kernel.clone(), on_loop };
            let placed = Placed::new(runq_wait.map(raw), blocked_wait.map(raw), classifier.generation());
            let stacks = &mut self.stacks;
            self.repeats.remember(record, placed, |stack, w| add_weight(stacks, stack, w));
        }
    }

    /// Adds a repeated event's weights to the stacks its first occurrence went to; false when
    /// it must be worked out again (not seen, the classifier changed since, or a part that was
    /// zero then is not now).
    fn add_repeat(&mut self, rec: &PackedSample<'_>, generation: u64) -> bool {
        let (runq_ns, blocked_ns) = (rec.head.off.runq_ns, rec.head.off.blocked_ns);
        let Some(placed) = self.repeats.get_mut(rec) else { return false };
        if placed.generation != generation
            || (runq_ns > 0 && placed.runq.is_none())
            || (blocked_ns > 0 && placed.blocked.is_none())
        {
            return false;
        }
        for (i, (stack, ns)) in [(&placed.runq, runq_ns), (&placed.blocked, blocked_ns)].into_iter().enumerate() {
            let Some(stack) = stack.as_ref().filter(|_| ns > 0) else { continue };
            match &mut self.provisional {
                // Added while a snapshot's stacks are provisional, to be taken back with them:
                // on the stack itself. (The session drains the ring before a snapshot and the
                // waits in progress are worked out in full, so no repeat comes now; kept so
                // that anything added meanwhile is taken back alike.)
                Some((p, _)) => {
                    p.push((stack.clone(), ns));
                    add_weight(&mut self.stacks, stack, Weight { samples: 1, ns });
                }
                // Summed on the entry until the stacks are needed (see engine::repeats).
                None => {
                    placed.pending[i].samples += 1;
                    placed.pending[i].ns += ns;
                }
            }
        }
        true
    }

    /// Adds the repeats' weights summed since the last call to their stacks: before anything
    /// reads the stacks whole.
    fn flush_repeats(&mut self) {
        let stacks = &mut self.stacks;
        self.repeats.take_pending(|stack, w| add_weight(stacks, stack, w));
    }

    /// A thread was preempted outside a syscall: keep its stacks until we learn how long it
    /// waited for a CPU (only waits of at least the threshold are reported).
    pub fn preempted(&mut self, s: Sample) {
        self.preempted.insert(s.tid, s);
    }

    /// The run-queue wait after a preemption: weighs the stacks taken when it was preempted.
    pub fn preempt_end(
        &mut self,
        tid: u32,
        since_ns: u64,
        runq_ns: u64,
        symbols: &mut Symbols,
        python: &mut PythonRegistry,
    ) {
        let Some(s) = self.preempted.remove(&tid) else { return };
        if s.time_ns != since_ns {
            return;
        }
        self.off_cpu_events += 1;
        let id = self.intern_wait(Wait::preempted());
        let ids = self.python_frames(&s, python);
        let at = Placement { wait: id, ns: runq_ns, on_cpu: false, on_loop: LoopWait::NONE };
        self.add_stack(s, ids, &[at], symbols, python, false);
    }

    fn intern_wait(&mut self, wait: Wait) -> u32 {
        if let Some(&id) = self.wait_ids.get(&wait) {
            return id;
        }
        let id = self.waits.len() as u32;
        self.wait_ids.insert(wait.clone(), id);
        self.waits.push(wait);
        id
    }

    /// Adds the sample's stack once per placement. The process was observed already
    /// ([`Self::python_frames`] runs first on every path).
    /// With `keep`, returns a copy of the stack's user and kernel parts.
    fn add_stack(
        &mut self,
        s: Sample,
        python_ids: Vec<u32>,
        places: &[Placement],
        symbols: &mut Symbols,
        python: &mut PythonRegistry,
        keep: bool,
    ) -> Option<StackParts> {
        // Borrowed unless the name is not UTF-8: most events' thread name is unchanged, and
        // allocating it per event showed in the daemon's profile.
        let thread_name = comm_cow(&s.comm);
        self.processes.entry(s.pid).or_insert_with(|| {
            // Read eagerly: the process may be gone by the time the profile is written.
            let stat = procinfo::stat(s.pid);
            ProcessInfo {
                ppid: stat.as_ref().map(|s| s.ppid),
                comm: stat.map(|s| s.comm).unwrap_or_else(|| thread_name.to_string()),
                cmdline: procinfo::cmdline(s.pid),
                cgroup: cgroup::identity(s.pid),
            }
        });
        let t = self.threads.entry((s.pid, s.tid)).or_insert_with(|| (String::new(), 0));
        if t.0 != thread_name {
            t.0 = thread_name.into_owned();
        }
        let on_cpu = places.iter().filter(|p| p.on_cpu).count() as u64;
        t.1 += on_cpu;

        if s.user_end == unwind::end::UNMAPPED {
            self.unmapped_pids.insert(s.pid);
        }
        let walked = s.user_end != unwind::end::FRAME_POINTERS;
        let mut user: Vec<RawFrame> = Vec::new();
        let mut native_only = true;
        if let Some(proc) = python.get_mut(s.pid) {
            self.python_samples += on_cpu;
            if !python_ids.is_empty() {
                self.python_samples_with_frames += on_cpu;
                native_only = false;
                if walked {
                    user = self.mixed(&s, proc);
                } else {
                    // Python frames replace the native stack, which frame pointers cannot
                    // unwind through the interpreter; the native leaf stays when it is outside
                    // the interpreter (a C extension, libc, a syscall wrapper).
                    user.extend(python_ids.iter().map(|&id| RawFrame::Interned(id)));
                    if let Some(&leaf) = s.user_stack.first()
                        && !proc.in_interpreter(leaf)
                    {
                        user.push(RawFrame::Native { addr: leaf, leaf: true });
                    }
                }
            }
        }
        if native_only {
            if walked && let Some(m) = stop_marker(s.user_end) {
                user.push(RawFrame::Interned(self.frames.intern(Frame::Marker(m), None)));
            }
            let n = s.user_stack.len();
            user.extend(
                s.user_stack.iter().rev().enumerate().map(|(i, &addr)| RawFrame::Native { addr, leaf: i + 1 == n }),
            );
        }
        for f in &user {
            if let RawFrame::Native { addr, leaf } = *f {
                symbols.note_user(s.pid, addr, leaf);
            }
        }
        symbols.note_kernel_stack(&s.kernel_stack);
        let (user, kernel) = (user.into_boxed_slice(), s.kernel_stack.into_boxed_slice());
        let kept = keep.then(|| (user.clone(), kernel.clone()));
        if let Some((last, rest)) = places.split_last() {
            for at in rest {
                self.weigh(s.pid, s.tid, at, user.clone(), kernel.clone());
            }
            self.weigh(s.pid, s.tid, last, user, kernel);
        }
        kept
    }

    /// Adds one placement's weight to a stack.
    fn weigh(&mut self, pid: u32, tid: u32, at: &Placement, user: Box<[RawFrame]>, kernel: Box<[u64]>) {
        let key = RawStack { pid, tid, wait: at.wait, user, kernel, on_loop: at.on_loop };
        if let Some((p, _)) = &mut self.provisional {
            p.push((key.clone(), at.ns));
        }
        let w = self.stacks.entry(key).or_default();
        w.samples += 1;
        w.ns += at.ns;
    }

    /// Stacks added from now on are provisional, until [`Aggregator::retract_provisional`].
    /// The repeats' weights are added to the stacks first: the snapshot reads them whole.
    pub fn begin_provisional(&mut self) {
        self.flush_repeats();
        self.provisional = Some((Vec::new(), self.off_cpu_events));
    }

    /// Takes back the stacks added since [`Aggregator::begin_provisional`].
    pub fn retract_provisional(&mut self) {
        let Some((stacks, events)) = self.provisional.take() else { return };
        self.off_cpu_events = events;
        for (key, ns) in stacks {
            if let Some(w) = self.stacks.get_mut(&key) {
                w.samples = w.samples.saturating_sub(1);
                w.ns = w.ns.saturating_sub(ns);
                if w.samples == 0 && w.ns == 0 {
                    self.stacks.remove(&key);
                }
            }
        }
    }

    /// Notes the threads whose off-CPU stacks were rate-limited by the kernel, from its
    /// per-thread times.
    pub fn note_sampled_out(&mut self, times: &[(u32, profiler_common::ThreadTimes)]) {
        for (tid, t) in times {
            if t.stacks_sampled_out > 0 {
                self.sampled_out.insert((t.pid, *tid));
            }
        }
    }

    /// Thread `tid` of process `pid` is named `name` now (a rename, or its name at exit): a
    /// thread seen in this window shows its last name, even if not sampled after it.
    pub fn thread_named(&mut self, pid: u32, tid: u32, name: &str) {
        if let Some(t) = self.threads.get_mut(&(pid, tid))
            && t.0 != name
        {
            t.0 = name.to_string();
        }
    }

    /// Code objects found replaced at their addresses (see
    /// [`crate::python::PythonRegistry::recheck_codes`]): frames named from them are resolved
    /// again when next met.
    pub fn forget_codes(&mut self, codes: &[(u32, u64)]) {
        if codes.is_empty() {
            return;
        }
        let codes: std::collections::HashSet<(u32, u64)> = codes.iter().copied().collect();
        self.py_frames.retain(|&(pid, code, ..), _| !codes.contains(&(pid, code)));
    }

    /// Process `pid` called exec: read its name and command line again; frames resolved for
    /// its old program no longer apply.
    pub fn exec(&mut self, pid: u32) {
        if let Some(info) = self.processes.get_mut(&pid) {
            info.comm = procinfo::comm(pid).unwrap_or_else(|| info.comm.clone());
            info.cmdline = procinfo::cmdline(pid).or_else(|| info.cmdline.take());
        }
        self.py_frames.retain(|(p, ..), _| *p != pid);
        let stacks = &mut self.stacks;
        self.repeats.forget(pid, |stack, w| add_weight(stacks, stack, w));
    }

    /// A mixed stack, root first: the native walk with each eval-loop frame replaced by the
    /// Python frames it ran (see [`crate::native::merge`]), the interpreter's own frames left
    /// out unless asked for, and a marker where the walk stopped. Python frames the walk did
    /// not reach go root-ward of the marker. The sample's Python frames are resolved already
    /// ([`Self::python_frames`] ran first).
    fn mixed(&mut self, s: &Sample, proc: &mut PythonProcess) -> Vec<RawFrame> {
        let grouping = match proc.version().minor {
            ..=10 => Grouping::PerFrame,
            11 => Grouping::IsEntry,
            _ => Grouping::EntryFrame,
        };
        let py: Vec<PyIn> = s
            .py_frames
            .iter()
            .map(|r| PyIn {
                entry: r.owner & PY_FRAME_IS_ENTRY != 0,
                anchor: (grouping == Grouping::EntryFrame && (r.owner & 0xff) >= PY_OWNER_ENTRY_MIN).then_some(r.instr),
            })
            .collect();
        let lookup = |i: usize, pc: u64| if i == 0 { pc } else { pc.wrapping_sub(1) };
        let mut sp = s.user_sp;
        let native: Vec<NativeIn> = s
            .user_stack
            .iter()
            .enumerate()
            .map(|(i, &pc)| {
                let cfa = s.user_cfa.get(i).copied().unwrap_or(0);
                let n = NativeIn { sp, cfa, eval: proc.in_eval(lookup(i, pc)) };
                sp = cfa;
                n
            })
            .collect();
        let merged = merge(&native, s.user_sp, s.user_end == unwind::end::CLEAN, &py, grouping);
        let id_of = |rec: &profiler_common::PyFrameRecord| {
            self.py_frames.get(&(s.pid, rec.code, rec.fingerprint, rec.instr, rec.owner)).copied().flatten()
        };
        // Leaf first.
        let mut out: Vec<RawFrame> = Vec::with_capacity(merged.pieces.len() + 2);
        // Native frames root-ward of the outermost Python frame are the process's or thread's
        // start-up (`_start`, `Py_BytesMain`, `start_thread`...): interpreter internals too.
        let outermost_python = merged.pieces.iter().rposition(|p| matches!(p, Piece::Python(_)));
        for (k, piece) in merged.pieces.iter().enumerate() {
            match *piece {
                Piece::Python(j) => out.extend(id_of(&s.py_frames[j]).map(RawFrame::Interned)),
                Piece::Native(i) => {
                    let pc = s.user_stack[i];
                    let internal = proc.in_interpreter(lookup(i, pc)) || outermost_python.is_some_and(|o| k > o);
                    if self.interpreter_frames || !internal {
                        out.push(RawFrame::Native { addr: pc, leaf: i == 0 });
                    }
                }
            }
        }
        if let Some(m) = stop_marker(s.user_end) {
            out.push(RawFrame::Interned(self.frames.intern(Frame::Marker(m), None)));
        }
        out.extend(merged.unplaced.iter().filter_map(|&j| id_of(&s.py_frames[j])).map(RawFrame::Interned));
        if s.py_status & py_status::TRUNCATED != 0 {
            out.push(RawFrame::Interned(self.frames.intern(Frame::Marker(Marker::Truncated), None)));
        }
        out.reverse();
        out
    }

    /// The sample's Python frames, interned, root first.
    fn python_frames(&mut self, s: &Sample, python: &mut PythonRegistry) -> Vec<u32> {
        python.observe(s.pid);
        if s.py_frames.is_empty() {
            return Vec::new();
        }
        let Some(proc) = python.get_mut(s.pid) else { return Vec::new() };
        let mut ids = Vec::with_capacity(s.py_frames.len() + 1);
        if s.py_status & py_status::TRUNCATED != 0 {
            ids.push(self.frames.intern(Frame::Marker(Marker::Truncated), None));
        }
        for rec in s.py_frames.iter().rev() {
            let key = (s.pid, rec.code, rec.fingerprint, rec.instr, rec.owner);
            let id = match self.py_frames.get(&key) {
                Some(id) => *id,
                None => {
                    let id = match proc.resolve(rec) {
                        Resolved::Frame(f) => Some(self.frames.intern(Frame::Python(model_frame(&f)), Some(f))),
                        Resolved::Unknown => Some(self.frames.intern(Frame::Marker(Marker::UnknownPython), None)),
                        Resolved::Hidden => None,
                    };
                    self.py_frames.insert(key, id);
                    id
                }
            };
            ids.extend(id);
        }
        ids
    }
}

/// The marker a native walk that ended this way leaves at its root, if any.
fn stop_marker(end: u32) -> Option<Marker> {
    match end {
        unwind::end::NO_INFO | unwind::end::NO_REGS => Some(Marker::UnwindNoInfo),
        unwind::end::READ_FAILED => Some(Marker::UnwindUnreadable),
        unwind::end::UNMAPPED => Some(Marker::UnwindUnmapped),
        unwind::end::BAD_FRAME => Some(Marker::UnwindBadFrame),
        unwind::end::TRUNCATED => Some(Marker::UnwindTruncated),
        _ => None,
    }
}

/// The model's view of a Python frame the interpreter named.
fn model_frame(f: &PyFrame) -> PythonFrame {
    PythonFrame { function: f.function.clone(), file: f.file.clone(), line: f.line, first_line: f.first_line }
}

/// Adds `w` to `stack`'s weight.
fn add_weight(stacks: &mut HashMap<RawStack, Weight>, stack: &RawStack, w: Weight) {
    match stacks.get_mut(stack) {
        Some(sum) => {
            sum.samples += w.samples;
            sum.ns += w.ns;
        }
        None => {
            stacks.insert(stack.clone(), w);
        }
    }
}

#[cfg(test)]
impl Aggregator {
    /// Accumulates a stack as the event paths would, for the builder's tests: `python` are
    /// Python frames (root first) already named.
    #[allow(clippy::too_many_arguments, reason = "a test helper spelling out one raw stack")]
    pub(super) fn add_raw(
        &mut self,
        pid: u32,
        tid: u32,
        wait: Option<Wait>,
        python: &[Frame],
        user: &[u64],
        kernel: &[u64],
        weight: (u64, u64),
    ) {
        let ids: Vec<u32> = python.iter().map(|f| self.frames.intern(f.clone(), None)).collect();
        let wait = match wait {
            Some(w) => self.intern_wait(w),
            None => ON_CPU,
        };
        self.processes.entry(pid).or_insert_with(|| ProcessInfo {
            comm: format!("proc{pid}"),
            cmdline: None,
            ppid: None,
            cgroup: None,
        });
        let t = self.threads.entry((pid, tid)).or_insert_with(|| (format!("thread{tid}"), 0));
        if wait == ON_CPU {
            t.1 += weight.0;
            self.samples += weight.0;
        }
        let n = user.len();
        let frames: Vec<RawFrame> = ids
            .into_iter()
            .map(RawFrame::Interned)
            .chain(user.iter().rev().enumerate().map(|(i, &addr)| RawFrame::Native { addr, leaf: i + 1 == n }))
            .collect();
        let key = RawStack { pid, tid, wait, user: frames.into(), kernel: kernel.into(), on_loop: LoopWait::NONE };
        let w = self.stacks.entry(key).or_default();
        w.samples += weight.0;
        w.ns += weight.1;
    }
}
