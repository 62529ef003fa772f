//! Off-CPU time: why and how long each profiled thread is not running.
//!
//! - `sched_process_fork` (from `lifecycle.rs`): opens a new thread's first interval, its
//!   run-queue wait before it first runs.
//! - `sched_switch`: closes the on-CPU interval of the thread going out and opens its off-CPU
//!   interval; closes the off-CPU interval of the thread coming in, splitting it into blocked
//!   time and run-queue wait (from `sched_wakeup`; a wakeup not seen, from the scheduler's
//!   stamp: `unseen_wakeup.rs`), and adds it to that thread's exact sums,
//!   keyed by the syscall it is blocked in.
//! - The syscall in flight per thread (number, first argument) is recorded at its first
//!   switch-out, from the thread's saved user registers (`syscall_regs.rs`): no program runs
//!   at `sys_enter`, and a call that never switches out costs `sys_exit` one per-CPU read (the
//!   gate, `profiler_common::exit_gate`). A syscall whose blocked time reaches the threshold is
//!   reported at `sys_exit` with the thread's stacks: the thread is back in its own context
//!   there, and its Python and user stacks are still the ones it blocked in, so one unwind
//!   covers every switch of the call.
//!
//! `sched_switch` reads arguments 0–2 only (preempt, prev, next): the fourth, `prev_state`, exists
//! since 5.18, and the kernel refuses to attach a raw tracepoint program that reads past the
//! tracepoint's arguments (EINVAL on 5.10). Prev's state is read from the task instead.
//!
//! Only threads of Python processes (or explicitly targeted ones) are tracked; everything is
//! per-tid, never per-CPU, since a thread can block on one CPU and wake on another.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use profiler_common::{
    EventKind, OffCpuInfo, OffCpuKey, OffCpuSum, PreemptEndEvent, ThreadTimes, child_wait, exit_gate::ExitGate,
    futex_arg, off_state, poll_arg, scratch_slot, split_off_interval, stat,
};

use crate::{
    maps::{
        EVENTS, EXIT_GATE, IN_FLIGHT, OFFCPU_SUMS, THREAD_TIMES, UNWIND_PROGS_RAW_TP, UNWIND_SCRATCH, bump,
        is_offcpu_target, offcpu_stack_cost_ns, offcpu_threshold_ns, task_ids, task_state_offset,
    },
    native, stacks, syscall_regs, unseen_wakeup, wait_target,
};

/// Task state bit of an uninterruptible sleep.
const TASK_UNINTERRUPTIBLE: u64 = 0x2;

/// The switched-out task's state (`__state`, or the low half of `state` before 5.14): 0 when
/// runnable, `TASK_UNINTERRUPTIBLE` set in a `D` sleep. Without the offset (a kernel whose BTF
/// lacks both; userspace warns) every voluntary switch counts as an interruptible sleep.
#[inline(always)]
fn prev_task_state(prev: u64) -> u64 {
    let off = task_state_offset();
    if off == 0 {
        return 1;
    }
    unsafe { bpf_probe_read_kernel((prev + off as u64) as *const u32) }.map_or(1, |s| s as u64)
}

/// Takes one off-CPU stack from the thread's budget, if it has one left (see
/// `ThreadTimes::take_stack_credit` for why there is a budget).
#[inline(always)]
fn take_stack_budget(t: &mut ThreadTimes, now: u64) -> bool {
    let taken = t.take_stack_credit(offcpu_stack_cost_ns(), now);
    if !taken {
        bump(stat::OFFCPU_SAMPLED_OUT);
    }
    taken
}

#[inline(always)]
fn times(tid: u32, tgid: u32) -> Option<*mut ThreadTimes> {
    if let Some(t) = THREAD_TIMES.get_ptr_mut(&tid) {
        return Some(t);
    }
    // A new thread starts with a full stack budget.
    let fresh = ThreadTimes::new(tgid, offcpu_stack_cost_ns(), unsafe { bpf_ktime_get_ns() });
    THREAD_TIMES.insert(&tid, &fresh, 0).ok()?;
    THREAD_TIMES.get_ptr_mut(&tid)
}

/// Closes the off-CPU interval of `next` (thread `next_tid` of tracked process `next_tgid`),
/// the thread coming in, and opens its on-CPU one. Arms this CPU's exit gate (disarmed by the
/// caller) when `next` is in a syscall on record: its `sys_exit`, on this CPU before any other
/// switch, is the one to look at.
#[inline(always)]
fn account_incoming(next: u64, next_tid: u32, next_tgid: u32, now: u64, gate: Option<*mut ExitGate>) {
    let Some(t) = times(next_tid, next_tgid) else { return };
    let t = unsafe { &mut *t };
    let call = IN_FLIGHT.get_ptr_mut(&next_tid);
    if call.is_some()
        && let Some(g) = gate
    {
        unsafe { (*g).armed_tid = next_tid };
    }
    if t.off_since_ns != 0 {
        // A sleep whose wakeup was not seen: its wait from the scheduler's stamp.
        let wake_ns = if t.off_state != off_state::RUNNABLE && (t.wake_ns < t.off_since_ns || t.wake_ns > now) {
            unseen_wakeup::wait_start(next, t.off_since_ns, now).unwrap_or(0)
        } else {
            t.wake_ns
        };
        let (blocked, runq) = split_off_interval(t.off_state, t.off_since_ns, wake_ns, now);
        let mut key = OffCpuKey { tid: next_tid, state: t.off_state, syscall_nr: -1, arg0: 0 };
        let in_syscall = call.is_some();
        if t.off_state == off_state::RUNNABLE && !in_syscall && runq >= offcpu_threshold_ns() {
            let end = PreemptEndEvent {
                kind: EventKind::PreemptEnd as u32,
                pid: next_tgid,
                tid: next_tid,
                _pad: 0,
                since_ns: t.off_since_ns,
                runq_ns: runq,
            };
            if EVENTS.output::<PreemptEndEvent>(&end, aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64).is_err() {
                bump(stat::LOST);
            }
        }
        if let Some(call) = call {
            let call = unsafe { &mut *call };
            key.syscall_nr = call.syscall_nr;
            key.arg0 = call.arg0;
            call.blocked_ns += blocked;
            call.runq_ns += runq;
            call.state = t.off_state;
            call.switches += 1;
        }
        match OFFCPU_SUMS.get_ptr_mut(&key) {
            Some(sum) => unsafe {
                (*sum).blocked_ns += blocked;
                (*sum).runq_ns += runq;
                (*sum).count += 1;
            },
            None => {
                let _ = OFFCPU_SUMS.insert(&key, &OffCpuSum { blocked_ns: blocked, runq_ns: runq, count: 1 }, 0);
            }
        }
    }
    t.on_since_ns = now;
    t.off_since_ns = 0;
    t.wake_ns = 0;
}

/// Opens the first off-CPU interval of a thread or process being created (at
/// `sched_process_fork`, before it is first woken): it waits on the run queue from its
/// creation to its first run, and the scheduler counts that wait (`run_delay`), so we do too.
/// Without this its entry would be made at its first switch-in, that wait lost. An entry left
/// by an exited thread whose tid is reused is replaced: it is a new thread.
#[inline(always)]
pub fn open_first_wait(tid: u32, tgid: u32) {
    if tid == 0 || !is_offcpu_target(tgid) {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let fresh = ThreadTimes {
        off_since_ns: now,
        off_state: off_state::RUNNABLE,
        ..ThreadTimes::new(tgid, offcpu_stack_cost_ns(), now)
    };
    let _ = THREAD_TIMES.insert(&tid, &fresh, 0);
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    // Every switch disarms this CPU's exit gate; the incoming thread may arm it again.
    let gate = EXIT_GATE.get_ptr_mut(0);
    if let Some(g) = gate {
        unsafe { (*g).armed_tid = 0 };
    }
    let next_ids = task_ids(next).filter(|&(tid, tgid)| tid != 0 && is_offcpu_target(tgid));
    // The thread going out is the current one.
    let pid_tgid = bpf_get_current_pid_tgid();
    let (prev_tgid, prev_tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let prev_ids = (prev_tid != 0 && is_offcpu_target(prev_tgid)).then_some((prev_tid, prev_tgid));
    // Most switches of the host are of untracked tasks: no clock read for them.
    if prev_ids.is_none() && next_ids.is_none() {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // The thread coming in first: the outgoing one's stack may be walked by a tail call to
    // the native unwinder below, which never returns here.
    if let Some((next_tid, next_tgid)) = next_ids {
        account_incoming(next, next_tid, next_tgid, now, gate);
    }

    if let Some((prev_tid, prev_tgid)) = prev_ids
        && let Some(t) = times(prev_tid, prev_tgid)
    {
        let t = unsafe { &mut *t };
        t.oncpu_ns = t.oncpu_ns_at(now);
        t.on_since_ns = 0;
        t.off_since_ns = now;
        t.wake_ns = 0;
        let prev_state = prev_task_state(prev);
        t.off_state = if preempt & 1 != 0 || prev_state == 0 {
            off_state::RUNNABLE
        } else if prev_state & TASK_UNINTERRUPTIBLE != 0 {
            off_state::UNINTERRUPTIBLE
        } else {
            off_state::SLEEPING
        };
        let regs_offset = gate.map_or(0, |g| unsafe { (*g).regs_offset });
        let in_syscall = syscall_regs::track_current_syscall(prev_tid, regs_offset, now);
        // Preempted outside a syscall: no sys_exit will come to take the stack it waits
        // in, so take it now, in its own context; userspace keeps it until the wait's end.
        if t.off_state == off_state::RUNNABLE
            && !in_syscall
            && take_stack_budget(t, now)
            && let Some(s) = UNWIND_SCRATCH.get_ptr_mut(scratch_slot::SCHED_SWITCH)
        {
            // SAFETY: this CPU's record for sched_switch; built here, sent by the unwinder.
            let s = unsafe { &mut *s };
            unsafe {
                stacks::fill(ctx.as_ptr(), &mut s.ev, EventKind::Preempted as u32, prev_tgid, prev_tid);
            }
            s.ev.time_ns = now;
            if native::prepare(s, prev_tgid, native::current_user_regs) {
                native::start(&ctx, &UNWIND_PROGS_RAW_TP, scratch_slot::SCHED_SWITCH);
            }
            unsafe { stacks::frame_pointer_stack(ctx.as_ptr(), &mut s.ev) };
            native::submit(s);
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(ctx: RawTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    let Some((tid, _)) = task_ids(task) else { return 0 };
    if let Some(t) = THREAD_TIMES.get_ptr_mut(&tid) {
        let t = unsafe { &mut *t };
        if t.off_since_ns != 0 && t.wake_ns == 0 {
            t.wake_ns = unsafe { bpf_ktime_get_ns() };
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let Some(g) = EXIT_GATE.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot; sched_switch writes it only on this CPU, between our runs.
    let g = unsafe { &mut *g };
    // The syscall's own pt_regs are task_pt_regs(current): where sched_switch finds them.
    if g.regs_offset == 0 {
        g.regs_offset = syscall_regs::learn_regs_offset(ctx.arg(0));
    }
    // The common case: a syscall that never switched out while tracked (nothing armed).
    if g.armed_tid == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if g.armed_tid != tid {
        return 0;
    }
    g.armed_tid = 0;
    let Some(call) = (unsafe { IN_FLIGHT.get(&tid) }) else { return 0 };
    let call = *call;
    let _ = IN_FLIGHT.remove(&tid);
    if call.switches == 0 || call.blocked_ns + call.runq_ns < offcpu_threshold_ns() || !is_offcpu_target(tgid) {
        return 0;
    }
    let Some(t) = THREAD_TIMES.get_ptr_mut(&tid) else { return 0 };
    if !take_stack_budget(unsafe { &mut *t }, unsafe { bpf_ktime_get_ns() }) {
        return 0;
    }
    // What the descriptor waited on was, sent ahead of the stack (the poll family's and
    // futex's recorded arguments are not descriptors).
    // A child wait's is not recorded at all.
    if !poll_arg::is_poll_family(call.syscall_nr)
        && call.syscall_nr != futex_arg::SYS_FUTEX
        && !child_wait::is_child_wait(call.syscall_nr)
    {
        wait_target::send(tgid, tid, call.syscall_nr, call.arg0);
    }
    let Some(s) = UNWIND_SCRATCH.get_ptr_mut(scratch_slot::SYS_EXIT) else { return 0 };
    // SAFETY: this CPU's record for sys_exit; built here, sent by the unwinder (or below).
    let s = unsafe { &mut *s };
    unsafe { stacks::fill(ctx.as_ptr(), &mut s.ev, EventKind::OffCpu as u32, tgid, tid) };
    s.ev.off = OffCpuInfo {
        blocked_ns: call.blocked_ns,
        runq_ns: call.runq_ns,
        syscall_nr: call.syscall_nr,
        arg0: call.arg0,
        state: call.state,
        switches: call.switches,
    };
    // The syscall's own pt_regs hold the user context it returns to.
    let regs: u64 = ctx.arg(0);
    if native::prepare(s, tgid, || native::regs_at(regs)) {
        native::start(&ctx, &UNWIND_PROGS_RAW_TP, scratch_slot::SYS_EXIT);
    }
    unsafe { stacks::frame_pointer_stack(ctx.as_ptr(), &mut s.ev) };
    native::submit(s);
    0
}
