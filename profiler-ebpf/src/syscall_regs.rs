//! The syscall a thread is in, read at its switch-out from the user registers it saved on
//! entering the kernel (the top of its kernel stack), instead of at every `sys_enter` of the
//! host: only the calls that switch out cost anything.
//!
//! `orig_ax` is the syscall number in a syscall, and -1 when the thread entered the kernel by
//! an interrupt or an exception (a preemption in user mode, a page fault: the entry code
//! overwrites an exception's error code with -1 there, and FRED's does the same), so it tells
//! the two apart. x32 and compat calls keep their numbers as `sys_enter` got them.
//!
//! The registers are at `task->stack + regs_offset`, learned at `sys_exit` (see
//! `profiler_common::exit_gate`): `bpf_task_pt_regs` would need 5.15 and a BTF task pointer.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user};
use profiler_common::{InFlight, child_wait, exit_gate::plausible_regs_offset, futex_arg, poll_arg};

use crate::maps::{IN_FLIGHT, task_stack_offset};

/// x86-64 `struct pt_regs` offsets (uapi, stable): the syscall number, its first two arguments,
/// and the caller's stack pointer.
const PT_REGS_ORIG_AX: u64 = 120;
const PT_REGS_DI: u64 = 112;
const PT_REGS_SI: u64 = 104;
const PT_REGS_SP: u64 = 152;

#[inline(always)]
fn kernel_u64(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}

/// The current task's kernel stack (`task->stack`); None without its offset in BTF.
#[inline(always)]
fn current_stack() -> Option<u64> {
    let off = task_stack_offset();
    if off == 0 {
        return None;
    }
    kernel_u64(unsafe { bpf_get_current_task() } + off as u64)
}

/// Where the current task's user registers are, from `sys_exit`'s `regs` argument (which is
/// `task_pt_regs(current)`), as an offset from its kernel stack; 0 if it cannot be told.
#[inline(always)]
pub fn learn_regs_offset(regs: u64) -> u64 {
    let Some(stack) = current_stack() else { return 0 };
    let offset = regs.wrapping_sub(stack);
    if plausible_regs_offset(offset) { offset } else { 0 }
}

/// Makes sure the current thread `tid`, switching out, has the `IN_FLIGHT` record of the
/// syscall it is in, and says whether it is in one. A record made earlier for this call (same
/// number and argument) is kept, with what it has summed; one for another call is stale (its
/// `sys_exit` was not seen) and replaced, or removed when the thread is not in a syscall.
/// With `regs_offset` not learned yet, a record (seeded by userspace) is all there is to go by.
#[inline(always)]
pub fn track_current_syscall(tid: u32, regs_offset: u64, now: u64) -> bool {
    let regs = match current_stack() {
        Some(stack) if regs_offset != 0 => stack + regs_offset,
        _ => return IN_FLIGHT.get_ptr(&tid).is_some(),
    };
    let nr = kernel_u64(regs + PT_REGS_ORIG_AX).map_or(-1, |v| v as i64);
    if nr < 0 {
        let _ = IN_FLIGHT.remove(&tid);
        return false;
    }
    // A child wait's pid is not kept: each child would be a key of its own.
    let mut arg0 = if child_wait::is_child_wait(nr) { 0 } else { kernel_u64(regs + PT_REGS_DI).unwrap_or(0) };
    // The poll family's first argument is a count or a pointer: record which descriptors it
    // waits on instead (one user read, only for these four syscalls).
    if poll_arg::is_poll_family(nr) {
        let arg1 = kernel_u64(regs + PT_REGS_SI).unwrap_or(0);
        arg0 = poll_arg::encode(nr, arg0, arg1, |addr| unsafe { bpf_probe_read_user(addr as *const u64) }.ok());
    }
    // A futex word on the waiter's own stack is a parking-lot wait (CPython's PyMutex): mark it.
    if nr == futex_arg::SYS_FUTEX {
        let sp = kernel_u64(regs + PT_REGS_SP).unwrap_or(0);
        arg0 = futex_arg::encode(nr, arg0, sp);
    }
    if let Some(call) = IN_FLIGHT.get_ptr(&tid)
        && unsafe { (*call).syscall_nr == nr && (*call).arg0 == arg0 }
    {
        return true;
    }
    let call = InFlight { syscall_nr: nr, arg0, entry_ns: now, ..Default::default() };
    let _ = IN_FLIGHT.insert(&tid, &call, 0);
    true
}
