//! What a thread's off-CPU time was spent waiting for: the syscall's class
//! ([`syscalls`]), the descriptor's target ([`fdinfo`]), and the category they make
//! ([`classify`]), with the target the kernel read at the syscall ([`kernel_target`]) first.
pub mod classify;
pub mod fdinfo;
pub mod kernel_target;
pub mod syscalls;
