//! The kernel's clock, as userspace sees it.

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, so userspace times compare
/// with the kernel's timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time the calling thread has used (user and system), in nanoseconds: what a piece of
/// work cost us, whatever the wall time it took while other processes had the CPU.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The scheduler's task clock of `cpu` now, in milliseconds: the clock of `se.exec_start` in
/// `/proc/PID/task/TID/sched`. It is not CLOCK_MONOTONIC: each CPU's task clock leaves out
/// the interrupt and steal time of that CPU (on the build VM, 27 s less than CLOCK_MONOTONIC
/// after 11 hours, 80 ms apart between its two CPUs). Read from the calling thread's own
/// `se.exec_start` right after it yields on `cpu` (the switch updates it to that CPU's clock);
/// the thread's CPU affinity is restored after. `None` if `cpu` is not ours to run on.
pub fn task_clock_ms(cpu: u32) -> Option<f64> {
    // SAFETY: cpu_set_t is plain data; sched_{get,set}affinity read and write the sets we own.
    unsafe {
        let mut before: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut before) != 0 {
            return None;
        }
        let mut only: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut only);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &only) != 0 {
            return None;
        }
        libc::sched_yield();
        let ms = std::fs::read_to_string("/proc/thread-self/sched").ok().and_then(|t| exec_start_ms(&t));
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &before);
        ms
    }
}

/// `se.exec_start` of a `/proc/.../sched` text, in milliseconds.
pub fn exec_start_ms(sched: &str) -> Option<f64> {
    sched.lines().find(|l| l.starts_with("se.exec_start"))?.split(':').nth(1)?.trim().parse().ok()
}
