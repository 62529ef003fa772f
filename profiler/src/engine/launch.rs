//! A command started for the profile (`-- COMMAND`): started gated, in a process group of its
//! own, and ended with everything it started when profiling stops first.
//!
//! - **Gated**: the forked child waits on a pipe until its pid is registered with the kernel
//!   programs, then execs, so its first instruction is profiled. This is fork+exec by hand
//!   because std's `Command::spawn` waits for the exec, which would deadlock with a child that
//!   waits for us.
//! - **Its own process group** (as `timeout(1)` does): the command and whatever it starts can be
//!   signalled together, and a Ctrl-C in the terminal reaches pyebpf, which ends the group in
//!   order (SIGINT, SIGTERM, SIGKILL) and still writes the outputs. The price, as with
//!   `timeout`: the group is not the terminal's foreground group, so a command that reads the
//!   terminal is stopped by SIGTTIN; [`Launched::poll`] notices and says so.
//! - **Ended as a tree**: the group, and every followed descendant that left it (`setsid`,
//!   a daemon), checked by start time so a reused pid is never signalled.
use std::{
    ffi::{CString, OsString},
    time::{Duration, Instant},
};

use crate::{
    engine::tree::Tree,
    error::{ExitCode, fatal},
    host::procinfo,
};

/// How the command's processes are asked to end, and how long each signal is given.
const ENDING: [(i32, Duration); 3] = [
    // What a Ctrl-C would have sent: Python raises KeyboardInterrupt, servers shut down.
    (libc::SIGINT, Duration::from_secs(2)),
    (libc::SIGTERM, Duration::from_secs(2)),
    (libc::SIGKILL, Duration::from_secs(2)),
];
/// How often the processes are checked while they end.
const ENDING_POLL: Duration = Duration::from_millis(20);

/// A command we started: its pid (also its process group), and its wait status once reaped.
pub struct Launched {
    pub pid: u32,
    status: Option<i32>,
    /// The signal that stopped it when it touched the terminal (SIGTTIN, SIGTTOU).
    terminal_stop: Option<i32>,
}

/// A process of the command's, by pid and name (`comm`).
pub type NamedPid = (u32, String);

/// How ending the command's processes went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Processes running when the ending began.
    pub processes: Vec<NamedPid>,
    /// The signals sent, in order.
    pub signals: Vec<i32>,
    pub took: Duration,
    /// Still running after SIGKILL (stuck in the kernel).
    pub survivors: Vec<NamedPid>,
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

/// Starts `argv` in a new process group so that it cannot run one instruction of the program
/// before `register` has put its pid in the kernel's maps: the forked child waits on a pipe
/// until we say go, then execs.
///
/// With `die_with_us`, the command gets SIGTERM if pyebpf dies without ending it (SIGKILL, a
/// crash): `PR_SET_PDEATHSIG` fires when the thread that forked exits, and this is the main
/// thread of a single-threaded runtime, which lives as long as pyebpf.
pub fn spawn_gated(
    argv: &[OsString],
    die_with_us: bool,
    register: impl FnOnce(u32) -> anyhow::Result<()>,
) -> anyhow::Result<Launched> {
    let program = cstring(resolve_program(&argv[0])?.as_os_str())?;
    let args = argv.iter().map(|a| cstring(a)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let (gate_r, gate_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let parent = std::process::id() as i32;

    // SAFETY: after fork the child only makes async-signal-safe calls (setpgid, prctl,
    // sigaction, close, read, execv, write, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if pid == 0 {
        // SAFETY: the child of a fork; only async-signal-safe calls on memory prepared before it.
        unsafe {
            libc::close(gate_w);
            libc::close(err_r);
            libc::setpgid(0, 0);
            if die_with_us {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // pyebpf died before the prctl: nobody will release the gate.
                if libc::getppid() != parent {
                    libc::_exit(127);
                }
            }
            // Rust ignores SIGPIPE in pyebpf; an ignored signal stays ignored across exec,
            // and the command must get the default (as std's Command gives it).
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGPIPE, &default, std::ptr::null_mut());
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
    // SAFETY: closing the ends of our own pipes that only the child uses; setpgid on our own
    // child, which has not exec'd (it waits on the gate), as the child itself does: whichever
    // runs first, the group exists before the gate opens.
    unsafe {
        libc::close(gate_r);
        libc::close(err_w);
        libc::setpgid(pid as i32, pid as i32);
    }
    let registered = register(pid);
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
    let mut launched = Launched { pid, status: None, terminal_stop: None };
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
    /// Reaps the command if it has exited (or waits for it when `block`), and notes a stop by
    /// the terminal. Its wait status once reaped.
    pub fn wait(&mut self, block: bool) -> Option<i32> {
        if self.status.is_none() {
            let mut status = 0;
            let flags = if block { 0 } else { libc::WNOHANG | libc::WUNTRACED };
            // SAFETY: waiting for our own child.
            if unsafe { libc::waitpid(self.pid as i32, &mut status, flags) } == self.pid as i32 {
                if libc::WIFSTOPPED(status) {
                    let signal = libc::WSTOPSIG(status);
                    if signal == libc::SIGTTIN || signal == libc::SIGTTOU {
                        self.terminal_stop = Some(signal);
                    }
                } else {
                    self.status = Some(status);
                }
            }
        }
        self.status
    }

    /// The wait status, once the command has been reaped.
    pub fn status(&self) -> Option<i32> {
        self.status
    }

    /// The signal that stopped the command when it used the terminal, if that happened.
    pub fn terminal_stop(&self) -> Option<i32> {
        self.terminal_stop
    }

    /// The command's processes still running: its process group, and the followed
    /// descendants that left the group (not zombies, not a later process with a reused pid).
    pub fn running(&self, tree: Option<&Tree>) -> Vec<NamedPid> {
        let mut pids: Vec<NamedPid> = procinfo::all_stats()
            .into_iter()
            .filter(|s| !s.zombie && (s.pgrp == self.pid || tree.is_some_and(|t| t.is_member_process(s))))
            .map(|s| (s.pid, s.comm))
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Ends the command and everything it started: SIGINT to its process group and to its
    /// followed descendants outside it, then SIGTERM, then SIGKILL, each given a grace
    /// period unless everything has exited (a stopped process is continued so it can act on
    /// the signal). Reaps the command.
    pub fn end(&mut self, tree: Option<&Tree>) -> Ended {
        let start = Instant::now();
        self.wait(false);
        let processes = self.running(tree);
        let mut left = processes.clone();
        let mut signals = Vec::new();
        for (signal, grace) in ENDING {
            if left.is_empty() {
                break;
            }
            self.signal(signal, &left);
            signals.push(signal);
            let until = Instant::now() + grace;
            loop {
                self.wait(false);
                left = self.running(tree);
                if left.is_empty() || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(ENDING_POLL);
            }
        }
        self.wait(false);
        Ended { processes, signals, took: start.elapsed(), survivors: left }
    }

    /// Sends `signal` to the process group and to each of `pids` outside it.
    fn signal(&self, signal: i32, pids: &[NamedPid]) {
        let group = self.pid as i32;
        let outside: Vec<i32> = pids
            .iter()
            .filter(|(pid, _)| procinfo::stat(*pid).is_some_and(|s| s.pgrp != self.pid))
            .map(|(pid, _)| *pid as i32)
            .collect();
        for sig in [signal, libc::SIGCONT] {
            if sig == libc::SIGCONT && signal == libc::SIGKILL {
                break;
            }
            // SAFETY: signalling the process group we created, and processes `running`
            // checked (by start time) to be the command's descendants.
            unsafe {
                libc::kill(-group, sig);
                for &pid in &outside {
                    libc::kill(pid, sig);
                }
            }
        }
    }
}

/// "status 3", "signal 9 (SIGKILL)" for a wait status.
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        format!("signal {signal} ({})", signal_name(signal))
    } else {
        "unknown status".to_string()
    }
}

/// The exit status a shell gives a command with this wait status: its exit code, or 128 plus
/// the signal that killed it.
pub fn shell_status(status: i32) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        (128 + libc::WTERMSIG(status)).min(255) as u8
    } else {
        1
    }
}

/// `SIGINT`, `SIGTERM`... for the signals pyebpf sends or reports.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell started gated, whose children put themselves in new sessions or ignore SIGINT
    /// and SIGTERM, is ended whole: nothing of it runs afterwards.
    #[test]
    fn ends_the_group_and_what_left_it() {
        let argv: Vec<OsString> = ["/bin/sh", "-c", "trap '' INT TERM; sleep 60 & setsid sleep 61 & wait"]
            .iter()
            .map(OsString::from)
            .collect();
        let mut launched = spawn_gated(&argv, true, |_| Ok(())).unwrap();
        let pid = launched.pid;
        // The shell and its first sleep are in the group; the setsid one is not.
        let deadline = Instant::now() + Duration::from_secs(10);
        let escaped = loop {
            let all = procinfo::all_stats();
            let in_group = all.iter().filter(|s| s.pgrp == pid && !s.zombie).count();
            let outside = all.iter().find(|s| s.ppid == pid && s.pgrp != pid && s.comm == "sleep");
            if let (2.., Some(s)) = (in_group, outside) {
                break s.clone();
            }
            assert!(Instant::now() < deadline, "the command's processes did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Without a tree only the group is known; the escaped sleep is found through a tree.
        let mut tree = Tree::default();
        tree.forked(escaped.pid, pid);
        let ended = launched.end(Some(&tree));
        let pids: Vec<u32> = ended.processes.iter().map(|(pid, _)| *pid).collect();
        assert!(pids.contains(&pid) && pids.contains(&escaped.pid), "{ended:?}");
        // The shell ignores SIGINT and SIGTERM: only SIGKILL ends it.
        assert_eq!(ended.signals, [libc::SIGINT, libc::SIGTERM, libc::SIGKILL], "{ended:?}");
        assert!(ended.survivors.is_empty(), "{ended:?}");
        assert!(launched.status().is_some_and(|s| libc::WIFSIGNALED(s)));
        assert!(launched.running(Some(&tree)).is_empty());
        assert!(procinfo::stat(escaped.pid).is_none_or(|s| s.zombie));
    }

    #[test]
    fn a_command_that_cannot_start_says_why() {
        let argv = vec![OsString::from("/nonexistent/program")];
        let err = spawn_gated(&argv, true, |_| Ok(())).err().unwrap();
        assert!(err.to_string().contains("no such file"), "{err}");
    }

    #[test]
    fn statuses_read_as_a_shell_reads_them() {
        assert_eq!((shell_status(3 << 8), describe_status(3 << 8)), (3, "status 3".to_string()));
        assert_eq!((shell_status(libc::SIGKILL), describe_status(libc::SIGKILL)), (137, "signal 9 (SIGKILL)".into()));
    }
}
