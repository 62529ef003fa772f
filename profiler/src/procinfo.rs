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
