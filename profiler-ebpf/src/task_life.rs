//! Thread and process life for userspace (see `profiler_common::lifecycle`): a thread of a
//! tracked process exiting or renaming itself, and the last thread of a profiled process
//! exiting, sent as `TaskEvent`s, so that userspace drops what it keeps of them and reads
//! Python thread names when they change, without rescanning /proc. (New threads are reported
//! by the fork hook, `lifecycle.rs`.)
//!
//! Tasks of untracked processes return after one hash lookup (`PY_PROCS`; with explicit
//! targets a second, `TARGET_PIDS`); an exit also reads `signal->live` (two kernel reads) to
//! know whether the process is gone.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use profiler_common::{
    EventKind, TASK_COMM_LEN,
    lifecycle::{LifecycleOffsets, TaskEvent, task_flags},
    stat,
};

use crate::maps::{EVENTS, PY_PROCS, TARGET_PIDS, bump, is_target, self_pid, target_all, task_ids};

/// Kernel offsets, set by userspace before load (0 = unknown).
#[unsafe(no_mangle)]
static LIFECYCLE_OFFSETS: LifecycleOffsets = LifecycleOffsets { task_signal: 0, signal_live: 0 };

#[inline(always)]
fn offsets() -> LifecycleOffsets {
    unsafe { core::ptr::read_volatile(&LIFECYCLE_OFFSETS) }
}

/// Does userspace keep per-thread state of process `tgid`? Its CPython processes, and the
/// explicit targets (with `--all` every process is a target, but only Python ones are
/// tracked thread by thread).
#[inline(always)]
fn tracked(tgid: u32) -> bool {
    if tgid == self_pid() {
        return false;
    }
    PY_PROCS.get_ptr(&tgid).is_some() || (!target_all() && TARGET_PIDS.get_ptr(&tgid).is_some())
}

#[inline(always)]
fn send(kind: EventKind, pid: u32, tid: u32, flags: u32, comm: [u8; TASK_COMM_LEN]) {
    let event = TaskEvent { kind: kind as u32, pid, tid, flags, comm };
    if EVENTS.output::<TaskEvent>(&event, 0).is_err() {
        bump(stat::LOST);
    }
}

/// Is the exiting task (`task`, the current one) the last of its thread group? `do_exit`
/// has decremented `signal->live` before this tracepoint. `None` without the offsets.
#[inline(always)]
fn group_dead(task: u64) -> Option<bool> {
    let o = offsets();
    if o.task_signal == 0 || o.signal_live == 0 {
        return None;
    }
    let signal: u64 = unsafe { bpf_probe_read_kernel((task + o.task_signal as u64) as *const u64) }.ok()?;
    if signal == 0 {
        return None;
    }
    let live: i32 = unsafe { bpf_probe_read_kernel((signal + o.signal_live as u64) as *const i32) }.ok()?;
    Some(live == 0)
}

/// A raw tracepoint: `(struct task_struct *p)` (6.16+ adds `bool group_dead`, not read: see
/// `profiler_common::lifecycle`); `p` is the current task.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exit(ctx: RawTracePointContext) -> i32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if tgid == self_pid() {
        return 0;
    }
    let task: u64 = ctx.arg(0);
    let (dead, flags) = match group_dead(task) {
        Some(dead) => (dead, if dead { task_flags::GROUP_DEAD } else { 0 }),
        None if tid == tgid => (true, task_flags::GROUP_DEAD | task_flags::GROUP_GUESSED),
        None => (false, 0),
    };
    // A process userspace may know (every profiled one: it may have samples), or a thread of
    // one it tracks thread by thread.
    if !(dead && is_target(tgid)) && !tracked(tgid) {
        return 0;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    send(EventKind::Exit, tgid, tid, flags, comm);
    0
}

/// A raw tracepoint: `(struct task_struct *task, const char *comm)`, before the new name is
/// copied in; `task` need not be the current one (a write to /proc/PID/task/TID/comm).
#[raw_tracepoint(tracepoint = "task_rename")]
pub fn task_rename(ctx: RawTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    let Some((tid, tgid)) = task_ids(task) else { return 0 };
    if !tracked(tgid) {
        return 0;
    }
    let name: u64 = ctx.arg(1);
    let mut comm = [0u8; TASK_COMM_LEN];
    if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut comm) }.is_err() {
        return 0;
    }
    send(EventKind::Rename, tgid, tid, 0, comm);
    0
}
