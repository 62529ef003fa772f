//! What to profile: the whole host, given pids, the processes of given containers, or a
//! command we start.
use std::{
    collections::HashSet,
    ffi::{CString, OsString},
};

use crate::{
    bpf::Bpf,
    error::{ExitCode, fatal},
    host::{cgroup, procinfo},
};

pub enum TargetSpec {
    All,
    Pids(Vec<u32>),
    /// Full container ids (resolved from the prefixes given) and their processes now.
    Containers(Containers),
    Command(Vec<OsString>),
}

/// The processes of some containers: those running, and those that appear later (checked on
/// every housekeeping tick: a new pid's cgroup is read once).
pub struct Containers {
    ids: Vec<String>,
    members: Vec<u32>,
    /// Pids whose cgroup was read (members or not), pruned to the living.
    seen: HashSet<u32>,
}

impl Containers {
    /// Resolves id prefixes against the containers of the processes running now: each must
    /// name exactly one container, as `docker` requires.
    fn resolve(prefixes: &[String]) -> anyhow::Result<Self> {
        let mut running: Vec<(u32, String)> = Vec::new();
        let mut seen = HashSet::new();
        for pid in all_pids() {
            seen.insert(pid);
            if let Some(id) = cgroup::identity(pid).and_then(|i| i.container_id) {
                running.push((pid, id));
            }
        }
        let mut ids: Vec<String> = Vec::new();
        for prefix in prefixes {
            let prefix = prefix.to_ascii_lowercase();
            if prefix.is_empty() {
                return Err(fatal(
                    ExitCode::Usage,
                    "--container: an empty id (give the container id or a prefix of it)",
                ));
            }
            let mut matching: Vec<&str> =
                running.iter().map(|(_, id)| id.as_str()).filter(|id| id.starts_with(&prefix)).collect();
            matching.sort();
            matching.dedup();
            match matching.as_slice() {
                [] => {
                    return Err(fatal(
                        ExitCode::Target,
                        format!("--container {prefix}: no process in a container whose id starts with {prefix}"),
                    ));
                }
                [id] => ids.push(id.to_string()),
                many => {
                    let short: Vec<&str> = many.iter().map(|id| &id[..12]).collect();
                    return Err(fatal(
                        ExitCode::Target,
                        format!(
                            "--container {prefix} matches more than one container ({}): give more of the id",
                            short.join(", ")
                        ),
                    ));
                }
            }
        }
        let members = running.iter().filter(|(_, id)| ids.contains(id)).map(|(pid, _)| *pid).collect();
        Ok(Self { ids, members, seen })
    }

    /// Processes that joined one of the containers since the last call.
    fn discover(&mut self) -> Vec<u32> {
        let now: HashSet<u32> = all_pids().into_iter().collect();
        self.seen.retain(|pid| now.contains(pid));
        self.members.retain(|pid| now.contains(pid));
        let mut joined = Vec::new();
        for pid in now {
            if self.seen.insert(pid)
                && cgroup::identity(pid).and_then(|i| i.container_id).is_some_and(|id| self.ids.contains(&id))
            {
                self.members.push(pid);
                joined.push(pid);
            }
        }
        joined
    }
}

fn all_pids() -> Vec<u32> {
    procfs::process::all_processes()
        .map(|all| all.filter_map(|p| p.ok()).map(|p| p.pid as u32).collect())
        .unwrap_or_default()
}

impl TargetSpec {
    /// Checks the target before anything is loaded: pids must exist (a thread id stands for its
    /// process), a command must be non-empty.
    pub fn resolve(all: bool, pids: &[u32], containers: &[String], command: &[OsString]) -> anyhow::Result<Self> {
        if all {
            return Ok(Self::All);
        }
        if !command.is_empty() {
            return Ok(Self::Command(command.to_vec()));
        }
        if !containers.is_empty() {
            return Ok(Self::Containers(Containers::resolve(containers)?));
        }
        let mut resolved = Vec::new();
        for &pid in pids {
            let Some(tgid) = procinfo::tgid_of(pid) else {
                return Err(fatal(
                    ExitCode::Target,
                    format!("no process with pid {pid}: it may have exited (check with `ps -p {pid}`)"),
                ));
            };
            if tgid != pid {
                log::warn!("pid {pid} is a thread of process {tgid}: profiling the whole process");
            }
            if !resolved.contains(&tgid) {
                resolved.push(tgid);
            }
        }
        Ok(Self::Pids(resolved))
    }

    /// Registers the targets with the loaded BPF programs (starting the command if there is one).
    pub fn start(self, bpf: &mut Bpf) -> anyhow::Result<Running> {
        match self {
            Self::All => Ok(Running::All),
            Self::Pids(pids) => {
                for &pid in &pids {
                    bpf.add_target(pid)?;
                }
                Ok(Running::Pids { pids, gone: Vec::new() })
            }
            Self::Containers(containers) => {
                for &pid in &containers.members {
                    bpf.add_target(pid)?;
                }
                Ok(Running::Containers(containers))
            }
            Self::Command(argv) => Ok(Running::Command(spawn_gated(&argv, bpf)?)),
        }
    }

    /// The processes are named one by one (pids, containers), not the whole host or a command.
    pub fn is_explicit(&self) -> bool {
        matches!(self, Self::Pids(_) | Self::Containers(_))
    }
}

/// A command we started: its pid, and its wait status once reaped.
pub struct Launched {
    pid: u32,
    status: Option<i32>,
}

/// Finds the program like execvp would, so that a missing one fails here with a clear message.
fn resolve_program(name: &OsString) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let not_found = |why: &str| fatal(ExitCode::Target, format!("cannot start '{}': {why}", name.to_string_lossy()));
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    };
    let path = std::path::Path::new(name);
    if name.as_encoded_bytes().contains(&b'/') {
        if !path.exists() {
            return Err(not_found("no such file"));
        }
        if !executable(path) {
            return Err(not_found("not an executable file"));
        }
        return Ok(path.to_path_buf());
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&search)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
        .ok_or_else(|| not_found("command not found in PATH"))
}

fn cstring(s: &std::ffi::OsStr) -> anyhow::Result<CString> {
    CString::new(s.as_encoded_bytes())
        .map_err(|_| fatal(ExitCode::Usage, format!("argument '{}' contains a NUL byte", s.to_string_lossy())))
}

fn pipe() -> std::io::Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: plain syscall on a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// Starts `argv` so that it cannot run one instruction of the program before its pid is in the
/// BPF target map: the forked child waits on a pipe until we say go, then execs.
///
/// This is fork+exec by hand because std's `Command::spawn` waits for the exec to happen, which
/// would deadlock with a child that waits for us.
fn spawn_gated(argv: &[OsString], bpf: &mut Bpf) -> anyhow::Result<Launched> {
    let program = cstring(resolve_program(&argv[0])?.as_os_str())?;
    let args = argv.iter().map(|a| cstring(a)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let (gate_r, gate_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    // SAFETY: after fork the child only makes async-signal-safe calls (close, read, execv,
    // write, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if pid == 0 {
        // SAFETY: the child of a fork; only async-signal-safe calls on memory prepared before it.
        unsafe {
            libc::close(gate_w);
            libc::close(err_r);
            let mut byte = 0u8;
            let go = loop {
                let n = libc::read(gate_r, std::ptr::from_mut(&mut byte).cast(), 1);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break n == 1;
                }
            };
            if go {
                libc::execv(program.as_ptr(), arg_ptrs.as_ptr());
            }
            let errno: i32 = if go { *libc::__errno_location() } else { 0 };
            libc::write(err_w, std::ptr::from_ref(&errno).cast(), 4);
            libc::_exit(127);
        }
    }

    let pid = pid as u32;
    // SAFETY: closing the ends of our own pipes that only the child uses.
    unsafe {
        libc::close(gate_r);
        libc::close(err_w);
    }
    let registered = bpf.add_target(pid);
    // Closing the gate without a byte makes the child exit instead of running unprofiled.
    if registered.is_ok() {
        // SAFETY: one byte from a live array into our pipe.
        unsafe { libc::write(gate_w, [1u8].as_ptr().cast(), 1) };
    }
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(gate_w) };
    // The error pipe closes on a successful exec (O_CLOEXEC) or carries exec's errno.
    let mut errno = 0i32;
    // SAFETY: reads at most 4 bytes into an i32 we own, then closes our own descriptor.
    let n = unsafe { libc::read(err_r, std::ptr::from_mut(&mut errno).cast(), 4) };
    // SAFETY: as above.
    unsafe { libc::close(err_r) };
    let mut launched = Launched { pid, status: None };
    if n == 4 || registered.is_err() {
        launched.wait(true);
        registered?;
        return Err(fatal(
            ExitCode::Target,
            format!("cannot start '{}': {}", argv[0].to_string_lossy(), std::io::Error::from_raw_os_error(errno)),
        ));
    }
    Ok(launched)
}

impl Launched {
    /// Reaps the child if it has exited (or waits for it when `block`).
    fn wait(&mut self, block: bool) -> Option<i32> {
        if self.status.is_none() {
            let mut status = 0;
            let flags = if block { 0 } else { libc::WNOHANG };
            // SAFETY: waiting for our own child.
            if unsafe { libc::waitpid(self.pid as i32, &mut status, flags) } == self.pid as i32 {
                self.status = Some(status);
            }
        }
        self.status
    }
}

pub enum Running {
    All,
    Pids { pids: Vec<u32>, gone: Vec<u32> },
    Containers(Containers),
    Command(Launched),
}

impl Running {
    /// Processes known to be targets from the start (for `--all`, every process now running).
    pub fn initial_pids(&self) -> Vec<u32> {
        match self {
            Self::All => procfs::process::all_processes()
                .map(|all| all.filter_map(|p| p.ok()).map(|p| p.pid as u32).collect())
                .unwrap_or_default(),
            Self::Pids { pids, .. } => pids.clone(),
            Self::Containers(c) => c.members.clone(),
            Self::Command(_) => Vec::new(),
        }
    }

    /// Targets that appeared since the last call (processes a target container started),
    /// now registered with the BPF programs.
    pub fn discover(&mut self, bpf: &mut Bpf) -> Vec<u32> {
        let Self::Containers(c) = self else { return Vec::new() };
        let joined = c.discover();
        joined.into_iter().filter(|&pid| bpf.add_target(pid).is_ok()).collect()
    }

    /// The command we started, until its exec is seen: its samples before that are our own
    /// forked child between fork and exec, not the command.
    pub fn launched_pid(&self) -> Option<u32> {
        match self {
            Self::Command(child) => Some(child.pid),
            _ => None,
        }
    }

    /// Polls the targets; `Some(reason)` once there is nothing left to profile.
    pub fn finished(&mut self) -> Option<String> {
        match self {
            // A container's processes come and go (and it may restart): until stopped.
            Self::All | Self::Containers(_) => None,
            Self::Pids { pids, gone } => {
                for &pid in pids.iter() {
                    if !gone.contains(&pid) && !procinfo::is_alive(pid) {
                        gone.push(pid);
                    }
                }
                (gone.len() == pids.len()).then(|| match pids.as_slice() {
                    [pid] => format!("process {pid} exited"),
                    _ => "all target processes exited".to_string(),
                })
            }
            Self::Command(child) => {
                child.wait(false).map(|status| format!("command exited ({})", describe_status(status)))
            }
        }
    }

    /// Notes about targets that exited while profiling (for the summary).
    pub fn notes(&self) -> Vec<String> {
        match self {
            Self::Pids { pids, gone } if !gone.is_empty() && gone.len() < pids.len() => {
                gone.iter().map(|pid| format!("process {pid} exited during profiling; its samples are kept")).collect()
            }
            _ => Vec::new(),
        }
    }

    /// When profiling stops before the command we started has exited, stop it too: it was
    /// started for this profile. SIGTERM first, SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let Self::Command(child) = self else { return };
        if child.wait(false).is_some() {
            return;
        }
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(child.pid as i32, libc::SIGTERM) };
        for _ in 0..40 {
            if child.wait(false).is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // SAFETY: a signal to the child we started and have not reaped.
        unsafe { libc::kill(child.pid as i32, libc::SIGKILL) };
        child.wait(true);
    }
}

fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        "unknown status".to_string()
    }
}
