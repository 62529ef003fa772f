//! What `arg0` holds for the calls that wait for a child (`wait4`, `waitid`): nothing, 0.
//!
//! Their first argument is the child's pid (`wait4`) or the id type (`waitid`). Keyed by it,
//! a process that starts children made one `OFFCPU_SUMS` key per child it waited for (28,000
//! of one spawner's in the map), and userspace reads the whole map four times a second.
//! Classification does not use it (every such wait is `ipc`, without a target), so the
//! kernel records 0 at the call's first switch-out ([`encode`]) and userspace does the same
//! for threads already asleep when tracking starts.

/// x86-64 syscall numbers of `wait4` and `waitid`.
pub const SYS_WAIT4: i64 = 61;
pub const SYS_WAITID: i64 = 247;

/// Does syscall `nr` wait for a child?
#[inline(always)]
pub const fn is_child_wait(nr: i64) -> bool {
    nr == SYS_WAIT4 || nr == SYS_WAITID
}

/// What to record as the first argument of syscall `nr` called with `arg0`: 0 for the child
/// waits, `arg0` itself for any other syscall.
#[inline(always)]
pub const fn encode(nr: i64, arg0: u64) -> u64 {
    if is_child_wait(nr) { 0 } else { arg0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_waits_are_keyed_without_their_pid() {
        for pid in [0u64, 1, 12345, u64::MAX] {
            assert_eq!(encode(SYS_WAIT4, pid), 0);
            assert_eq!(encode(SYS_WAITID, pid), 0);
        }
        // read(fd 12345) and a wait outside a syscall: untouched.
        assert_eq!(encode(0, 12345), 12345);
        assert_eq!(encode(-1, 7), 7);
    }
}
