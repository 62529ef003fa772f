//! The per-CPU gate of the `sys_exit` program, and where a task's user registers are.
//!
//! Every syscall of the host runs the `sys_exit` raw tracepoint, but only one that switched out
//! while tracked has anything to report, and a syscall that switched out has switched back in
//! on the CPU it exits on, with no other switch in between. So `sched_switch` disarms the gate
//! of its CPU at every switch and arms it with the incoming thread's tid when that thread has a
//! syscall on record (`IN_FLIGHT`); `sys_exit` returns at once unless the current tid is the
//! armed one: one per-CPU array read for the syscalls that never blocked.
//!
//! The same slot holds `task_pt_regs(task) - task->stack` for the running kernel, which
//! `sched_switch` needs to read the outgoing thread's syscall (number and arguments) from its
//! saved user registers. It is a constant of the kernel build (`THREAD_SIZE`, minus the top
//! padding of FRED kernels, minus `sizeof(struct pt_regs)`), but not one userspace can know
//! for sure, so the kernel learns it: `sys_exit`'s first argument is `task_pt_regs(current)`.

/// The value of the one-slot per-CPU `EXIT_GATE` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitGate {
    /// The thread switched in last on this CPU if it had a syscall on record then; 0 when
    /// disarmed.
    pub armed_tid: u32,
    pub _pad: u32,
    /// `task_pt_regs(task) - task->stack`, learned at this CPU's first `sys_exit`; 0 until then.
    pub regs_offset: u64,
}

/// `sizeof(struct pt_regs)` on x86-64 (uapi, stable).
pub const PT_REGS_SIZE: u64 = 168;

/// Is `offset` a place the user registers can be at, in a kernel stack of at most 64 KiB?
/// A learned value outside is not kept (a syscall tracepoint called with other registers).
pub const fn plausible_regs_offset(offset: u64) -> bool {
    offset >= 8 << 10 && offset <= (64 << 10) - PT_REGS_SIZE && offset.is_multiple_of(8)
}

/// The offsets x86-64 kernels have: 16 or 32 KiB stacks (KASAN doubles it), with or without
/// FRED's 16 bytes of padding at the top (`off_cpu::the_kernel_learns_where_user_registers_are`
/// checks the learned value against these).
pub const fn expected_regs_offset(offset: u64) -> bool {
    let mut i = 0;
    let sizes = [16u64 << 10, 32 << 10];
    while i < 2 {
        if offset == sizes[i] - PT_REGS_SIZE || offset == sizes[i] - 16 - PT_REGS_SIZE {
            return true;
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_offsets_are_plausible_and_garbage_is_not() {
        for offset in [16216, 16200, 32600, 32584] {
            assert!(plausible_regs_offset(offset) && expected_regs_offset(offset), "{offset}");
        }
        // A pointer difference from unrelated memory, negative (wrapped) or unaligned.
        for offset in [0, 8, 4096, 1 << 20, u64::MAX - 167, 16217] {
            assert!(!plausible_regs_offset(offset), "{offset}");
        }
        assert!(!expected_regs_offset(12000));
    }
}
