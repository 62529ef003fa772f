//! pyebpf's own heap: handing freed memory back to the kernel.
//!
//! A session's memory comes and goes in bursts: the kernel's BTF parsed once for the task
//! iterator (~10 MB), the ring buffer's queue while the session was busy (up to 8x the ring),
//! each window's tables and outputs. glibc keeps what was freed in its arenas, so VmRSS stayed
//! at the peak of every burst: a daemon's resident memory was its worst moment, not its
//! working set. [`release_free_memory`] asks glibc to return the free pages; called once per
//! window, it costs a walk of the arenas' free lists (well under a millisecond here).

/// Returns the allocator's free pages to the kernel (glibc's `malloc_trim`); a no-op with other
/// C libraries.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only reorganizes the allocator's own free memory; pad 0 keeps none.
    unsafe {
        libc::malloc_trim(0);
    }
}
