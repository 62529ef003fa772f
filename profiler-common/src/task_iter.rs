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
        }
    }
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(TaskRecord, fsbase) == 16);
    assert!(offset_of!(TaskRecord, args) == 32);
    assert!(offset_of!(TaskRecord, kstack_len) == 88);
    assert!(size_of::<TaskRecord>() == 112 + 8 * TASK_KSTACK_MAX);
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
