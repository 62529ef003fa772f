//! Thread and process life from the kernel's own events (issue 13): a thread of a tracked
//! process starting ([`EventKind::ThreadStart`](super::EventKind::ThreadStart), from the fork
//! hook), renaming itself ([`EventKind::Rename`](super::EventKind::Rename), `task_rename`) and
//! exiting ([`EventKind::Exit`](super::EventKind::Exit), `sched_process_exit`), so userspace
//! learns them as they happen instead of rescanning /proc.
//!
//! Whether an exiting thread is the last of its process is the kernel's `signal->live` count,
//! already decremented when the tracepoint runs (`do_exit`); it is read at offsets from the
//! kernel's BTF ([`LifecycleOffsets`], one load-time global). The tracepoint's own
//! `group_dead` argument exists only since Linux 6.16, and a raw tracepoint program reading
//! past a tracepoint's arguments does not attach on older kernels.

use crate::TASK_COMM_LEN;

/// One thread's start, rename or exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// [`EventKind`](super::EventKind) as `u32`.
    pub kind: u32,
    /// Its process (tgid).
    pub pid: u32,
    /// The thread (the kernel's pid).
    pub tid: u32,
    /// [`task_flags`] bits.
    pub flags: u32,
    /// Its name: the new one for a rename, the last one at exit (empty for a start).
    pub comm: [u8; TASK_COMM_LEN],
}

/// Bits of [`TaskEvent::flags`].
pub mod task_flags {
    /// Exit: the thread was the last of its process (the process is gone).
    pub const GROUP_DEAD: u32 = 1;
    /// Exit: the kernel's BTF did not give `signal->live`: [`GROUP_DEAD`] says only that the
    /// main thread exited (a process whose main thread exits first is missed until the
    /// safety-net rescan).
    pub const GROUP_GUESSED: u32 = 2;
}

/// Kernel struct offsets the exit hook reads (from BTF; 0 = unknown).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleOffsets {
    /// `task_struct.signal` (a pointer).
    pub task_signal: u32,
    /// `signal_struct.live` (an `atomic_t`).
    pub signal_live: u32,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and a byte array, no padding (checked below): plain old data.
unsafe impl aya::Pod for TaskEvent {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for LifecycleOffsets {}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<TaskEvent>() == 4 * 4 + TASK_COMM_LEN);
    assert!(offset_of!(TaskEvent, kind) == 0);
    assert!(size_of::<LifecycleOffsets>() == 2 * 4);
};
