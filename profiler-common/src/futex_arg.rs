//! What `arg0` holds for `futex`: the futex word's address, with [`ON_WAITER_STACK`] set when
//! the word lies on the waiting thread's own stack, just above its stack pointer at the call.
//!
//! Why: a futex word on the waiter's stack is a wait object the thread made for this one wait.
//! CPython 3.13+ waits that way for every lock of its own (`PyMutex`: `threading.Lock`, the
//! per-object locks of free-threaded builds, the interpreter's internal mutexes; also its
//! events and stop-the-world pauses): `_PyParkingLot_Park` puts a `wait_entry` with a
//! semaphore on its stack and sleeps on that semaphore, so the futex address is on the stack
//! and never the mutex's own byte. The GIL and `pthread` locks (C extensions, libc) are futexes
//! in their own objects, elsewhere. The kernel sets the bit at the syscall's first switch-out ([`encode`],
//! from the stack pointer in the thread's saved user registers); userspace does the same for threads already
//! asleep when tracking starts (`/proc/PID/task/TID/syscall` gives the stack pointer too) and
//! reads it back with [`decode`].

/// x86-64 syscall number of `futex`.
pub const SYS_FUTEX: i64 = 202;
/// Set in a recorded futex address on the waiter's stack. User addresses never have it (they
/// are below 2^47 on x86-64), so the address itself is kept whole.
pub const ON_WAITER_STACK: u64 = 1 << 63;
/// How far above the stack pointer a futex word still counts as the waiter's own: the frames
/// between the parking lot and the syscall (semaphore wait, libc's futex wrapper) take a few
/// hundred bytes.
pub const STACK_WINDOW: u64 = 16 << 10;

/// What to record as the first argument of syscall `nr` called with `arg0`, the caller's stack
/// pointer being `sp`: for `futex`, the address with [`ON_WAITER_STACK`] when it is within
/// [`STACK_WINDOW`] above `sp`; for any other syscall, `arg0` itself.
#[inline(always)]
pub const fn encode(nr: i64, arg0: u64, sp: u64) -> u64 {
    if nr == SYS_FUTEX && sp != 0 && arg0.wrapping_sub(sp) < STACK_WINDOW { arg0 | ON_WAITER_STACK } else { arg0 }
}

/// (futex address, whether it is on the waiter's stack) from what [`encode`] recorded.
#[inline(always)]
pub const fn decode(arg0: u64) -> (u64, bool) {
    (arg0 & !ON_WAITER_STACK, arg0 & ON_WAITER_STACK != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futex_words_on_the_waiters_stack_are_marked() {
        let sp = 0x7ffd_1000_0000;
        // A semaphore a few frames up the waiter's stack.
        let on_stack = encode(SYS_FUTEX, sp + 0x1a0, sp);
        assert_eq!(decode(on_stack), (sp + 0x1a0, true));
        // A lock in the heap, in a global, below the stack pointer, or far up the stack.
        for addr in [0x5555_0000_1000, 0x7f00_0000_0040, sp - 8, sp + STACK_WINDOW] {
            assert_eq!(decode(encode(SYS_FUTEX, addr, sp)), (addr, false), "{addr:x}");
        }
        // Other syscalls, and an unknown stack pointer, are left alone.
        assert_eq!(encode(0, sp + 8, sp), sp + 8);
        assert_eq!(encode(SYS_FUTEX, 8, 0), 8);
    }
}
