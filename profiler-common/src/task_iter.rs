//! The task iterator (`iter/task`, `profiler-ebpf/src/task_iter.rs`): one [`TaskRecord`] per
//! thread of the processes userspace registered (`PY_PROCS`, `TARGET_PIDS`), written to the
//! iterator's seq file whenever userspace reads it. It sees threads the sampling and
//! scheduler hooks never see: one blocked since before tracking began, or through a whole
//! window, never runs, so no hook fires for it.
//!
//! Two builds of one program: with `bpf_task_pt_regs` (5.15+) the record carries the syscall a
//! blocked thread is in and its arguments; without, they come from
//! `/proc/PID/task/TID/syscall`. Task iterators (5.8) and `bpf_get_task_stack` (5.9) are
//! needed by both; on an older kernel neither loads and userspace goes without.

/// Kernel frames a record carries at most.
pub const TASK_KSTACK_MAX: usize = 48;

/// [`TaskRecord::flags`]: `syscall_nr`, `args`, `sp`, `ip` and `bp` were read from the task's
/// registers.
pub const TASK_HAS_REGS: u32 = 1;
/// [`TaskRecord::flags`]: `on_cpu` and `cpu` were read (`task_struct.on_cpu`, CONFIG_SMP).
pub const TASK_HAS_ON_CPU: u32 = 2;
/// [`TaskRecord::flags`]: `last_queued` was read (`sched_info`, CONFIG_SCHED_INFO), and with it
/// `rq_clock` when the task waits for a CPU (its run queue reached through `se.cfs_rq`,
/// CONFIG_FAIR_GROUP_SCHED).
pub const TASK_HAS_QUEUED: u32 = 4;

/// One thread, as the iterator saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub tgid: u32,
    pub tid: u32,
    /// `task_struct.__state` (`state` before 5.14): 0 running or runnable.
    pub state: u32,
    /// [`TASK_HAS_REGS`].
    pub flags: u32,
    /// The user fs base: `pthread_t`, which CPython 3.8–3.10 thread states are keyed by.
    pub fsbase: u64,
    /// `orig_ax`: the syscall the thread is in (-1 outside one), with [`TASK_HAS_REGS`].
    pub syscall_nr: i64,
    /// Its six arguments (di, si, dx, r10, r8, r9) and the user stack pointer.
    pub args: [u64; 6],
    pub sp: u64,
    /// Valid entries of `kstack` (leaf first).
    pub kstack_len: u32,
    pub _pad: u32,
    pub kstack: [u64; TASK_KSTACK_MAX],
    /// With [`TASK_HAS_REGS`]: the user instruction pointer and frame pointer saved when the
    /// thread entered the kernel (with `sp`, where `dump --native` starts its unwind).
    pub ip: u64,
    pub bp: u64,
    /// With [`TASK_HAS_ON_CPU`]: 1 while the task is on a CPU (`task_struct.on_cpu`: set before
    /// the switch to it, cleared after the switch away), else 0. A task in state 0 that is not
    /// on a CPU is waiting for one (preempted, or woken and not yet run).
    pub on_cpu: u32,
    /// With [`TASK_HAS_ON_CPU`]: the CPU it is on, is queued on, or last ran on
    /// (`thread_info.cpu`, `task_struct.cpu` before 5.16).
    pub cpu: u32,
    /// With [`TASK_HAS_QUEUED`]: when it began to wait for a CPU (`sched_info.last_queued`, its
    /// run queue's clock at the enqueue or preemption; 0 when not waiting).
    pub last_queued: u64,
    /// With [`TASK_HAS_QUEUED`] and `last_queued` set: that run queue's clock (`rq->clock`,
    /// updated at every tick and scheduling event of its CPU), the same clock as
    /// `last_queued`; 0 when not read.
    pub rq_clock: u64,
}

impl TaskRecord {
    pub const fn zeroed() -> Self {
        TaskRecord {
            tgid: 0,
            tid: 0,
            state: 0,
            flags: 0,
            fsbase: 0,
            syscall_nr: -1,
            args: [0; 6],
            sp: 0,
            kstack_len: 0,
            _pad: 0,
            kstack: [0; TASK_KSTACK_MAX],
            ip: 0,
            bp: 0,
            on_cpu: 0,
            cpu: 0,
            last_queued: 0,
            rq_clock: 0,
        }
    }
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(TaskRecord, fsbase) == 16);
    assert!(offset_of!(TaskRecord, args) == 32);
    assert!(offset_of!(TaskRecord, kstack_len) == 88);
    assert!(offset_of!(TaskRecord, on_cpu) == 112 + 8 * TASK_KSTACK_MAX);
    assert!(size_of::<TaskRecord>() == 136 + 8 * TASK_KSTACK_MAX);
};

/// The iterator with `bpf_task_pt_regs` (5.15+), and the one without; userspace loads the
/// first that the kernel accepts.
pub const PROG_TASK_THREADS: &str = "task_threads";
pub const PROG_TASK_THREADS_NO_REGS: &str = "task_threads_no_regs";
/// Both, for the contract test.
pub const PROGRAMS: [&str; 2] = [PROG_TASK_THREADS, PROG_TASK_THREADS_NO_REGS];
/// The kernel's iterator target (`bpf_iter_task`).
pub const ITER_TARGET: &str = "task";

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no padding (checked above).
unsafe impl aya::Pod for TaskRecord {}

/// Per-CPU array of one [`TaskRecord`]: where the iterator builds a record (too big for the
/// BPF stack).
pub const MAP_TASK_SCRATCH: &str = "TASK_SCRATCH";
/// Maps of the iterator, for the contract test.
pub const MAPS: [&str; 1] = [MAP_TASK_SCRATCH];

/// Kernel offsets the iterator reads a task's CPU state at (from BTF, as the other task
/// offsets are; 0 = not in this kernel, the field is then not read).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskSchedOffsets {
    /// `task_struct.on_cpu` (CONFIG_SMP).
    pub on_cpu: u32,
    /// `task_struct.thread_info.cpu` (5.16+), else `task_struct.cpu`.
    pub cpu: u32,
    /// `task_struct.sched_info.last_queued` (CONFIG_SCHED_INFO).
    pub last_queued: u32,
    /// `task_struct.se.cfs_rq`, `cfs_rq.rq` (CONFIG_FAIR_GROUP_SCHED) and `rq.clock`: the run
    /// queue a task waits on, and its clock.
    pub se_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    pub rq_clock: u32,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), u32s only, no padding.
unsafe impl aya::Pod for TaskSchedOffsets {}

/// The [`TaskSchedOffsets`] global of the iterator.
pub const GLOBAL_TASK_SCHED_OFFSETS: &str = "TASK_SCHED_OFFSETS";
/// Globals of the iterator, with their sizes, for the contract test.
pub const GLOBALS: [(&str, usize); 1] = [(GLOBAL_TASK_SCHED_OFFSETS, size_of::<TaskSchedOffsets>())];
