//! Types that cross the kernel/userspace boundary.
//!
//! Every type here is `#[repr(C)]`, made of plain integers, and laid out without implicit padding,
//! so the eBPF programs (`profiler-ebpf`) and the daemon (`profiler`) agree on it byte for byte.
//! Both sides are always built together from one tree, so there is no cross-version compatibility
//! to keep: change a type, and both ends change with it.
#![no_std]

/// Deepest native stack `bpf_get_stack` records (the kernel's default `perf_event_max_stack`).
pub const MAX_NATIVE_FRAMES: usize = 127;
/// Length of a task's `comm` (thread name), NUL padded.
pub const TASK_COMM_LEN: usize = 16;

/// What a ring-buffer record holds; the first `u32` of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A `cpu-clock` sample of a running thread: a [`SampleEvent`].
    OnCpuSample = 1,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::OnCpuSample),
            _ => None,
        }
    }
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
    /// Number of valid entries in `kernel_stack` (0 when not asked for or unavailable).
    pub kernel_stack_len: u32,
    /// Number of valid entries in `user_stack` (0 for kernel threads or on fault).
    pub user_stack_len: u32,
    /// Thread name at sample time.
    pub comm: [u8; TASK_COMM_LEN],
    pub kernel_stack: [u64; MAX_NATIVE_FRAMES],
    pub user_stack: [u64; MAX_NATIVE_FRAMES],
}

/// Indices into the per-CPU `STATS` counter array.
pub mod stat {
    /// Samples dropped because the ring buffer was full.
    pub const LOST: u32 = 0;
    /// Number of counters.
    pub const COUNT: u32 = 1;
}

/// Names of the globals and maps the userspace loader addresses by name.
pub mod names {
    /// `u8` global: 1 = sample every process on the host, 0 = only pids in `TARGET_PIDS`.
    pub const GLOBAL_TARGET_ALL: &str = "TARGET_ALL";
    /// `u8` global: 1 = record kernel stacks.
    pub const GLOBAL_KERNEL_STACKS: &str = "KERNEL_STACKS";
    /// `u32` global: the profiler's own pid, never sampled.
    pub const GLOBAL_SELF_PID: &str = "SELF_PID";
    /// Hash map tgid → 1 of profiled processes when `TARGET_ALL` is 0.
    pub const MAP_TARGET_PIDS: &str = "TARGET_PIDS";
    /// Ring buffer of events.
    pub const MAP_EVENTS: &str = "EVENTS";
    /// Per-CPU `u64` counters indexed by [`super::stat`].
    pub const MAP_STATS: &str = "STATS";
    /// The perf-event sampling program.
    pub const PROG_ON_CPU: &str = "on_cpu_sample";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), no padding.
    unsafe impl aya::Pod for super::SampleEvent {}
}

// Layout checks: a mismatch here is a compile error on both sides.
const _: () = assert!(core::mem::size_of::<SampleEvent>() == 48 + 2 * 8 * MAX_NATIVE_FRAMES);
const _: () = assert!(core::mem::align_of::<SampleEvent>() == 8);
