//! What /proc says about a process or thread. Every reader tolerates the process being gone.
use procfs::process::Process;

/// Process name (the main thread's `comm`).
pub fn comm(pid: u32) -> Option<String> {
    stat(pid).map(|s| s.comm)
}

/// What /proc/PID/stat says of a process: its name, and its place among processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    /// The parent now (a process whose parent exited has been re-parented, to init or a
    /// subreaper).
    pub ppid: u32,
    /// Process group and session.
    pub pgrp: u32,
    pub session: u32,
    /// Exited and not yet reaped, or being torn down: not running any more.
    pub zombie: bool,
    /// When it started, in clock ticks since boot: with the pid, names one process (a pid is
    /// reused after its process is reaped, the pair is not).
    pub starttime: u64,
}

fn proc_stat(process: &Process) -> Option<ProcStat> {
    let s = process.stat().ok()?;
    Some(ProcStat {
        pid: s.pid as u32,
        comm: s.comm,
        ppid: s.ppid as u32,
        pgrp: s.pgrp as u32,
        session: s.session as u32,
        zombie: s.state == 'Z' || s.state == 'X',
        starttime: s.starttime,
    })
}

/// /proc/PID/stat of one process; `None` once it is reaped.
pub fn stat(pid: u32) -> Option<ProcStat> {
    proc_stat(&Process::new(pid as i32).ok()?)
}

/// /proc/PID/stat of every process on the host (one pass over /proc).
pub fn all_stats() -> Vec<ProcStat> {
    let Ok(all) = procfs::process::all_processes() else { return Vec::new() };
    all.filter_map(Result::ok).filter_map(|p| proc_stat(&p)).collect()
}

/// A thread's name (`comm`).
pub fn thread_comm(pid: u32, tid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
    Some(text.trim_end().to_string())
}

/// Command line, arguments joined by spaces; `None` for kernel threads and vanished processes.
pub fn cmdline(pid: u32) -> Option<String> {
    let args = Process::new(pid as i32).ok()?.cmdline().ok()?;
    (!args.is_empty()).then(|| args.join(" "))
}

/// The process (thread group) a task id belongs to.
pub fn tgid_of(tid: u32) -> Option<u32> {
    Process::new(tid as i32).ok()?.status().ok().map(|s| s.tgid as u32)
}

/// True while the thread exists and has not exited (zombie or dead).
pub fn thread_alive(pid: u32, tid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// True while the process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match Process::new(pid as i32).and_then(|p| p.stat()) {
        Ok(stat) => stat.state != 'Z' && stat.state != 'X',
        Err(_) => false,
    }
}

/// One mapping of a process's address space, as /proc/PID/maps lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// The file offset `start` maps.
    pub offset: u64,
    /// Mapped executable (`x`): code, the vDSO, a JIT's anonymous pages.
    pub executable: bool,
    /// The file's name (`libc.so.6`), `[vdso]`, or None for anonymous memory.
    pub file: Option<String>,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }
}

/// A process's mappings, in address order; None when they cannot be read (the process is
/// gone), which says nothing about any address.
pub fn mappings(pid: u32) -> Option<Vec<Mapping>> {
    use procfs::process::{MMPermissions, MMapPath};
    let maps = Process::new(pid as i32).and_then(|p| p.maps()).ok()?;
    Some(
        maps.into_iter()
            .map(|m| Mapping {
                start: m.address.0,
                end: m.address.1,
                offset: m.offset,
                executable: m.perms.contains(MMPermissions::EXECUTE),
                file: match m.pathname {
                    MMapPath::Path(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
                    MMapPath::Vdso => Some("[vdso]".into()),
                    _ => None,
                },
            })
            .collect(),
    )
}

/// The CPU a thread runs on or last ran on (/proc/PID/task/TID/stat's `processor`, the 39th
/// field; a sleeping thread stays on the CPU it left until it is woken).
pub fn thread_cpu(pid: u32, tid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // Fields after the command's closing parenthesis start at the 3rd (state).
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(39 - 3)?.parse().ok()
}

/// A thread found asleep: its state and, when it sleeps in a syscall, the call's number and
/// arguments (from /proc/PID/task/TID/syscall).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleepingThread {
    pub tid: u32,
    /// `S` (interruptible) or `D` (uninterruptible).
    pub state: char,
    pub syscall: Option<(i64, [u64; 6])>,
    /// Its user stack pointer in that syscall (0 when unknown).
    pub sp: u64,
}

/// The threads of `pid` that are asleep now (state S or D).
pub fn sleeping_threads(pid: u32) -> Vec<SleepingThread> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let Some(state) =
            stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).and_then(|s| s.chars().next())
        else {
            continue;
        };
        if state != 'S' && state != 'D' {
            continue;
        }
        let text = std::fs::read_to_string(task.path().join("syscall")).unwrap_or_default();
        let (syscall, sp) = parse_syscall(&text).map_or((None, 0), |(nr, args, sp)| (Some((nr, args)), sp));
        out.push(SleepingThread { tid, state, syscall, sp });
    }
    out
}

/// The syscall thread `tid` of `pid` is blocked in now: number, arguments, stack pointer.
pub fn thread_syscall(pid: u32, tid: u32) -> Option<(i64, [u64; 6], u64)> {
    parse_syscall(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?)
}

/// `/proc/.../syscall`: "NR ARG1 ... ARG6 SP PC" while blocked in a syscall, "-1 SP PC" when
/// blocked outside one, "running" otherwise.
fn parse_syscall(text: &str) -> Option<(i64, [u64; 6], u64)> {
    let mut fields = text.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut hex = || u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok();
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = hex()?;
    }
    Some((nr, args, hex().unwrap_or(0)))
}

/// The user stack and instruction pointers of a thread blocked in the kernel, from the end of
/// `/proc/PID/task/TID/syscall` ("NR ARGS... SP PC", or "-1 SP PC" outside a syscall): where
/// `dump --native` starts without the task iterator's registers. None while it runs.
pub fn thread_user_sp_pc(pid: u32, tid: u32) -> Option<(u64, u64)> {
    parse_sp_pc(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?)
}

fn parse_sp_pc(text: &str) -> Option<(u64, u64)> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    fields.first()?.parse::<i64>().ok()?;
    if fields.len() != 3 && fields.len() != 9 {
        return None;
    }
    let [.., sp, pc] = fields.as_slice() else { return None };
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok().filter(|&v| v != 0);
    Some((hex(sp)?, hex(pc)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_mappings_tell_code_from_data() {
        let this: fn() = own_mappings_tell_code_from_data;
        static DATA: [u8; 4096] = [1; 4096];
        let maps = mappings(std::process::id()).unwrap();
        let at = |addr: u64| maps.iter().find(|m| m.contains(addr)).unwrap();
        let code = at(this as usize as u64);
        assert!(code.executable && code.file.is_some(), "{code:?}");
        let data = at(DATA.as_ptr() as u64);
        assert!(!data.executable, "{data:?}");
        assert_eq!(mappings(u32::MAX), None);
    }

    #[test]
    fn syscall_lines() {
        assert_eq!(
            parse_syscall("232 0x3 0x7ffd 0x400 0xffffffff 0x0 0x0 0x7ffc 0x7f12\n"),
            Some((232, [3, 0x7ffd, 0x400, 0xffffffff, 0, 0], 0x7ffc))
        );
        assert_eq!(parse_syscall("-1 0x7ffc 0x7f12"), None);
        assert_eq!(parse_syscall("running"), None);
    }

    #[test]
    fn stat_places_a_process_in_its_tree() {
        let me = stat(std::process::id()).unwrap();
        assert_eq!((me.pid, me.zombie), (std::process::id(), false));
        // SAFETY: plain getters.
        let (ppid, pgrp, sid) = unsafe { (libc::getppid(), libc::getpgrp(), libc::getsid(0)) };
        assert_eq!((me.ppid, me.pgrp, me.session), (ppid as u32, pgrp as u32, sid as u32));
        assert!(me.starttime > 0);
        assert!(all_stats().contains(&me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited, not reaped: a zombie until waited for, then gone.
        let zombie = (0..200).find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            stat(pid).filter(|s| s.zombie)
        });
        assert_eq!(zombie.map(|z| z.ppid), Some(std::process::id()));
        child.wait().unwrap();
        assert_eq!(stat(pid), None);
    }

    #[test]
    fn a_sleeping_thread_is_seen_in_its_syscall() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
        let sleeping = sleeping_threads(std::process::id());
        assert!(
            sleeping.iter().any(|s| s.state == 'S' && s.syscall.is_some_and(|(nr, _)| nr == libc::SYS_futex)),
            "{sleeping:?}"
        );
        tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn sp_and_pc_of_a_blocked_thread_in_a_syscall_or_not() {
        let in_call = "230 0x1 0x0 0x7ffd5c2a1b40 0x0 0x0 0x0 0x7ffd5c2a1b28 0x7f0d1c2e5f3a\n";
        assert_eq!(parse_sp_pc(in_call), Some((0x7ffd5c2a1b28, 0x7f0d1c2e5f3a)));
        assert_eq!(parse_sp_pc("-1 0x7ffd00001000 0x401000\n"), Some((0x7ffd00001000, 0x401000)));
        assert_eq!(parse_sp_pc("running\n"), None);
        assert_eq!(parse_sp_pc("-1\n"), None);
        assert_eq!(parse_sp_pc(""), None);
    }
}
