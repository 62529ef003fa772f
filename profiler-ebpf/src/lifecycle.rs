//! Process trees: the children of a followed process are profiled from their first instruction.
//!
//! `sched_process_fork` runs in the parent once the child is fully set up (its `tgid` is set)
//! and before the child is first woken, so a child added to `TARGET_PIDS` here cannot run one
//! instruction unprofiled, and its own children are followed in turn. Only this is done here:
//! the child of a process in `FOLLOWED` becomes a target and followed, inherits its parent's
//! CPython layout (a forked child is a copy of the parent's memory), and userspace is told
//! with a `Fork` event (it names the process and learns its parent). A new thread or child of a
//! tracked process gets its first off-CPU interval opened (`off_cpu::open_first_wait`), and a
//! new thread of a CPython process is announced (`ThreadStart`: userspace reads its Python
//! name). Forks of other processes return at once: three hash lookups per fork.
//! An exec keeps the pid, so an exec'd child stays followed (`exec.rs` reports the exec).
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext};
use profiler_common::{EventKind, ForkEvent, TASK_COMM_LEN, fork_flags, lifecycle::TaskEvent, stat};

use crate::{
    maps::{EVENTS, FOLLOWED, PY_PROCS, TARGET_PIDS, bump, is_offcpu_target, self_pid, task_ids},
    off_cpu,
};

/// A raw tracepoint: `(struct task_struct *parent, struct task_struct *child)`; the parent is
/// the current task.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn process_fork(ctx: RawTracePointContext) -> i32 {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let followed = FOLLOWED.get_ptr(&parent).is_some();
    // A CPython process's new thread is announced (its Python name is read then), whether or
    // not off-CPU time is tracked.
    let python = parent != self_pid() && PY_PROCS.get_ptr(&parent).is_some();
    if !followed && !python && !is_offcpu_target(parent) {
        return 0;
    }
    let child_task: u64 = ctx.arg(1);
    let Some((child_tid, child)) = task_ids(child_task) else { return 0 };
    if child == parent {
        // A new thread: profiled with its process; its time counts from now.
        off_cpu::open_first_wait(child_tid, child);
        if python {
            let event = TaskEvent {
                kind: EventKind::ThreadStart as u32,
                pid: child,
                tid: child_tid,
                flags: 0,
                comm: [0; TASK_COMM_LEN],
            };
            if EVENTS.output::<TaskEvent>(&event, 0).is_err() {
                bump(stat::LOST);
            }
        }
        return 0;
    }
    if !followed || child == 0 {
        return 0;
    }
    let mut flags = 0;
    // A local, not `&1`: a promoted constant would be a global of its own in the object.
    let one: u8 = 1;
    if TARGET_PIDS.insert(&child, &one, 0).is_ok() && FOLLOWED.insert(&child, &one, 0).is_ok() {
        flags |= fork_flags::FOLLOWED;
    } else {
        bump(stat::FOLLOW_FULL);
    }
    if let Some(info) = unsafe { PY_PROCS.get(&parent) } {
        let info = *info;
        if PY_PROCS.insert(&child, &info, 0).is_ok() {
            flags |= fork_flags::PYTHON_COPIED;
        }
    }
    // After the maps above: they make it a target.
    off_cpu::open_first_wait(child_tid, child);
    let event = ForkEvent { kind: EventKind::Fork as u32, pid: child, ppid: parent, flags };
    if EVENTS.output::<ForkEvent>(&event, 0).is_err() {
        bump(stat::LOST);
    }
    0
}
