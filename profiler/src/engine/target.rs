//! What to profile: the whole host, given pids, or a command we start; with or without the
//! targets' descendants ([`super::tree`]), and what happens to a command still running when
//! profiling stops ([`super::launch`]).
use std::ffi::OsString;

use crate::{
    bpf::Bpf,
    engine::{
        launch::{self, Ended, Launched, NamedPid},
        tree::Tree,
    },
    error::{ExitCode, fatal},
    host::procinfo,
};

pub enum TargetSpec {
    All,
    Pids {
        pids: Vec<u32>,
        /// Follow their descendants.
        children: bool,
    },
    Command {
        argv: Vec<OsString>,
        /// Follow its descendants.
        children: bool,
        /// Leave it running when profiling stops before it exits.
        leave_running: bool,
    },
}

impl TargetSpec {
    /// Checks the target before anything is loaded: pids must exist (a thread id stands for its
    /// process), a command must be non-empty. `children`: follow the targets' descendants
    /// (`None`: the default, yes for a command, no for pids).
    pub fn resolve(
        all: bool,
        pids: &[u32],
        command: &[OsString],
        children: Option<bool>,
        leave_running: bool,
    ) -> anyhow::Result<Self> {
        if all {
            return Ok(Self::All);
        }
        if !command.is_empty() {
            return Ok(Self::Command { argv: command.to_vec(), children: children.unwrap_or(true), leave_running });
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
        Ok(Self::Pids { pids: resolved, children: children.unwrap_or(false) })
    }

    /// Whether the kernel must follow forks.
    pub fn follows_children(&self) -> bool {
        match self {
            Self::All => false,
            Self::Pids { children, .. } | Self::Command { children, .. } => *children,
        }
    }

    /// Registers the targets with the loaded BPF programs (starting the command if there is
    /// one; following the pids' descendants running now, if asked).
    pub fn start(self, bpf: &mut Bpf) -> anyhow::Result<Running> {
        match self {
            Self::All => Ok(Running { started: Started::All, tree: None }),
            Self::Pids { pids, children: false } => {
                for &pid in &pids {
                    bpf.add_target(pid)?;
                }
                Ok(Running { started: Started::Pids { pids, gone: Vec::new(), descendants: Vec::new() }, tree: None })
            }
            Self::Pids { pids, children: true } => {
                let mut tree = Tree::default();
                tree.follow_roots(&pids, bpf)?;
                let descendants = tree.adopt_running(bpf);
                Ok(Running { started: Started::Pids { pids, gone: Vec::new(), descendants }, tree: Some(tree) })
            }
            Self::Command { argv, children, leave_running } => {
                let mut tree = children.then(Tree::default);
                let launched = launch::spawn_gated(&argv, !leave_running, |pid| match &mut tree {
                    Some(tree) => tree.follow_roots(&[pid], bpf),
                    None => bpf.add_target(pid),
                })?;
                Ok(Running { started: Started::Command { launched, leave_running }, tree })
            }
        }
    }
}

enum Started {
    All,
    Pids {
        pids: Vec<u32>,
        gone: Vec<u32>,
        /// Their descendants running at start (when followed).
        descendants: Vec<u32>,
    },
    Command {
        launched: Launched,
        leave_running: bool,
    },
}

/// The targets while profiling.
pub struct Running {
    started: Started,
    /// The followed processes, when descendants are followed.
    tree: Option<Tree>,
}

/// What became of the command when profiling stopped, for the user and pyebpf's exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEnd {
    /// It exited on its own (wait status); `left` of its processes were still running and
    /// are left so.
    Exited { status: i32, left: Vec<NamedPid> },
    /// Profiling stopped first and pyebpf ended its processes.
    Ended { ended: Ended, status: Option<i32> },
    /// Profiling stopped first; `--leave-running` leaves these processes running.
    LeftRunning { running: Vec<NamedPid> },
}

impl Running {
    /// Processes known to be targets from the start (for `--all`, every process now running).
    pub fn initial_pids(&self) -> Vec<u32> {
        match &self.started {
            Started::All => procfs::process::all_processes()
                .map(|all| all.filter_map(|p| p.ok()).map(|p| p.pid as u32).collect())
                .unwrap_or_default(),
            Started::Pids { pids, descendants, .. } => pids.iter().chain(descendants).copied().collect(),
            Started::Command { .. } => Vec::new(),
        }
    }

    /// The command we started, until its exec is seen: its samples before that are our own
    /// forked child between fork and exec, not the command.
    pub fn launched_pid(&self) -> Option<u32> {
        match &self.started {
            Started::Command { launched, .. } => Some(launched.pid),
            _ => None,
        }
    }

    /// The kernel followed a child forked by `ppid`.
    pub fn forked(&mut self, pid: u32, ppid: u32) {
        if let Some(tree) = &mut self.tree {
            tree.forked(pid, ppid);
        }
    }

    /// A followed process called exec.
    pub fn exec(&mut self, pid: u32) {
        if let Some(tree) = &mut self.tree {
            tree.exec(pid);
        }
    }

    /// The parent of a followed process (the one that forked it).
    pub fn ppid(&self, pid: u32) -> Option<u32> {
        self.tree.as_ref()?.ppid(pid)
    }

    /// The name of a followed process when last read (it may have exited since).
    pub fn comm(&self, pid: u32) -> Option<&str> {
        self.tree.as_ref()?.comm(pid)
    }

    /// Housekeeping of the followed processes (see [`Tree::sweep`]): the pids of followed
    /// children not seen before (their fork event was lost).
    pub fn sweep(&mut self, bpf: &mut Bpf) -> Vec<u32> {
        self.tree.as_mut().map(|t| t.sweep(bpf)).unwrap_or_default()
    }

    /// Forgets followed processes that exited (rotating sessions, after a window is built).
    pub fn forget_exited(&mut self) {
        if let Some(tree) = &mut self.tree {
            tree.forget_exited();
        }
    }

    /// Polls the targets; `Some(reason)` once there is nothing left to profile.
    pub fn finished(&mut self) -> Option<String> {
        let tree = &self.tree;
        match &mut self.started {
            Started::All => None,
            Started::Pids { pids, gone, .. } => {
                for &pid in pids.iter() {
                    if !gone.contains(&pid) && !procinfo::is_alive(pid) {
                        gone.push(pid);
                    }
                }
                if gone.len() < pids.len() || tree.as_ref().is_some_and(Tree::any_running) {
                    return None;
                }
                let children =
                    if tree.as_ref().is_some_and(|t| t.len() > pids.len()) { " and their children" } else { "" };
                Some(match pids.as_slice() {
                    [pid] if children.is_empty() => format!("process {pid} exited"),
                    [pid] => format!("process {pid} and its children exited"),
                    _ => format!("all target processes{children} exited"),
                })
            }
            Started::Command { launched, .. } => {
                if let Some(status) = launched.wait(false) {
                    return Some(format!("command exited ({})", launch::describe_status(status)));
                }
                launched.terminal_stop().map(|signal| {
                    format!(
                        "the command was stopped by {} when it used the terminal: it runs in a process group of \
                         its own, which cannot read the terminal (give it its input with `< FILE`, or start it \
                         yourself and profile it with --pid)",
                        launch::signal_name(signal)
                    )
                })
            }
        }
    }

    /// The command was stopped for touching the terminal (see [`Running::finished`]).
    pub fn stopped_on_terminal(&self) -> bool {
        matches!(&self.started, Started::Command { launched, .. } if launched.terminal_stop().is_some())
    }

    /// Notes about targets that exited while profiling (for the summary).
    pub fn notes(&self) -> Vec<String> {
        match &self.started {
            Started::Pids { pids, gone, .. } if !gone.is_empty() && gone.len() < pids.len() => {
                gone.iter().map(|pid| format!("process {pid} exited during profiling; its samples are kept")).collect()
            }
            _ => Vec::new(),
        }
    }

    /// When profiling stops, what becomes of a command we started: if it still runs, its
    /// processes are ended (it was started for the profile), or left running with
    /// `--leave-running`; if it exited on its own, what it left running stays. `None` when
    /// there is no command.
    pub fn stop(&mut self) -> Option<CommandEnd> {
        let tree = self.tree.as_ref();
        let Started::Command { launched, leave_running } = &mut self.started else { return None };
        if let Some(status) = launched.wait(false) {
            return Some(CommandEnd::Exited { status, left: launched.running(tree) });
        }
        if *leave_running {
            return Some(CommandEnd::LeftRunning { running: launched.running(tree) });
        }
        let ended = launched.end(tree);
        Some(CommandEnd::Ended { ended, status: launched.status() })
    }
}
