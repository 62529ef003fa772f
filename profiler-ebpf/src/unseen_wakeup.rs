//! A sleep whose wakeup no program of ours saw (issue 15, sixth pass).
//!
//! `sched_switch` splits a sleep at its wakeup, taken by `sched_wakeup`. Some wakeups never
//! reach that program though ftrace records them at the same tracepoint: measured here, a
//! block-I/O completion running in a softirq on top of one particular thread (another
//! process's), with no recursion miss counted on our program. The sleep then came out
//! blocked all along, its run-queue wait included (10-100 ms under load: up to 2.5 points of
//! a 4 s life in one missed wakeup). A thread being switched in after a sleep was woken, only
//! not seen: at its switch-in the scheduler's own stamp says since when it waited,
//! `sched_info.last_queued` (the run queue's clock at the enqueue; `sched_info_arrive`, after
//! this tracepoint, consumes it) against this CPU's run-queue clock (updated at the start of
//! this `__schedule`, or still the clock a preempting wakeup stamped: then the wait reads
//! short, never long). So the wait is taken from there, within the interval. Only in this
//! rare branch: two to four probe reads. Without the offsets (no CONFIG_SCHED_INFO or
//! CONFIG_FAIR_GROUP_SCHED, BTF without them) or without a stamp (5.10 without schedstats or
//! delay accounting never stamps), the sleep stays blocked as before.
use aya_ebpf::helpers::bpf_probe_read_kernel;

use crate::task_iter::TASK_SCHED_OFFSETS;

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}

/// When the run-queue wait of `next` began, a thread switched in at `now` (this CPU) after a
/// sleep from `off_since_ns` whose wakeup was not seen: by the scheduler's stamp, never before
/// `off_since_ns`; `None` without one.
#[inline(always)]
pub fn wait_start(next: u64, off_since_ns: u64, now: u64) -> Option<u64> {
    let o = unsafe { core::ptr::read_volatile(&TASK_SCHED_OFFSETS) };
    if o.last_queued == 0 || o.se_cfs_rq == 0 || o.cfs_rq_rq == 0 || o.rq_clock == 0 {
        return None;
    }
    let last_queued = read_u64(next + o.last_queued as u64).filter(|&q| q != 0)?;
    // The task switched in here waits on this CPU's run queue: its entity's cfs_rq is this
    // CPU's, and that cfs_rq's `rq` this CPU's run queue.
    let cfs_rq = read_u64(next + o.se_cfs_rq as u64).filter(|&c| c != 0)?;
    let rq = read_u64(cfs_rq + o.cfs_rq_rq as u64).filter(|&rq| rq != 0)?;
    let waited = read_u64(rq + o.rq_clock as u64)?.checked_sub(last_queued)?;
    Some(now.saturating_sub(waited).max(off_since_ns))
}
