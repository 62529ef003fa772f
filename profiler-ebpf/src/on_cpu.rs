//! On-CPU sampling: a `cpu-clock` perf event on every CPU runs this program at the sampling rate.
use aya_ebpf::{
    EbpfContext, bindings::BPF_RB_NO_WAKEUP, helpers::bpf_get_current_pid_tgid, macros::perf_event,
    programs::PerfEventContext,
};
use profiler_common::{EventKind, SampleEvent, stat};

use crate::{
    maps::{EVENTS, bump, is_target},
    stacks,
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
    let Some(mut entry) = EVENTS.reserve::<SampleEvent>(0) else {
        bump(stat::LOST);
        return 0;
    };
    // SAFETY: a reserved, exclusively owned ring-buffer slot of the right size.
    unsafe { stacks::fill(ctx.as_ptr(), entry.as_mut_ptr(), EventKind::OnCpuSample as u32, tgid, tid) };
    // No wakeup per event: userspace polls the buffer on a timer, which costs less at these rates.
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    0
}
