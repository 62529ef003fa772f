//! Types that cross the kernel/userspace boundary.
//!
//! Every type here is `#[repr(C)]`, made of plain integers, and laid out without implicit padding,
//! so the eBPF programs (`profiler-ebpf`) and the daemon (`profiler`) agree on it byte for byte.
//! Both sides are always built together from one tree, so there is no cross-version compatibility
//! to keep: change a type, and both ends change with it.
//!
//! This crate is the whole contract between the two sides: the record and map types, the names
//! userspace addresses maps, programs and globals by ([`names`]), the maps' capacities
//! ([`map_size`]), and the few computations both sides make on the same data (the poll family's
//! argument in [`poll_arg`], a futex's in [`futex_arg`], the split of an off-CPU interval and the off-CPU stack budget in
//! [`ThreadTimes`]): defined once here, so the kernel and userspace cannot drift apart, and unit
//! tested on the host. `profiler`'s `bpf::contract` test checks the built object against it.
#![cfg_attr(not(test), no_std)]

pub mod child_wait;
pub mod exit_gate;
pub mod futex_arg;
pub mod lifecycle;
pub mod poll_arg;
pub mod sample_record;
pub mod task_iter;
mod times;
pub mod unwind;
pub mod wait_target;

pub use times::split_off_interval;

/// Deepest native stack `bpf_get_stack` records (the kernel's default `perf_event_max_stack`).
pub const MAX_NATIVE_FRAMES: usize = 127;
/// Most Python frames one sample can carry; `--max-depth` chooses a bound up to this.
pub const MAX_PY_FRAMES: usize = 128;
/// Low bits the unwinder clears from every frame's code pointer. 3.14's
/// `_PyInterpreterFrame.f_executable` is a `_PyStackRef`: the object's address with tag bits
/// (`Py_TAG_BITS` = 3) in its low bits. Objects are at least 8-byte aligned in every CPython, so
/// this is a no-op on older versions; userspace refuses a layout whose tag bits do not fit.
pub const PY_CODE_TAG_MASK: u64 = 7;
/// Bytes of a Python frame the unwinder reads at once, from its start: every field it needs
/// must lie within them ([`PyProcInfo::frame_read_len`] is at most this). One read per frame,
/// because the reads, not the arithmetic, are the walk's cost.
pub const PY_FRAME_READ_MAX: usize = 128;
/// Offsets in [`PyProcInfo`] that do not exist in a given CPython version.
pub const PY_OFFSET_NONE: u16 = u16::MAX;
/// Length of a task's `comm` (thread name), NUL padded.
pub const TASK_COMM_LEN: usize = 16;
/// Off-CPU stacks a thread may save up (the token bucket's depth, in stacks): a thread that
/// was quiet can take this many in a row before `--off-cpu-stack-rate` applies.
pub const OFFCPU_STACK_BURST: u64 = 16;

/// `max_entries` of the kernel's maps. The kernel's map definitions use these, and the
/// `bpf::contract` test checks the built object against them.
pub mod map_size {
    /// Explicit targets (`--pid`, `-- COMMAND` and its children).
    pub const TARGET_PIDS: u32 = 8192;
    /// Processes whose children are followed (a subset of the targets).
    pub const FOLLOWED: u32 = TARGET_PIDS;
    /// CPython processes known to the unwinder.
    pub const PY_PROCS: u32 = 8192;
    /// Threads whose `PyThreadState` is cached (LRU: threads come and go).
    pub const TSTATE_CACHE: u32 = 65536;
    /// Distinct (thread, state, syscall, argument) off-CPU keys: far beyond a profile's worth
    /// of threads × fds.
    pub const OFFCPU_SUMS: u32 = 65536;
    /// Tracked threads' scheduling times (LRU).
    pub const THREAD_TIMES: u32 = 65536;
    /// Syscalls in flight, one per tracked thread (LRU: a thread killed mid-syscall never
    /// exits it).
    pub const IN_FLIGHT: u32 = 65536;
    /// One [`super::exit_gate::ExitGate`] per CPU.
    pub const EXIT_GATE: u32 = 1;
    /// Bytes of the `EVENTS` ring buffer as compiled; userspace resizes it at load time to fit
    /// the sampling rate, so this only matters to a loader that does not.
    pub const EVENTS_DEFAULT_BYTES: u32 = 4 << 20;
    /// Slots of the per-CPU `STATS` array.
    pub const STATS: u32 = super::stat::COUNT;
    /// Elements (two 4-byte rows each) of the unwind rows array as compiled (24 MiB: 6.3 M
    /// rows, a busy developer host's worth); userspace sets the real number at load time (1
    /// without `--native`).
    pub const UNWIND_ROW_PAIRS: u32 = 3 << 20;
    /// Page entries (64 KiB of text each): 8 GiB of code.
    pub const UNWIND_PAGES: u32 = 131_072;
    /// Distinct unwind rules on the host (a busy host has ~2 500; the row's index is a `u16`).
    pub const UNWIND_RULES: u32 = 65_536;
    /// Binaries with a table at once.
    pub const UNWIND_TABLES: u32 = 8192;
    /// Executable mappings of all processes, in per-process ranges.
    pub const UNWIND_MAPPINGS: u32 = 131_072;
    /// Processes whose mappings the unwinder knows.
    pub const UNWIND_PROCS: u32 = 8192;
    /// Per-CPU scratch records: one per kind of program that unwinds ([`super::scratch_slot`]).
    pub const UNWIND_SCRATCH: u32 = super::scratch_slot::COUNT;
    /// Slots of each program array (the unwinder's index is [`super::UNWIND_PROG_INDEX`]).
    pub const UNWIND_PROGS: u32 = 4;
}

/// Which per-CPU scratch record a program builds its event in. A perf-event program can
/// interrupt a tracepoint program on the same CPU, and a preemptible kernel can switch tasks
/// in the middle of `sys_exit`'s program, so each kind of program has its own.
pub mod scratch_slot {
    pub const ON_CPU: u32 = 0;
    pub const SYS_EXIT: u32 = 1;
    pub const SCHED_SWITCH: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Index of the native unwinder in its program array (the perf-event one, and the raw
/// tracepoint one for each slot: [`scratch_slot`] + this).
pub const UNWIND_PROG_INDEX: u32 = 0;

/// What a ring-buffer record holds; the first `u32` of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A `cpu-clock` sample of a running thread: a [`SampleEvent`].
    OnCpuSample = 1,
    /// A profiled process called exec: an [`ExecEvent`].
    Exec = 2,
    /// A blocking syscall that kept its thread off-CPU for at least the threshold: a
    /// [`SampleEvent`] whose `off` fields say how long and in what, with the thread's stacks
    /// taken when the syscall returned (still the stacks it blocked in).
    OffCpu = 3,
    /// The unwinder found no `PyThreadState` for a thread within its bounded scan: a
    /// [`ThreadMissEvent`] asking userspace to look (it has no bound) and fill `TSTATE_CACHE`.
    ThreadMiss = 4,
    /// A profiled thread was preempted outside a syscall: a [`SampleEvent`] with its stacks at
    /// that moment, `time_ns` = the switch-out time. Its run-queue wait follows as a
    /// [`PreemptEndEvent`] if it reaches the threshold.
    Preempted = 5,
    /// See [`EventKind::Preempted`].
    PreemptEnd = 6,
    /// A followed process forked a child process, which the kernel has made a target (and
    /// followed) before it first ran: a [`ForkEvent`].
    Fork = 7,
    /// What the descriptor of the `OffCpu` event that follows referred to: a
    /// [`wait_target::WaitTargetEvent`].
    WaitTarget = 8,
    /// A new thread of a CPython process (`sched_process_fork` with the child in the parent's
    /// thread group): a [`lifecycle::TaskEvent`].
    ThreadStart = 9,
    /// A thread of a tracked process changed its name (`task_rename`): a
    /// [`lifecycle::TaskEvent`] with the new name.
    Rename = 10,
    /// A thread of a tracked process exited, or the last thread of a profiled process
    /// (`sched_process_exit`): a [`lifecycle::TaskEvent`] with its last name.
    Exit = 11,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::OnCpuSample),
            2 => Some(Self::Exec),
            3 => Some(Self::OffCpu),
            4 => Some(Self::ThreadMiss),
            5 => Some(Self::Preempted),
            6 => Some(Self::PreemptEnd),
            7 => Some(Self::Fork),
            8 => Some(Self::WaitTarget),
            9 => Some(Self::ThreadStart),
            10 => Some(Self::Rename),
            11 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// A profiled process replaced its program (exec): what userspace knew of it is stale, and the
/// kernel has already dropped its `PY_PROCS` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// [`EventKind`] as `u32`.
    pub kind: u32,
    pub pid: u32,
}

/// See [`EventKind::Fork`]. Only processes (new thread groups) are reported, never threads.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    /// [`EventKind`] as `u32`.
    pub kind: u32,
    /// The child (its tgid).
    pub pid: u32,
    /// The process that forked it (its tgid).
    pub ppid: u32,
    /// [`fork_flags`] bits.
    pub flags: u32,
}

/// Bits of [`ForkEvent::flags`].
pub mod fork_flags {
    /// The child is in `TARGET_PIDS` and `FOLLOWED` (unset: a map was full, it is not profiled).
    pub const FOLLOWED: u32 = 1;
    /// The parent's CPython layout was copied to the child (the same memory, after a fork):
    /// the child's first samples already carry Python frames.
    pub const PYTHON_COPIED: u32 = 2;
}

/// See [`EventKind::ThreadMiss`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadMissEvent {
    /// [`EventKind`] as `u32`.
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    /// Offset in `PyThreadState` of the field that identifies the thread.
    pub key_offset: u32,
    /// The value that field must hold: the tid (3.11+) or the thread's fs base (pthread_t).
    pub key: u64,
}

/// The end of a preemption's run-queue wait (see [`EventKind::Preempted`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PreemptEndEvent {
    /// [`EventKind`] as `u32`.
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub _pad: u32,
    /// Switch-out time: the `time_ns` of the matching `Preempted` event.
    pub since_ns: u64,
    pub runq_ns: u64,
}

/// Value of `TSTATE_CACHE` (key: tid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TstateEntry {
    /// The thread's `PyThreadState`, or 0 for "none found".
    pub tstate: u64,
    /// When the entry was made (bpf_ktime_get_ns), to expire negative entries.
    pub checked_ns: u64,
}

/// One on-CPU sample, as written by the perf-event program into the ring buffer.
///
/// Stacks are stored leaf first, as the kernel returns them; `*_len` counts valid entries.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SampleEvent {
    /// [`EventKind`] as `u32`.
    pub kind: u32,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// Process id (kernel tgid).
    pub pid: u32,
    /// Thread id (kernel pid).
    pub tid: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    /// Number of valid entries in `kernel_stack` (0 when not asked for or unavailable). Kernel
    /// threads always have theirs: it is all they have.
    pub kernel_stack_len: u32,
    /// Number of valid entries in `user_stack` (0 for kernel threads or on fault).
    pub user_stack_len: u32,
    /// Number of valid entries in `py_frames`.
    pub py_frames_len: u32,
    /// [`py_status`] bits: what the Python unwinder found.
    pub py_status: u32,
    /// Thread name at sample time.
    pub comm: [u8; TASK_COMM_LEN],
    /// Off-CPU events only: what the thread was blocked in.
    pub off: OffCpuInfo,
    pub kernel_stack: [u64; MAX_NATIVE_FRAMES],
    pub user_stack: [u64; MAX_NATIVE_FRAMES],
    /// Python frames, innermost first.
    pub py_frames: [PyFrameRecord; MAX_PY_FRAMES],
    /// The leaf frame's stack pointer, when the DWARF unwinder walked the stack (with
    /// `user_cfa`, each frame's stack range: frame i spans `[cfa[i-1], cfa[i])`).
    pub user_sp: u64,
    /// How the native walk ended ([`unwind::end`]); [`unwind::end::FRAME_POINTERS`] when
    /// `user_stack` is `bpf_get_stack`'s frame-pointer walk.
    pub user_end: u32,
    pub _pad: u32,
    /// Each native frame's CFA (its caller's stack pointer), 0 where not known.
    pub user_cfa: [u64; MAX_NATIVE_FRAMES],
}

/// The per-CPU record a sample is built in when the native unwinder runs: a ring-buffer
/// reservation cannot be held across the unwinder's tail calls, so the event is assembled
/// here and copied to the ring buffer at the end.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UnwindScratch {
    pub state: unwind::UnwindState,
    pub ev: SampleEvent,
}

/// Why and how long a thread was off-CPU during one syscall (all zero in on-CPU samples).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuInfo {
    /// Time asleep or waiting on I/O (switched out until woken).
    pub blocked_ns: u64,
    /// Time runnable but waiting for a CPU (after the wakeup, or after a preemption).
    pub runq_ns: u64,
    /// Syscall number.
    pub syscall_nr: i64,
    /// Its first argument (an fd, a futex address...; see [`poll_arg`] and [`futex_arg`] for
    /// what the kernel records instead for some calls).
    pub arg0: u64,
    /// [`off_state`] class of the last switch-out.
    pub state: u32,
    /// How many times the thread was switched out during the syscall.
    pub switches: u32,
}

/// Classes of the task state a thread was switched out in.
pub mod off_state {
    /// Preempted while runnable (`R`): the time off-CPU is run-queue wait.
    pub const RUNNABLE: u32 = 0;
    /// Interruptible sleep (`S`).
    pub const SLEEPING: u32 = 1;
    /// Uninterruptible sleep (`D`), usually disk I/O.
    pub const UNINTERRUPTIBLE: u32 = 2;
}

/// Key of the per-thread off-CPU sums: every interval of a profiled thread is added to one,
/// short or long, so per-thread totals are exact whatever the stack threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OffCpuKey {
    pub tid: u32,
    /// [`off_state`] class.
    pub state: u32,
    /// Syscall in flight, or -1.
    pub syscall_nr: i64,
    /// Its first argument, or 0 (see [`poll_arg`] for the poll family, [`futex_arg`] for
    /// futexes).
    pub arg0: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuSum {
    pub blocked_ns: u64,
    pub runq_ns: u64,
    pub count: u64,
}

/// Per-thread scheduling times, keyed by tid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadTimes {
    /// Total time on a CPU while profiled (exact, from switch timestamps).
    pub oncpu_ns: u64,
    /// When it was last switched in (0 while off-CPU or unknown).
    pub on_since_ns: u64,
    /// When it was last switched out (0 while on-CPU).
    pub off_since_ns: u64,
    /// When it was woken after its last switch-out (0 if not yet).
    pub wake_ns: u64,
    /// [`off_state`] class of the last switch-out.
    pub off_state: u32,
    /// The tgid, for userspace.
    pub pid: u32,
    /// Budget for off-CPU stacks (a token bucket in nanoseconds of credit): each stack taken
    /// costs `1e9 / --off-cpu-stack-rate`; credit accrues with time up to
    /// [`OFFCPU_STACK_BURST`] stacks (see [`ThreadTimes::take_stack_credit`]).
    pub stack_credit_ns: u64,
    /// When `stack_credit_ns` was last topped up.
    pub credit_at_ns: u64,
    /// Off-CPU stacks not taken because the budget was spent (their time is still summed).
    pub stacks_sampled_out: u64,
}

/// A syscall in flight on a thread, keyed by tid: made at the call's first switch-out (a call
/// that never switches out has none), removed at its `sys_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub syscall_nr: i64,
    pub arg0: u64,
    /// When the record was made: the call's first switch-out (when tracking began, for a
    /// thread found asleep). Informational; nothing reads it.
    pub entry_ns: u64,
    pub blocked_ns: u64,
    pub runq_ns: u64,
    pub state: u32,
    pub switches: u32,
}

/// One Python frame as read from the interpreter. Userspace turns it into a name and a line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrameRecord {
    /// Address of the frame's code object (3.13+: `f_executable`, which may not be code).
    pub code: u64,
    /// The instruction: `f_lasti` (3.8–3.10) or the `prev_instr` / `instr_ptr` pointer (3.11+).
    pub instr: u64,
    /// Tells a code object apart from a later one allocated at the same address: its
    /// `co_firstlineno` read from the code object (3.8–3.10, free-threaded 3.14+), or, where
    /// [`PyProcInfo::code_firstlineno`] is [`PY_OFFSET_NONE`] (3.11+ with the GIL), the low 32
    /// bits of the frame's `f_globals` (its module's dict), and userspace checks that `instr`
    /// points into the code object's own bytecode.
    pub fingerprint: u32,
    /// `_PyInterpreterFrame.owner` (3.11+), 0 before; plus [`PY_FRAME_IS_ENTRY`].
    pub owner: u32,
}

/// Bit of [`PyFrameRecord::owner`]: 3.11's `is_entry` is set on the frame (the first frame of
/// its `_PyEval_EvalFrameDefault` call).
pub const PY_FRAME_IS_ENTRY: u32 = 1 << 8;
/// Frames with an owner from this up are no Python code (3.12+: the eval loop's entry frame,
/// a local of the C call that runs the frames above it): the kernel records the frame's own
/// address in [`PyFrameRecord::instr`], which ties it to that C frame in a mixed stack.
pub const PY_OWNER_ENTRY_MIN: u32 = 3;

/// Bits of [`SampleEvent::py_status`].
pub mod py_status {
    /// The process is a known CPython process: a Python walk was attempted.
    pub const PYTHON_PROCESS: u32 = 1;
    /// The thread's `PyThreadState` was found.
    pub const THREAD_FOUND: u32 = 2;
    /// The walk stopped at the depth bound with frames left: the stack is truncated.
    pub const TRUNCATED: u32 = 4;
    /// A read of interpreter memory failed mid-walk (frames so far are kept).
    pub const READ_ERROR: u32 = 8;
}

/// Where a CPython process keeps its threads and frames: `_PyRuntime`'s address and the member
/// offsets of its version (from `profiler/src/python/offsets_generated.rs`). Userspace fills
/// one per Python process in `PY_PROCS`; the kernel unwinder reads nothing else.
/// Offsets are bytes; [`PY_OFFSET_NONE`] where the version has no such member.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyProcInfo {
    /// Address of `_PyRuntime` in the process.
    pub runtime_addr: u64,
    pub runtime_interpreters_head: u16,
    pub interp_threads_head: u16,
    pub interp_next: u16,
    pub tstate_next: u16,
    /// `PyThreadState.thread_id`: the thread's `pthread_t`, which is its fs base on x86-64.
    pub tstate_thread_id: u16,
    /// `PyThreadState.native_thread_id` (3.11+): the kernel tid.
    pub tstate_native_thread_id: u16,
    /// `frame` (3.8–3.10), `cframe` (3.11–3.12) or `current_frame` (3.13+).
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame` (3.11–3.12 only): a second hop from `tstate_frame`.
    pub cframe_current_frame: u16,
    pub frame_previous: u16,
    pub frame_code: u16,
    /// `f_lasti` (3.8–3.10) or `prev_instr` / `instr_ptr` (3.11+).
    pub frame_instr: u16,
    /// Width of `frame_instr`: 4 (`int f_lasti`) or 8 (a pointer).
    pub frame_instr_size: u16,
    /// `_PyInterpreterFrame.owner` (a byte), 3.11+.
    pub frame_owner: u16,
    /// `co_firstlineno`, read per frame as [`PyFrameRecord::fingerprint`]; [`PY_OFFSET_NONE`]
    /// when the walk skips that read (see `python::fingerprint_offset` in userspace).
    pub code_firstlineno: u16,
    /// Bytes of a frame to read at once to get all its fields above (≤ [`PY_FRAME_READ_MAX`]).
    pub frame_read_len: u16,
    /// `_PyInterpreterFrame.is_entry` (a byte, 3.11 only).
    pub frame_is_entry: u16,
    /// `_PyInterpreterFrame.f_globals`, whose low 32 bits are the frame's
    /// [`PyFrameRecord::fingerprint`] where [`Self::code_firstlineno`] is [`PY_OFFSET_NONE`]
    /// (3.11+ with the GIL): taken from the frame's own read, no read of the code object.
    pub frame_globals: u16,
    /// Keeps the size a multiple of 8 with no implicit padding.
    pub _pad: [u16; 3],
}

/// Indices into the per-CPU `STATS` counter array.
pub mod stat {
    /// Samples dropped because the ring buffer was full.
    pub const LOST: u32 = 0;
    /// Full scans of a Python process's thread list (tid → thread state cache misses).
    pub const PY_THREAD_SCANS: u32 = 1;
    /// Off-CPU stacks not taken: the thread's stack budget was spent.
    pub const OFFCPU_SAMPLED_OUT: u32 = 2;
    /// Native walks by the DWARF unwinder, and runs of its program (a walk takes one run per
    /// [`super::unwind::FRAMES_PER_RUN`] frames).
    pub const NATIVE_WALKS: u32 = 3;
    pub const NATIVE_RUNS: u32 = 4;
    /// Children of followed processes not followed: `TARGET_PIDS` or `FOLLOWED` was full.
    pub const FOLLOW_FULL: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// Names of the globals, maps and programs the userspace loader addresses by name (the kernel
/// side names them by its statics' and functions' identifiers, so the `bpf::contract` test
/// checks the built object against these lists both ways).
pub mod names {
    /// `u8` global: 1 = sample every process on the host, 0 = only pids in `TARGET_PIDS`.
    pub const GLOBAL_TARGET_ALL: &str = "TARGET_ALL";
    /// `u8` global: 1 = record kernel stacks.
    pub const GLOBAL_KERNEL_STACKS: &str = "KERNEL_STACKS";
    /// `u32` global: the profiler's own pid, never sampled.
    pub const GLOBAL_SELF_PID: &str = "SELF_PID";
    /// Hash map tgid → 1 of profiled processes when `TARGET_ALL` is 0.
    pub const MAP_TARGET_PIDS: &str = "TARGET_PIDS";
    /// Hash map tgid → 1 of processes whose children become targets (and followed) as they
    /// are forked.
    pub const MAP_FOLLOWED: &str = "FOLLOWED";
    /// `u32` global: byte offset of the fs base in `task_struct` (from kernel BTF), 0 if unknown.
    pub const GLOBAL_FSBASE_OFFSET: &str = "FSBASE_OFFSET";
    /// `u32` global: Python frames to walk at most (≤ `MAX_PY_FRAMES`).
    pub const GLOBAL_PY_MAX_DEPTH: &str = "PY_MAX_DEPTH";
    /// `u8` global: 1 = track off-CPU time (scheduler and syscall hooks).
    pub const GLOBAL_OFFCPU: &str = "OFFCPU";
    /// `u64` global: blocked intervals at least this long carry a stack.
    pub const GLOBAL_OFFCPU_THRESHOLD_NS: &str = "OFFCPU_THRESHOLD_NS";
    /// `u64` global: nanoseconds of stack budget one off-CPU stack costs (1e9 / stacks per
    /// second per thread).
    pub const GLOBAL_OFFCPU_STACK_COST_NS: &str = "OFFCPU_STACK_COST_NS";
    /// `u32` globals: offsets of `pid` and `tgid` in `task_struct` (from kernel BTF).
    pub const GLOBAL_TASK_PID_OFFSET: &str = "TASK_PID_OFFSET";
    pub const GLOBAL_TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
    /// `u32` global: offset of `flags` in `task_struct` (from kernel BTF), 0 if unknown: tells
    /// kernel threads (`PF_KTHREAD`), whose kernel stack is recorded even without
    /// `KERNEL_STACKS` (they have no other).
    pub const GLOBAL_TASK_FLAGS_OFFSET: &str = "TASK_FLAGS_OFFSET";
    /// `u32` global: offset of the task's scheduling state in `task_struct` (`__state` since
    /// 5.14, `state` before; from kernel BTF), 0 if unknown. `sched_switch` reads the switched-out
    /// task's state there: the tracepoint's own `prev_state` argument exists only since 5.18,
    /// and a raw tracepoint program reading past a tracepoint's arguments does not attach.
    pub const GLOBAL_TASK_STATE_OFFSET: &str = "TASK_STATE_OFFSET";
    /// Hash map [`super::OffCpuKey`] → [`super::OffCpuSum`].
    pub const MAP_OFFCPU_SUMS: &str = "OFFCPU_SUMS";
    /// LRU hash map tid → [`super::ThreadTimes`].
    pub const MAP_THREAD_TIMES: &str = "THREAD_TIMES";
    /// LRU hash map tid → [`super::InFlight`].
    pub const MAP_IN_FLIGHT: &str = "IN_FLIGHT";
    /// Per-CPU array of one [`super::exit_gate::ExitGate`].
    pub const MAP_EXIT_GATE: &str = "EXIT_GATE";
    /// Raw tracepoint programs of the off-CPU tracker.
    pub const PROG_SCHED_SWITCH: &str = "sched_switch";
    pub const PROG_SCHED_WAKEUP: &str = "sched_wakeup";
    pub const PROG_SYS_EXIT: &str = "sys_exit";
    /// LRU map tid → [`super::TstateEntry`].
    pub const MAP_TSTATE_CACHE: &str = "TSTATE_CACHE";
    /// Hash map tgid → [`super::PyProcInfo`] of CPython processes.
    pub const MAP_PY_PROCS: &str = "PY_PROCS";
    /// Ring buffer of events.
    pub const MAP_EVENTS: &str = "EVENTS";
    /// Per-CPU `u64` counters indexed by [`super::stat`].
    pub const MAP_STATS: &str = "STATS";
    /// The perf-event sampling program.
    pub const PROG_ON_CPU: &str = "on_cpu_sample";
    /// The `sched_process_exec` raw tracepoint program.
    pub const PROG_EXEC: &str = "process_exec";
    /// The `sched_process_fork` raw tracepoint program (process trees).
    pub const PROG_FORK: &str = "process_fork";
    /// The `sched_process_exit` and `task_rename` raw tracepoint programs (thread and process
    /// life, see [`super::lifecycle`]).
    pub const PROG_EXIT: &str = "process_exit";
    pub const PROG_RENAME: &str = "task_rename";
    /// [`super::lifecycle::LifecycleOffsets`] global: where the exit hook finds `signal->live`.
    pub const GLOBAL_LIFECYCLE_OFFSETS: &str = "LIFECYCLE_OFFSETS";
    /// `u8` global: 1 = walk native stacks with the DWARF unwinder (`--native`).
    pub const GLOBAL_NATIVE: &str = "NATIVE";
    /// `u32` global: offset of `stack` in `task_struct` (from kernel BTF): where a task's user
    /// registers are when a sample interrupts it in the kernel.
    pub const GLOBAL_TASK_STACK_OFFSET: &str = "TASK_STACK_OFFSET";
    /// [`super::wait_target::WaitTargetOffsets`] global: kernel offsets for naming wait targets.
    pub const GLOBAL_WAIT_TARGET_OFFSETS: &str = "WAIT_TARGET_OFFSETS";
    /// Arrays of row pairs (`u64`, see [`super::unwind::row_of_pair`]), [`super::unwind::PageEntry`],
    /// [`super::unwind::RuleRec`], [`super::unwind::TableInfo`], [`super::unwind::Mapping`].
    pub const MAP_UNWIND_ROWS: &str = "UNWIND_ROWS";
    pub const MAP_UNWIND_PAGES: &str = "UNWIND_PAGES";
    pub const MAP_UNWIND_RULES: &str = "UNWIND_RULES";
    pub const MAP_UNWIND_TABLES: &str = "UNWIND_TABLES";
    pub const MAP_UNWIND_MAPPINGS: &str = "UNWIND_MAPPINGS";
    /// Hash map tgid → [`super::unwind::ProcMaps`].
    pub const MAP_UNWIND_PROCS: &str = "UNWIND_PROCS";
    /// Per-CPU array of [`super::UnwindScratch`], one per [`super::scratch_slot`].
    pub const MAP_UNWIND_SCRATCH: &str = "UNWIND_SCRATCH";
    /// Program arrays the sampling programs tail-call the unwinder through (a program array
    /// holds programs of one type).
    pub const MAP_UNWIND_PROGS_PERF: &str = "UNWIND_PROGS_PERF";
    pub const MAP_UNWIND_PROGS_RAW_TP: &str = "UNWIND_PROGS_RAW_TP";
    /// The unwinder: a perf-event program for on-CPU samples, raw tracepoint programs for
    /// off-CPU stacks (one per scratch slot).
    pub const PROG_UNWIND_PERF: &str = "unwind_native_on_cpu";
    pub const PROG_UNWIND_SYS_EXIT: &str = "unwind_native_sys_exit";
    pub const PROG_UNWIND_SCHED_SWITCH: &str = "unwind_native_sched_switch";
    /// The raw tracepoint unwinders and their slot in the raw tracepoint program array.
    pub const RAW_TP_UNWINDERS: [(&str, u32); 2] = [
        (PROG_UNWIND_SYS_EXIT, super::scratch_slot::SYS_EXIT),
        (PROG_UNWIND_SCHED_SWITCH, super::scratch_slot::SCHED_SWITCH),
    ];

    /// Per-CPU array, one per [`super::scratch_slot`], of the Python unwinder's window of a
    /// thread's frame memory (two `u64` bounds and 1 KiB; kernel side only).
    pub const MAP_PY_WINDOWS: &str = "PY_WINDOWS";
    /// Per-CPU array, one per [`super::scratch_slot`], of
    /// [`super::sample_record::SampleRecord`]: where a sample is packed before it is sent
    /// (kernel side only).
    pub const MAP_SAMPLE_OUT: &str = "SAMPLE_OUT";

    /// Every map of the object.
    pub const MAPS: [&str; 21] = [
        MAP_EVENTS,
        MAP_STATS,
        MAP_TARGET_PIDS,
        MAP_FOLLOWED,
        MAP_PY_PROCS,
        MAP_TSTATE_CACHE,
        MAP_OFFCPU_SUMS,
        MAP_THREAD_TIMES,
        MAP_IN_FLIGHT,
        MAP_UNWIND_ROWS,
        MAP_UNWIND_PAGES,
        MAP_UNWIND_RULES,
        MAP_UNWIND_TABLES,
        MAP_UNWIND_MAPPINGS,
        MAP_UNWIND_PROCS,
        MAP_UNWIND_SCRATCH,
        MAP_UNWIND_PROGS_PERF,
        MAP_UNWIND_PROGS_RAW_TP,
        MAP_EXIT_GATE,
        MAP_PY_WINDOWS,
        MAP_SAMPLE_OUT,
    ];
    /// Every global of the object, with its size in bytes.
    pub const GLOBALS: [(&str, usize); 16] = [
        (GLOBAL_TARGET_ALL, 1),
        (GLOBAL_KERNEL_STACKS, 1),
        (GLOBAL_SELF_PID, 4),
        (GLOBAL_FSBASE_OFFSET, 4),
        (GLOBAL_PY_MAX_DEPTH, 4),
        (GLOBAL_OFFCPU, 1),
        (GLOBAL_OFFCPU_THRESHOLD_NS, 8),
        (GLOBAL_OFFCPU_STACK_COST_NS, 8),
        (GLOBAL_TASK_PID_OFFSET, 4),
        (GLOBAL_TASK_TGID_OFFSET, 4),
        (GLOBAL_TASK_FLAGS_OFFSET, 4),
        (GLOBAL_NATIVE, 1),
        (GLOBAL_TASK_STACK_OFFSET, 4),
        (GLOBAL_TASK_STATE_OFFSET, 4),
        (GLOBAL_WAIT_TARGET_OFFSETS, size_of::<super::wait_target::WaitTargetOffsets>()),
        (GLOBAL_LIFECYCLE_OFFSETS, size_of::<super::lifecycle::LifecycleOffsets>()),
    ];
    /// The raw tracepoint programs and the tracepoint each is attached to.
    pub const RAW_TRACEPOINTS: [(&str, &str); 7] = [
        (PROG_EXEC, "sched_process_exec"),
        (PROG_FORK, "sched_process_fork"),
        (PROG_SCHED_SWITCH, "sched_switch"),
        (PROG_SCHED_WAKEUP, "sched_wakeup"),
        (PROG_SYS_EXIT, "sys_exit"),
        (PROG_EXIT, "sched_process_exit"),
        (PROG_RENAME, "task_rename"),
    ];
    /// Every program of the object: the perf-event sampler, the raw tracepoints, and the
    /// unwinders they tail-call.
    pub const PROGRAMS: [&str; 11] = [
        PROG_ON_CPU,
        RAW_TRACEPOINTS[0].0,
        RAW_TRACEPOINTS[1].0,
        RAW_TRACEPOINTS[2].0,
        RAW_TRACEPOINTS[3].0,
        RAW_TRACEPOINTS[4].0,
        PROG_UNWIND_PERF,
        RAW_TP_UNWINDERS[0].0,
        RAW_TP_UNWINDERS[1].0,
        RAW_TRACEPOINTS[5].0,
        RAW_TRACEPOINTS[6].0,
    ];
}

/// Lets aya copy these types in and out of maps and ring-buffer records as bytes.
#[cfg(feature = "user")]
macro_rules! pod {
    ($($ty:ty),* $(,)?) => {$(
        // SAFETY: repr(C), made of integers (and arrays and structs of them) that any bit
        // pattern is valid for, with no padding (the layout checks below): plain old data.
        unsafe impl aya::Pod for $ty {}
    )*};
}

#[cfg(feature = "user")]
pod!(
    SampleEvent,
    ExecEvent,
    ForkEvent,
    ThreadMissEvent,
    PreemptEndEvent,
    PyProcInfo,
    PyFrameRecord,
    OffCpuInfo,
    OffCpuKey,
    TstateEntry,
    OffCpuSum,
    ThreadTimes,
    InFlight,
    exit_gate::ExitGate,
    unwind::PageEntry,
    unwind::RuleRec,
    unwind::TableInfo,
    unwind::Mapping,
    unwind::ProcMaps,
    wait_target::WaitTargetEvent,
    wait_target::WaitTargetOffsets,
);

// Layout checks: a mismatch here is a compile error on both sides. Each size is the sum of the
// type's fields, so a field added without its share of padding, or padding the compiler inserts,
// fails here rather than as garbage in a map.
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<ExecEvent>() == 4 + 4);
    assert!(size_of::<ForkEvent>() == 4 * 4);
    assert!(size_of::<ThreadMissEvent>() == 3 * 4 + 4 + 8);
    assert!(size_of::<PreemptEndEvent>() == 4 * 4 + 2 * 8);
    assert!(size_of::<TstateEntry>() == 2 * 8);
    assert!(size_of::<PyFrameRecord>() == 2 * 8 + 2 * 4);
    assert!(size_of::<OffCpuInfo>() == 4 * 8 + 2 * 4);
    assert!(size_of::<OffCpuKey>() == 2 * 4 + 2 * 8);
    assert!(size_of::<OffCpuSum>() == 3 * 8);
    assert!(size_of::<ThreadTimes>() == 4 * 8 + 2 * 4 + 3 * 8);
    assert!(size_of::<InFlight>() == 5 * 8 + 2 * 4);
    assert!(size_of::<exit_gate::ExitGate>() == 2 * 4 + 8);
    assert!(size_of::<PyProcInfo>() == 8 + 20 * 2);
    assert!(
        size_of::<SampleEvent>()
            == 4 * 4
                + 8
                + 4 * 4
                + TASK_COMM_LEN
                + size_of::<OffCpuInfo>()
                + 2 * 8 * MAX_NATIVE_FRAMES
                + size_of::<PyFrameRecord>() * MAX_PY_FRAMES
                + 8
                + 2 * 4
                + 8 * MAX_NATIVE_FRAMES
    );
    assert!(offset_of!(SampleEvent, user_sp) == 96 + 2 * 8 * MAX_NATIVE_FRAMES + 24 * MAX_PY_FRAMES);
    assert!(size_of::<unwind::UnwindRow>() == 4);
    assert!(size_of::<unwind::PageEntry>() == 4 + 2 + 2);
    assert!(size_of::<unwind::RuleRec>() == 1 + 1 + 2 + 4);
    assert!(size_of::<unwind::TableInfo>() == 4 * 4);
    assert!(size_of::<unwind::Mapping>() == 3 * 8 + 2 * 4);
    assert!(size_of::<unwind::ProcMaps>() == 2 * 4);
    assert!(size_of::<unwind::UnwindState>() == 3 * 8 + 6 * 4);
    assert!(size_of::<UnwindScratch>() == size_of::<unwind::UnwindState>() + size_of::<SampleEvent>());
    // A page of text has at most 2^16 rows: the search's bound covers it.
    assert!(1 << unwind::MAX_SEARCH_STEPS >= 1 << unwind::PAGE_BITS);
    assert!(1 << unwind::MAPPING_SEARCH_STEPS >= unwind::MAX_PROC_MAPPINGS);
    assert!(align_of::<SampleEvent>() == 8);
    // userspace decodes a SampleEvent field by field in this order (engine/events.rs).
    assert!(offset_of!(SampleEvent, time_ns) == 16);
    assert!(offset_of!(SampleEvent, kernel_stack_len) == 24);
    assert!(offset_of!(SampleEvent, comm) == 40);
    assert!(offset_of!(SampleEvent, off) == 56);
    assert!(offset_of!(SampleEvent, kernel_stack) == 96);
    assert!(offset_of!(SampleEvent, user_stack) == 96 + 8 * MAX_NATIVE_FRAMES);
    assert!(offset_of!(SampleEvent, py_frames) == 96 + 2 * 8 * MAX_NATIVE_FRAMES);
    // Every record starts with its EventKind as a u32.
    assert!(offset_of!(SampleEvent, kind) == 0);
    assert!(offset_of!(ExecEvent, kind) == 0);
    assert!(offset_of!(ForkEvent, kind) == 0);
    assert!(offset_of!(ThreadMissEvent, kind) == 0);
    assert!(offset_of!(PreemptEndEvent, kind) == 0);
};
