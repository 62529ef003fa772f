//! Scheduler controls and counters for tests about where threads run: pinning, SCHED_FIFO,
//! and the kernel's own per-task counts to compare with.

/// A process's scheduler counters, `/proc/PID/schedstat`: (on-CPU ns, run-queue wait ns
/// finished so far, switch-ins). A wait in progress is added when it ends.
pub fn schedstat(pid: u32) -> Result<(u64, u64, u64), String> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/schedstat")).map_err(|e| format!("schedstat of {pid}: {e}"))?;
    let f: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    match f[..] {
        [cpu, delay, switches, ..] => Ok((cpu, delay, switches)),
        _ => Err(format!("schedstat of {pid}: {text}")),
    }
}

/// The state letter of `/proc/PID/stat`.
pub fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).and_then(|s| s.chars().next()).unwrap_or('?')
}

/// Pins `pid` (0: the calling thread, whose children inherit it) to `cpu`.
pub fn set_affinity(pid: u32, cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls only read it.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid as libc::pid_t, size_of::<libc::cpu_set_t>(), &set) == 0
    };
    ok.then_some(()).ok_or_else(|| format!("sched_setaffinity({pid}, {cpu}): {}", std::io::Error::last_os_error()))
}

/// SCHED_FIFO at priority 1, or back to SCHED_OTHER.
pub fn set_fifo(pid: u32, fifo: bool) -> Result<(), String> {
    let (policy, priority) = if fifo { (libc::SCHED_FIFO, 1) } else { (libc::SCHED_OTHER, 0) };
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: plain syscall on a pid with a valid parameter struct.
    let ok = unsafe { libc::sched_setscheduler(pid as libc::pid_t, policy, &param) } == 0;
    ok.then_some(()).ok_or_else(|| format!("sched_setscheduler({pid}): {}", std::io::Error::last_os_error()))
}

/// The CPUs this test may use, lowest first.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the zeroed set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}
