//! What to profile: the whole host, given pids, or a command we start.
use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    process::{Child, ExitStatus},
};

use crate::{
    bpf::Bpf,
    error::{ExitCode, fatal},
    procinfo,
};

pub enum TargetSpec {
    All,
    Pids(Vec<u32>),
    Command(Vec<OsString>),
}

impl TargetSpec {
    /// Checks the target before anything is loaded: pids must exist (a thread id stands for its
    /// process), a command must be non-empty.
    pub fn resolve(all: bool, pids: &[u32], command: &[OsString]) -> anyhow::Result<Self> {
        if all {
            return Ok(Self::All);
        }
        if !command.is_empty() {
            return Ok(Self::Command(command.to_vec()));
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
            Self::Command(argv) => {
                let child = spawn_gated(&argv, bpf)?;
                Ok(Running::Command { child, exited: None })
            }
        }
    }
}

/// Starts `argv` so that it cannot run a single instruction of the program before its pid is in
/// the BPF target map: the child blocks on a pipe between fork and exec until we say go.
fn spawn_gated(argv: &[OsString], bpf: &mut Bpf) -> anyhow::Result<Child> {
    let mut fds = [0i32; 2];
    // SAFETY: plain syscall on a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    // SAFETY: the closure only makes async-signal-safe syscalls (close, read).
    unsafe {
        cmd.pre_exec(move || {
            libc::close(write_fd);
            let mut byte = 0u8;
            loop {
                match libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) {
                    1 => return Ok(()),
                    0 => return Err(std::io::Error::other("pyebpf stopped before the command could start")),
                    _ => {
                        let err = std::io::Error::last_os_error();
                        if err.kind() != std::io::ErrorKind::Interrupted {
                            return Err(err);
                        }
                    }
                }
            }
        });
    }
    let spawned = cmd.spawn();
    // SAFETY: closing our copy of the read end, which we own.
    unsafe { libc::close(read_fd) };
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            unsafe { libc::close(write_fd) };
            return Err(fatal(
                ExitCode::Target,
                format!("cannot start '{}': {e}", argv[0].to_string_lossy()),
            ));
        }
    };
    let registered = bpf.add_target(child.id());
    // Closing without writing makes the child fail its exec instead of running unprofiled.
    if registered.is_ok() {
        unsafe { libc::write(write_fd, [1u8].as_ptr().cast(), 1) };
    }
    unsafe { libc::close(write_fd) };
    registered?;
    Ok(child)
}

pub enum Running {
    All,
    Pids { pids: Vec<u32>, gone: Vec<u32> },
    Command { child: Child, exited: Option<ExitStatus> },
}

impl Running {
    /// Polls the targets; `Some(reason)` once there is nothing left to profile.
    pub fn finished(&mut self) -> Option<String> {
        match self {
            Self::All => None,
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
            Self::Command { child, exited } => {
                if exited.is_none() {
                    *exited = child.try_wait().ok().flatten();
                }
                exited.map(|status| format!("command exited ({})", describe_status(status)))
            }
        }
    }

    /// Notes about targets that exited while profiling (for the summary).
    pub fn notes(&self) -> Vec<String> {
        match self {
            Self::Pids { pids, gone } if !gone.is_empty() && gone.len() < pids.len() => gone
                .iter()
                .map(|pid| format!("process {pid} exited during profiling; its samples are kept"))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// When profiling stops before the command we started has exited, stop it too: it was
    /// started for this profile. SIGTERM first, SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let Self::Command { child, exited } = self else { return };
        if exited.is_some() || matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..40 {
            if let Ok(Some(status)) = child.try_wait() {
                *exited = Some(status);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        *exited = child.wait().ok();
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown status".to_string(),
    }
}
