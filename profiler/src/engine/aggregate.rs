//! Accumulates decoded samples while profiling; turns them into a symbolized [`Profile`] at
//! the end. Native addresses are kept raw and symbolized in batches; Python frames are named
//! as they arrive (their code objects are read while the process is surely alive).
use std::collections::{BTreeMap, HashMap};

use profiler_common::py_status;

use crate::{
    engine::events::{Sample, comm_str},
    host::{procinfo, symbols::Symbols},
    model::{
        CATEGORIES, Category, ProcessProfile, PythonFrameProfile, StackProfile, ThreadProfile, Wait,
        analysis::{function_table, loop_stalls},
    },
    offcpu::classify::Classifier,
    python::{PyFrame, PythonRegistry, Resolved},
};

/// Shown as the root of a Python stack deeper than the walk bound.
pub const TRUNCATED: &str = "[truncated]";
/// The only frame of an on-CPU sample with no user stack (add `--kernel` to see where).
pub const NO_USER_STACK: &str = "[no user stack]";
/// A Python frame whose code object could not be read.
pub const UNKNOWN_PY: &str = "[unknown python frame]";

/// Interned frame texts (many samples share frames).
#[derive(Default)]
struct Frames {
    text: Vec<String>,
    python: Vec<Option<PyFrame>>,
    index: HashMap<String, u32>,
}

impl Frames {
    fn intern(&mut self, text: String, python: Option<PyFrame>) -> u32 {
        if let Some(&id) = self.index.get(&text) {
            return id;
        }
        let id = self.text.len() as u32;
        self.index.insert(text.clone(), id);
        self.text.push(text);
        self.python.push(python);
        id
    }
}

#[derive(Hash, PartialEq, Eq)]
struct RawStack {
    pid: u32,
    tid: u32,
    /// Interned [`Wait`] of an off-CPU stack; [`ON_CPU`] for on-CPU samples.
    wait: u32,
    /// Interned Python frames, root first (empty for native-only stacks).
    python: Box<[u32]>,
    /// Native user addresses, leaf first. With Python frames, at most the native leaf.
    user: Box<[u64]>,
    kernel: Box<[u64]>,
    /// What the wait meant for a coroutine or event loop on the thread.
    on_loop: LoopWait,
}

/// An off-CPU stack seen from an event loop's side.
#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct LoopWait {
    /// Interned frame of the innermost coroutine (or loop callback) on the stack, [`NO_FRAME`]
    /// when none.
    coroutine: u32,
    /// The thread runs an event loop and this wait held it up: nothing else on the loop could
    /// run until the call returned.
    stalled: bool,
}

const NO_FRAME: u32 = u32::MAX;

enum LoopState {
    /// No event loop on the stack; `coroutine` when a coroutine is running anyway (driven by
    /// hand, or by a loop we do not know).
    NotLoop { coroutine: Option<u32> },
    /// The loop polling for events: nothing to run.
    Idle,
    /// The loop held up by what it runs (interned frame of the culprit, or [`NO_FRAME`]).
    Stalled { coroutine: u32 },
}

/// Whether `file` is `module` (`asyncio/base_events.py`) of the standard library or a package:
/// path separators are `/` on Linux, and the path may be relative or absolute.
fn is_module(file: &str, module: &str) -> bool {
    file == module || file.strip_suffix(module).is_some_and(|head| head.ends_with('/'))
}

/// The unqualified function name (`run` of `Runner.run`).
fn short_name(function: &str) -> &str {
    function.rsplit('.').next().unwrap_or(function)
}

/// An event loop's own frame, under which the loop polls and runs callbacks: asyncio's
/// `run_forever`/`_run_once`/`run_until_complete`, `asyncio.run`, `uvloop.run`.
fn is_loop_frame(f: &PyFrame) -> bool {
    let name = short_name(&f.function);
    (is_module(&f.file, "asyncio/base_events.py") && matches!(name, "_run_once" | "run_forever" | "run_until_complete"))
        || (is_module(&f.file, "asyncio/runners.py") && name == "run")
        || (is_module(&f.file, "uvloop/__init__.py") && name == "run")
}

/// The selector asyncio's loop polls through (`EpollSelector.select`...).
fn is_selector_frame(f: &PyFrame) -> bool {
    is_module(&f.file, "selectors.py") || is_module(&f.file, "asyncio/selector_events.py")
}

/// Frames by which a loop calls into a callback or task (`Handle._run`, `Task.__step` in the
/// pure-Python fallback): not the culprit of a stall.
fn is_loop_dispatch_frame(f: &PyFrame) -> bool {
    (is_module(&f.file, "asyncio/events.py") && short_name(&f.function) == "_run")
        || (is_module(&f.file, "asyncio/tasks.py")
            && matches!(short_name(&f.function), "__step" | "_Task__step" | "__step_run_and_handle_result"))
}

impl LoopWait {
    const NONE: LoopWait = LoopWait { coroutine: NO_FRAME, stalled: false };
}

struct ProcessInfo {
    comm: String,
    cmdline: Option<String>,
}

/// `RawStack::wait` of on-CPU samples.
const ON_CPU: u32 = u32::MAX;

/// How much a stack weighs: samples (or off-CPU intervals) and nanoseconds.
#[derive(Default, Clone, Copy)]
struct Weight {
    samples: u64,
    ns: u64,
}

/// Key of a resolved Python frame: (pid, code, fingerprint, instruction, owner).
type PyFrameKey = (u32, u64, u32, u64, u32);

#[derive(Default)]
pub struct Aggregator {
    /// Nanoseconds one on-CPU sample stands for (the sampling period).
    period_ns: u64,
    stacks: HashMap<RawStack, Weight>,
    waits: Vec<Wait>,
    wait_ids: HashMap<Wait, u32>,
    /// (pid, tid) → (latest thread name, samples).
    threads: HashMap<(u32, u32), (String, u64)>,
    processes: HashMap<u32, ProcessInfo>,
    frames: Frames,
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
    sampled_out: std::collections::HashSet<(u32, u32)>,
}

impl Aggregator {
    pub fn new(frequency_hz: u32) -> Self {
        Self { period_ns: 1_000_000_000 / frequency_hz.max(1) as u64, ..Default::default() }
    }

    pub fn add(&mut self, s: Sample, symbols: &mut Symbols, python: &mut PythonRegistry) {
        self.samples += 1;
        let period = self.period_ns;
        let ids = self.python_frames(&s, python);
        self.add_stack(s, ids, ON_CPU, period, true, LoopWait::NONE, symbols, python);
    }

    /// A long blocking syscall: its blocked time goes to the wait's category, its run-queue
    /// time (after the wakeup) to `runqueue`, both on the stack it blocked in.
    pub fn add_off_cpu(
        &mut self,
        s: Sample,
        symbols: &mut Symbols,
        python: &mut PythonRegistry,
        classifier: &mut Classifier,
    ) {
        self.off_cpu_events += 1;
        python.observe(s.pid);
        let mut wait = classifier.classify(s.pid, s.off.state, s.off.syscall_nr, s.off.arg0);
        let ids = self.python_frames(&s, python);
        let on_loop = match self.loop_state(&ids, s.off.syscall_nr) {
            LoopState::Idle if s.off.state == profiler_common::off_state::SLEEPING => {
                // The loop waiting for work: idle, for this interval and, through the
                // classifier, for every short one on the same poll that carries no stack.
                classifier.mark_loop_idle(s.pid, s.off.syscall_nr, s.off.arg0);
                wait = classifier.classify(s.pid, s.off.state, s.off.syscall_nr, s.off.arg0);
                LoopWait::NONE
            }
            LoopState::Idle | LoopState::NotLoop { coroutine: None } => LoopWait::NONE,
            LoopState::NotLoop { coroutine: Some(c) } => LoopWait { coroutine: c, stalled: false },
            LoopState::Stalled { coroutine } => LoopWait { coroutine, stalled: true },
        };
        let runq = Wait { category: Category::Runqueue, syscall: wait.syscall.clone(), target: None };
        let (blocked_ns, runq_ns) = (s.off.blocked_ns, s.off.runq_ns);
        if runq_ns > 0 {
            let id = self.intern_wait(runq);
            let sample = Sample {
                py_frames: s.py_frames.clone(),
                user_stack: s.user_stack.clone(),
                kernel_stack: s.kernel_stack.clone(),
                ..s.clone()
            };
            self.add_stack(sample, ids.clone(), id, runq_ns, false, on_loop, symbols, python);
        }
        if blocked_ns > 0 {
            let id = self.intern_wait(wait);
            self.add_stack(s, ids, id, blocked_ns, false, on_loop, symbols, python);
        }
    }

    /// Reads a blocked stack for an event loop: the loop's own poll for events (idle), or a
    /// call made while a coroutine or callback ran on the loop (a stall: the loop could not
    /// run anything else meanwhile). Works for asyncio's loop, whose Python frames are seen,
    /// and for loops in C (uvloop), seen through `asyncio.run`/`run_until_complete`.
    fn loop_state(&self, ids: &[u32], syscall_nr: i64) -> LoopState {
        let frames: Vec<Option<&PyFrame>> = ids.iter().map(|&id| self.frames.python[id as usize].as_ref()).collect();
        let innermost_coroutine =
            |from: usize| (from..frames.len()).rev().find(|&i| frames[i].is_some_and(|f| f.coroutine)).map(|i| ids[i]);
        let Some(marker) = frames.iter().rposition(|f| f.is_some_and(is_loop_frame)) else {
            return LoopState::NotLoop { coroutine: innermost_coroutine(0) };
        };
        let below = &frames[marker + 1..];
        if below.is_empty() || below.iter().all(|f| f.is_some_and(is_selector_frame)) {
            let polls = syscall_nr >= 0
                && crate::offcpu::syscalls::class(syscall_nr as u64) == crate::offcpu::syscalls::SyscallClass::Poll;
            return if polls { LoopState::Idle } else { LoopState::NotLoop { coroutine: None } };
        }
        // Blocked inside what the loop runs: name the innermost coroutine, else the callback
        // the loop called (the first frame below its own).
        let callback =
            (marker + 1..frames.len()).find(|&i| !frames[i].is_some_and(is_loop_dispatch_frame)).map(|i| ids[i]);
        LoopState::Stalled { coroutine: innermost_coroutine(marker + 1).or(callback).unwrap_or(NO_FRAME) }
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
        let id =
            self.intern_wait(Wait { category: Category::Runqueue, syscall: None, target: Some("preempted".into()) });
        let ids = self.python_frames(&s, python);
        self.add_stack(s, ids, id, runq_ns, false, LoopWait::NONE, symbols, python);
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

    #[allow(clippy::too_many_arguments)]
    fn add_stack(
        &mut self,
        s: Sample,
        python_ids: Vec<u32>,
        wait: u32,
        ns: u64,
        on_cpu: bool,
        on_loop: LoopWait,
        symbols: &mut Symbols,
        python: &mut PythonRegistry,
    ) {
        let thread_name = comm_str(&s.comm);
        self.processes.entry(s.pid).or_insert_with(|| {
            // Read eagerly: the process may be gone by the time the profile is written.
            ProcessInfo {
                comm: procinfo::comm(s.pid).unwrap_or_else(|| thread_name.clone()),
                cmdline: procinfo::cmdline(s.pid),
            }
        });
        let t = self.threads.entry((s.pid, s.tid)).or_insert_with(|| (String::new(), 0));
        t.0 = thread_name;
        t.1 += on_cpu as u64;

        python.observe(s.pid);
        let mut user = s.user_stack;
        if let Some(proc) = python.get_mut(s.pid) {
            self.python_samples += on_cpu as u64;
            if !python_ids.is_empty() {
                self.python_samples_with_frames += on_cpu as u64;
                // Python frames replace the native stack, which cannot be unwound through the
                // interpreter (no frame pointers); the native leaf stays when it is outside the
                // interpreter (a C extension, libc, a syscall wrapper).
                user.truncate(1);
                if user.first().is_some_and(|&leaf| proc.in_interpreter(leaf)) {
                    user.clear();
                }
            }
        }
        symbols.note_user_stack(s.pid, &user);
        symbols.note_kernel_stack(&s.kernel_stack);
        let key = RawStack {
            pid: s.pid,
            tid: s.tid,
            wait,
            python: python_ids.into_boxed_slice(),
            user: user.into_boxed_slice(),
            kernel: s.kernel_stack.into_boxed_slice(),
            on_loop,
        };
        let w = self.stacks.entry(key).or_default();
        w.samples += 1;
        w.ns += ns;
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

    /// Process `pid` called exec: read its name and command line again; frames resolved for
    /// its old program no longer apply.
    pub fn exec(&mut self, pid: u32) {
        if let Some(info) = self.processes.get_mut(&pid) {
            info.comm = procinfo::comm(pid).unwrap_or_else(|| info.comm.clone());
            info.cmdline = procinfo::cmdline(pid).or_else(|| info.cmdline.take());
        }
        self.py_frames.retain(|(p, ..), _| *p != pid);
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
            ids.push(self.frames.intern(TRUNCATED.to_string(), None));
        }
        for rec in s.py_frames.iter().rev() {
            let key = (s.pid, rec.code, rec.fingerprint, rec.instr, rec.owner);
            let id = match self.py_frames.get(&key) {
                Some(id) => *id,
                None => {
                    let id = match proc.resolve(rec) {
                        Resolved::Frame(f) => Some(self.frames.intern(f.to_string(), Some(f))),
                        Resolved::Unknown => Some(self.frames.intern(UNKNOWN_PY.to_string(), None)),
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

    /// Builds the symbolized per-process profile. Stacks are root first: Python frames (or the
    /// native user stack from its outermost frame), then the native leaf, then kernel frames.
    /// `totals` holds each thread's exact time per category when off-CPU time was tracked; the
    /// part of it no stack carries (intervals under the threshold) becomes a stackless entry.
    pub fn build(&self, symbols: &Symbols, python: &PythonRegistry, totals: &ThreadTotals) -> Vec<ProcessProfile> {
        type StackKey = (u32, u32, Vec<String>, Vec<u32>, LoopWait);
        let mut by_pid: HashMap<u32, HashMap<StackKey, Weight>> = HashMap::new();
        for (raw, w) in &self.stacks {
            let mut frames = Vec::with_capacity(raw.python.len() + raw.user.len() + raw.kernel.len());
            frames.extend(raw.python.iter().map(|&id| self.frames.text[id as usize].clone()));
            for (i, &addr) in raw.user.iter().enumerate().rev() {
                frames.push(symbols.user_frame(raw.pid, addr, i).to_string());
            }
            for (i, &addr) in raw.kernel.iter().enumerate().rev() {
                frames.push(symbols.kernel_frame(addr, i).to_string());
            }
            if frames.is_empty() && raw.wait == ON_CPU {
                // Sampled in the kernel with no user context to unwind (exec, exit, a page
                // fault...): say so rather than leave a stack with no frame.
                frames.push(NO_USER_STACK.to_string());
            }
            let py: Vec<u32> =
                raw.python.iter().copied().filter(|&id| self.frames.python[id as usize].is_some()).collect();
            let e = by_pid.entry(raw.pid).or_default().entry((raw.tid, raw.wait, frames, py, raw.on_loop)).or_default();
            e.samples += w.samples;
            e.ns += w.ns;
        }
        for &(pid, _) in totals.keys() {
            by_pid.entry(pid).or_default();
        }

        let mut processes: Vec<ProcessProfile> = by_pid
            .into_iter()
            .map(|(pid, stacks)| self.build_process(pid, stacks, python, totals))
            .filter(|p| p.samples > 0 || p.wall_ns > 0)
            .collect();
        processes.sort_by(|a, b| b.wall_ns.cmp(&a.wall_ns).then(b.samples.cmp(&a.samples)).then(a.pid.cmp(&b.pid)));
        processes
    }

    fn build_process(
        &self,
        pid: u32,
        stacks: HashMap<(u32, u32, Vec<String>, Vec<u32>, LoopWait), Weight>,
        python: &PythonRegistry,
        totals: &ThreadTotals,
    ) -> ProcessProfile {
        let info = self.processes.get(&pid);
        let mut tids: Vec<u32> = self.threads.keys().filter(|(p, _)| *p == pid).map(|&(_, t)| t).collect();
        tids.extend(totals.keys().filter(|(p, _)| *p == pid).map(|&(_, t)| t));
        tids.sort_unstable();
        tids.dedup();

        let mut stacks: Vec<StackProfile> = stacks
            .into_iter()
            .map(|((tid, wait, frames, py, on_loop), w)| {
                let (category, syscall, target) = match self.waits.get(wait as usize) {
                    Some(wt) => (wt.category, wt.syscall.clone(), wt.target.clone()),
                    None => (Category::Cpu, None, None),
                };
                StackProfile {
                    tid,
                    thread: String::new(),
                    frames,
                    python_frames: py
                        .iter()
                        .filter_map(|&id| self.frames.python[id as usize].as_ref())
                        .map(|f| PythonFrameProfile {
                            function: f.function.clone(),
                            file: f.file.clone(),
                            line: f.line,
                            first_line: f.first_line,
                        })
                        .collect(),
                    samples: w.samples,
                    category,
                    weight_ns: w.ns,
                    syscall,
                    target,
                    coroutine: (on_loop.coroutine != NO_FRAME)
                        .then(|| self.frames.text[on_loop.coroutine as usize].clone()),
                    stalls_loop: on_loop.stalled,
                }
            })
            .collect();

        let mut threads = Vec::new();
        for tid in tids {
            let (os_name, samples) = self
                .threads
                .get(&(pid, tid))
                .cloned()
                .unwrap_or_else(|| (procinfo::thread_comm(pid, tid).unwrap_or_default(), 0));
            let mut by_category: BTreeMap<Category, u64> = BTreeMap::new();
            match totals.get(&(pid, tid)) {
                Some(exact) => {
                    for (c, &ns) in CATEGORIES.iter().zip(exact.iter()) {
                        if ns > 0 {
                            by_category.insert(*c, ns);
                        }
                    }
                    // Waits no stack carries: shorter than the threshold, or over the stack
                    // rate. When the kernel skipped stacks of this thread, the kept ones are a
                    // sample of its waits: their weights are scaled to the exact total of
                    // their category. Otherwise what is left is a stackless entry.
                    let scale = self.sampled_out.contains(&(pid, tid));
                    for c in &CATEGORIES[1..] {
                        let total = by_category.get(c).copied().unwrap_or(0);
                        let stacked: u64 =
                            stacks.iter().filter(|s| s.tid == tid && s.category == *c).map(|s| s.weight_ns).sum();
                        if scale && stacked > 0 && total > stacked {
                            scale_weights(
                                stacks.iter_mut().filter(|s| s.tid == tid && s.category == *c),
                                stacked,
                                total,
                            );
                            continue;
                        }
                        if total > stacked {
                            stacks.push(StackProfile {
                                tid,
                                thread: String::new(),
                                frames: Vec::new(),
                                python_frames: Vec::new(),
                                samples: 0,
                                category: *c,
                                weight_ns: total - stacked,
                                syscall: None,
                                target: Some(SHORT_WAITS.to_string()),
                                coroutine: None,
                                stalls_loop: false,
                            });
                        }
                    }
                }
                None => {
                    if samples > 0 {
                        by_category.insert(Category::Cpu, samples * self.period_ns);
                    }
                }
            }
            let wall_ns = by_category.values().sum();
            threads.push(ThreadProfile {
                tid,
                name: os_name,
                python_name: python.thread_name(pid, tid).map(str::to_string),
                samples,
                wall_ns,
                totals_ns: by_category.into_iter().map(|(c, ns)| (c.name().to_string(), ns)).collect(),
            });
        }
        threads.sort_by(|a, b| b.wall_ns.cmp(&a.wall_ns).then(b.samples.cmp(&a.samples)).then(a.tid.cmp(&b.tid)));
        for s in &mut stacks {
            s.thread = threads
                .iter()
                .find(|t| t.tid == s.tid)
                .map(|t| t.python_name.clone().unwrap_or_else(|| t.name.clone()))
                .unwrap_or_default();
        }
        stacks.sort_by(|a, b| b.weight_ns.cmp(&a.weight_ns).then_with(|| (a.tid, &a.frames).cmp(&(b.tid, &b.frames))));

        let mut totals_ns: BTreeMap<String, u64> = BTreeMap::new();
        for t in &threads {
            for (c, ns) in &t.totals_ns {
                *totals_ns.entry(c.clone()).or_insert(0) += ns;
            }
        }
        ProcessProfile {
            pid,
            comm: info.map(|i| i.comm.clone()).or_else(|| procinfo::comm(pid)).unwrap_or_default(),
            cmdline: info.and_then(|i| i.cmdline.clone()).or_else(|| procinfo::cmdline(pid)),
            python_version: python.version(pid).map(|v| v.to_string()),
            samples: threads.iter().map(|t| t.samples).sum(),
            wall_ns: threads.iter().map(|t| t.wall_ns).sum(),
            totals_ns,
            functions: function_table(&stacks),
            loop_stalls: loop_stalls(&stacks),
            threads,
            stacks,
        }
    }
}

/// Scales stacks weighing `from` in all to weigh `to`, keeping their proportions and the sum
/// exact (the rounding remainder goes to the heaviest).
fn scale_weights<'a>(stacks: impl Iterator<Item = &'a mut StackProfile>, from: u64, to: u64) {
    let mut stacks: Vec<&mut StackProfile> = stacks.collect();
    let mut given = 0u64;
    for s in stacks.iter_mut() {
        s.weight_ns = (s.weight_ns as u128 * to as u128 / from.max(1) as u128) as u64;
        given += s.weight_ns;
    }
    if let Some(heaviest) = stacks.iter_mut().max_by_key(|s| s.weight_ns) {
        heaviest.weight_ns += to.saturating_sub(given);
    }
}

/// Target text of the stackless part of a thread's waits.
pub const SHORT_WAITS: &str = "short waits (no stack)";

/// Exact time per category (in [`CATEGORIES`] order) per (pid, tid).
pub type ThreadTotals = HashMap<(u32, u32), [u64; CATEGORIES.len()]>;

/// Adds the exact kernel sums into per-thread totals: on-CPU time per thread, and each
/// off-CPU interval's blocked part in its wait's category and its run-queue part in runqueue.
pub fn thread_totals(
    times: &[(u32, profiler_common::ThreadTimes)],
    sums: &[(profiler_common::OffCpuKey, profiler_common::OffCpuSum)],
    classifier: &mut Classifier,
) -> ThreadTotals {
    let mut totals = ThreadTotals::new();
    let pid_of: HashMap<u32, u32> = times.iter().map(|(tid, t)| (*tid, t.pid)).collect();
    for (tid, t) in times {
        totals.entry((t.pid, *tid)).or_default()[0] += t.oncpu_ns;
    }
    for (key, sum) in sums {
        let Some(&pid) = pid_of.get(&key.tid) else { continue };
        let wait = classifier.classify(pid, key.state, key.syscall_nr, key.arg0);
        let entry = totals.entry((pid, key.tid)).or_default();
        entry[wait.category as usize] += sum.blocked_ns;
        entry[Category::Runqueue as usize] += sum.runq_ns;
    }
    totals
}
