//! The task iterator: one `TaskRecord` per thread of a registered process (see
//! `profiler_common::task_iter`), written to the seq file userspace reads. It reaches threads
//! no hook sees because they never run: blocked since before tracking began, or all window.
//!
//! aya-ebpf has no macro for iterators; the two functions below are what its macros expand
//! to for other program types: a `no_mangle` function in the `iter/task` section taking the
//! context pointer (`struct bpf_iter__task { meta; task; }`).
use aya_ebpf::{
    bindings::{seq_file, task_struct},
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_task_stack, bpf_seq_write, bpf_task_pt_regs},
    },
    macros::map,
    maps::PerCpuArray,
};
use profiler_common::task_iter::{
    TASK_HAS_ON_CPU, TASK_HAS_QUEUED, TASK_HAS_REGS, TASK_KSTACK_MAX, TaskRecord, TaskSchedOffsets,
};

use crate::maps::{PY_PROCS, TARGET_PIDS, fsbase_offset, self_pid, task_ids, task_state_offset};

/// Where a record is built: too big for the BPF stack.
#[map]
static TASK_SCRATCH: PerCpuArray<TaskRecord> = PerCpuArray::with_max_entries(1, 0);

/// Where a task's CPU state is (`dump`: running, or waiting for a CPU and since when), set by
/// userspace before load from the kernel's BTF; 0 = not in this kernel.
#[unsafe(no_mangle)]
pub(crate) static TASK_SCHED_OFFSETS: TaskSchedOffsets =
    TaskSchedOffsets { on_cpu: 0, cpu: 0, last_queued: 0, se_cfs_rq: 0, cfs_rq_rq: 0, rq_clock: 0 };

/// x86-64 `struct pt_regs` offsets (uapi, stable): `orig_ax` (the syscall), the six argument
/// registers in syscall order, and `sp`.
const PT_REGS_ORIG_AX: u64 = 120;
const PT_REGS_ARGS: [u64; 6] = [112, 104, 96, 56, 72, 64];
const PT_REGS_SP: u64 = 152;
/// `ip` and `bp`: where a user-stack unwind starts (`dump --native`).
const PT_REGS_IP: u64 = 128;
const PT_REGS_BP: u64 = 32;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn task_threads(ctx: *mut core::ffi::c_void) -> i32 {
    visit::<true>(ctx)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn task_threads_no_regs(ctx: *mut core::ffi::c_void) -> i32 {
    visit::<false>(ctx)
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
fn visit<const REGS: bool>(ctx: *mut core::ffi::c_void) -> i32 {
    // Direct loads, so the verifier keeps their BTF types: the helpers below want a
    // `seq_file` and a `task_struct`, not numbers.
    let ctx = ctx as *const *mut u8;
    let meta = unsafe { *ctx };
    let task = unsafe { *ctx.add(1) } as *mut task_struct;
    // The last call of an iteration has no task.
    if task.is_null() || meta.is_null() {
        return 0;
    }
    let seq = unsafe { *(meta as *const *mut seq_file) };
    let Some((tid, tgid)) = task_ids(task as u64) else { return 0 };
    if tgid == self_pid() || (PY_PROCS.get_ptr(&tgid).is_none() && TARGET_PIDS.get_ptr(&tgid).is_none()) {
        return 0;
    }
    let Some(r) = TASK_SCRATCH.get_ptr_mut(0) else { return 0 };
    let r = unsafe { &mut *r };
    r.tgid = tgid;
    r.tid = tid;
    let state_off = task_state_offset();
    r.state = if state_off != 0 { read::<u32>(task as u64 + state_off as u64).unwrap_or(0) } else { 0 };
    let fs_off = fsbase_offset();
    r.fsbase = if fs_off != 0 { read::<u64>(task as u64 + fs_off as u64).unwrap_or(0) } else { 0 };
    r.flags = 0;
    r.syscall_nr = -1;
    r.sp = 0;
    r.ip = 0;
    r.bp = 0;
    if REGS {
        let regs = unsafe { bpf_task_pt_regs(task) } as u64;
        if regs != 0 {
            r.flags |= TASK_HAS_REGS;
            r.syscall_nr = read::<i64>(regs + PT_REGS_ORIG_AX).unwrap_or(-1);
            for (i, off) in PT_REGS_ARGS.iter().enumerate() {
                r.args[i] = read::<u64>(regs + off).unwrap_or(0);
            }
            r.sp = read::<u64>(regs + PT_REGS_SP).unwrap_or(0);
            r.ip = read::<u64>(regs + PT_REGS_IP).unwrap_or(0);
            r.bp = read::<u64>(regs + PT_REGS_BP).unwrap_or(0);
        }
    }
    sched_state(task as u64, r);
    let bytes = (TASK_KSTACK_MAX * 8) as u32;
    let n = unsafe { bpf_get_task_stack(task, r.kstack.as_mut_ptr().cast(), bytes, 0) };
    r.kstack_len = if n > 0 { (n as u32 / 8).min(TASK_KSTACK_MAX as u32) } else { 0 };
    unsafe { bpf_seq_write(seq, core::ptr::from_mut(r).cast(), size_of::<TaskRecord>() as u32) };
    0
}

/// The task's CPU state: on a CPU or not, which CPU, and, while it waits for one, when it was
/// queued and its run queue's clock now (the same clock: the wait so far is their difference).
/// The run queue is read only for a waiting task: one pointer chase per runnable thread.
#[inline(always)]
fn sched_state(task: u64, r: &mut TaskRecord) {
    let o = unsafe { core::ptr::read_volatile(&TASK_SCHED_OFFSETS) };
    r.on_cpu = 0;
    r.cpu = 0;
    r.last_queued = 0;
    r.rq_clock = 0;
    if o.on_cpu != 0 && o.cpu != 0 {
        r.on_cpu = read::<u32>(task + o.on_cpu as u64).unwrap_or(0);
        r.cpu = read::<u32>(task + o.cpu as u64).unwrap_or(0);
        r.flags |= TASK_HAS_ON_CPU;
    }
    if o.last_queued != 0 {
        r.last_queued = read::<u64>(task + o.last_queued as u64).unwrap_or(0);
        r.flags |= TASK_HAS_QUEUED;
        if r.last_queued != 0 && o.se_cfs_rq != 0 && o.cfs_rq_rq != 0 && o.rq_clock != 0 {
            let rq = read::<u64>(task + o.se_cfs_rq as u64).and_then(|cfs_rq| read::<u64>(cfs_rq + o.cfs_rq_rq as u64));
            if let Some(rq) = rq.filter(|&rq| rq != 0) {
                r.rq_clock = read::<u64>(rq + o.rq_clock as u64).unwrap_or(0);
            }
        }
    }
}
