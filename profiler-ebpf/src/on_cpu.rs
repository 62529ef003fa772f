//! On-CPU sampling: a `cpu-clock` perf event on every CPU runs this program at the sampling rate.
use aya_ebpf::{EbpfContext, helpers::bpf_get_current_pid_tgid, macros::perf_event, programs::PerfEventContext};
use profiler_common::{EventKind, UNWIND_PROG_INDEX, scratch_slot};

use crate::{
    maps::{UNWIND_PROGS_PERF, UNWIND_SCRATCH, is_target},
    native, stacks,
};

#[perf_event]
pub fn on_cpu_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // tid 0 is the idle task: nothing ran.
    if tid == 0 || !is_target(tgid) {
        return 0;
    }
    // The sample is built in this CPU's scratch record: the native unwinder continues it in
    // tail calls, and a ring-buffer reservation cannot be held across those.
    let Some(s) = UNWIND_SCRATCH.get_ptr_mut(scratch_slot::ON_CPU) else { return 0 };
    let s = unsafe { &mut *s };
    // SAFETY: this CPU's scratch record, which no other program of this kind uses meanwhile
    // (perf-event programs do not nest on a CPU).
    unsafe { stacks::fill(ctx.as_ptr(), &mut s.ev, EventKind::OnCpuSample as u32, tgid, tid) };
    if native::prepare(s, tgid, || native::perf_user_regs(&ctx)) {
        // Does not return unless the tail call fails.
        native::start(&ctx, &UNWIND_PROGS_PERF, UNWIND_PROG_INDEX);
    }
    unsafe { stacks::frame_pointer_stack(ctx.as_ptr(), &mut s.ev) };
    // No wakeup per event (in submit): userspace polls the buffer on a timer, which costs less
    // at these rates.
    native::submit(s);
    0
}
