//! Fills a [`SampleEvent`] with the current thread's identity and stacks (kernel with `--kernel`
//! or for kernel threads, Python, and the native user stack by frame pointers when the DWARF
//! unwinder does not walk it): shared by on-CPU samples and off-CPU events, which both run in
//! the thread's own context.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_comm, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_current_task, bpf_get_stack},
    },
};
use profiler_common::{
    EventKind, MAX_NATIVE_FRAMES, OffCpuInfo, SampleEvent, TASK_COMM_LEN, scratch_slot, unwind::end,
};

use crate::{
    maps::{PY_PROCS, kernel_stacks, task_flags_offset},
    python,
};

const STACK_BYTES: u32 = (MAX_NATIVE_FRAMES * 8) as u32;
/// `task_struct.flags` bit of a kernel thread (include/linux/sched.h; unchanged since 2.6).
const PF_KTHREAD: u32 = 0x0020_0000;

/// Is the current task a kernel thread? It has no user stack: its kernel stack is its stack.
#[inline(always)]
fn is_kernel_thread() -> bool {
    let off = task_flags_offset();
    if off == 0 {
        return false;
    }
    let task = unsafe { bpf_get_current_task() };
    unsafe { bpf_probe_read_kernel((task + off as u64) as *const u32) }.is_ok_and(|flags| flags & PF_KTHREAD != 0)
}

/// The scratch slot of the program that builds an event of `kind` (each program kind has its
/// own, see `UNWIND_SCRATCH`): the Python unwinder's window is per slot too.
#[inline(always)]
pub fn scratch_slot_of(kind: u32) -> u32 {
    if kind == EventKind::OnCpuSample as u32 {
        scratch_slot::ON_CPU
    } else if kind == EventKind::Preempted as u32 {
        scratch_slot::SCHED_SWITCH
    } else {
        scratch_slot::SYS_EXIT
    }
}

/// # Safety
/// `ev` must point at a writable `SampleEvent` (a reserved ring-buffer slot) and `ctx` be the
/// running program's context.
#[inline(always)]
pub unsafe fn fill(ctx: *mut c_void, ev: *mut SampleEvent, kind: u32, tgid: u32, tid: u32) {
    unsafe {
        (*ev).kind = kind;
        (*ev).cpu = bpf_get_smp_processor_id();
        (*ev).pid = tgid;
        (*ev).tid = tid;
        (*ev).time_ns = bpf_ktime_get_ns();
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
        (*ev).off = OffCpuInfo::default();

        (*ev).kernel_stack_len = 0;
        if kernel_stacks() || is_kernel_thread() {
            let n = bpf_get_stack(ctx, (*ev).kernel_stack.as_mut_ptr().cast(), STACK_BYTES, 0);
            if n > 0 {
                (*ev).kernel_stack_len = (n / 8) as u32;
            }
        }
        (*ev).user_stack_len = 0;
        (*ev).user_end = end::FRAME_POINTERS;
        (*ev).user_sp = 0;

        (*ev).py_frames_len = 0;
        (*ev).py_status = match PY_PROCS.get(&tgid) {
            Some(info) => {
                python::unwind(info, tgid, tid, scratch_slot_of(kind), &mut (*ev).py_frames, &mut (*ev).py_frames_len)
            }
            None => 0,
        };
    }
}

/// The user stack by frame pointers (`bpf_get_stack`), for threads the DWARF unwinder does not
/// walk: the leaf (the sampled IP) is always right, callers are lost in code built without
/// frame pointers.
///
/// # Safety
/// As [`fill`].
#[inline(always)]
pub unsafe fn frame_pointer_stack(ctx: *mut c_void, ev: *mut SampleEvent) {
    unsafe {
        let n = bpf_get_stack(ctx, (*ev).user_stack.as_mut_ptr().cast(), STACK_BYTES, BPF_F_USER_STACK as u64);
        (*ev).user_stack_len = if n > 0 { (n / 8) as u32 } else { 0 };
        (*ev).user_end = end::FRAME_POINTERS;
        (*ev).user_sp = 0;
    }
}
