//! What /proc says about a process or thread. Every reader tolerates the process being gone.
use procfs::process::Process;

/// Process name (the main thread's `comm`).
pub fn comm(pid: u32) -> Option<String> {
    Process::new(pid as i32).ok()?.stat().ok().map(|s| s.comm)
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

/// A process's file-backed mappings: (start, end, file name), for naming unknown frames.
pub fn mapped_files(pid: u32) -> Vec<(u64, u64, String)> {
    let Ok(maps) = Process::new(pid as i32).and_then(|p| p.maps()) else {
        return Vec::new();
    };
    maps.into_iter()
        .filter_map(|m| match m.pathname {
            procfs::process::MMapPath::Path(path) => {
                let name = path.file_name()?.to_string_lossy().into_owned();
                Some((m.address.0, m.address.1, name))
            }
            procfs::process::MMapPath::Vdso => Some((m.address.0, m.address.1, "[vdso]".into())),
            _ => None,
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
