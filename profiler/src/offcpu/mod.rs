//! What a thread's off-CPU time was spent waiting for: the syscall's class
//! ([`syscalls`]), the descriptor's target ([`fdinfo`]), and the category they make
//! ([`classify`]).
pub mod classify;
pub mod fdinfo;
pub mod syscalls;
