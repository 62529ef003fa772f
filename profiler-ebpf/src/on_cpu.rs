//! On-CPU sampling: a `cpu-clock` perf event on every CPU runs this program at the sampling rate.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    helpers::generated::bpf_get_stack,
    macros::perf_event,
    programs::PerfEventContext,
};
use profiler_common::{EventKind, MAX_NATIVE_FRAMES, SampleEvent, stat};

use crate::{
    maps::{EVENTS, PY_PROCS, bump, is_target, kernel_stacks},
    python,
};

const STACK_BYTES: u32 = (MAX_NATIVE_FRAMES * 8) as u32;

#[perf_event]
pub fn on_cpu_sample(ctx: PerfEventContext) -> u32 {
    sample(&ctx);
    0
}

#[inline(always)]
fn sample(ctx: &PerfEventContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // tid 0 is the idle task: nothing ran.
    if tid == 0 || !is_target(tgid) {
        return;
    }

    let Some(mut entry) = EVENTS.reserve::<SampleEvent>(0) else {
        bump(stat::LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer slot of the right size.
    unsafe {
        (*ev).kind = EventKind::OnCpuSample as u32;
        (*ev).cpu = bpf_get_smp_processor_id();
        (*ev).pid = tgid;
        (*ev).tid = tid;
        (*ev).time_ns = bpf_ktime_get_ns();
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);

        (*ev).kernel_stack_len = 0;
        if kernel_stacks() {
            let n = bpf_get_stack(ctx.as_ptr(), (*ev).kernel_stack.as_mut_ptr().cast(), STACK_BYTES, 0);
            if n > 0 {
                (*ev).kernel_stack_len = (n / 8) as u32;
            }
        }
        // User stacks unwind by frame pointers only; the leaf (the sampled IP) is always right.
        let n = bpf_get_stack(
            ctx.as_ptr(),
            (*ev).user_stack.as_mut_ptr().cast(),
            STACK_BYTES,
            BPF_F_USER_STACK as u64,
        );
        (*ev).user_stack_len = if n > 0 { (n / 8) as u32 } else { 0 };

        (*ev).py_frames_len = 0;
        (*ev).py_status = match PY_PROCS.get(&tgid) {
            Some(info) => python::unwind(info, tid, &mut (*ev).py_frames, &mut (*ev).py_frames_len),
            None => 0,
        };
    }
    // No wakeup per event: userspace polls the buffer on a timer, which costs less at these rates.
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}
