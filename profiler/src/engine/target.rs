//! What to profile: the whole host, given pids, the processes of given containers, or a
//! command we start; with or without the pids' and command's descendants ([`super::tree`]), and what happens to a command still running when
//! profiling stops ([`super::launch`]).
use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    time::{Duration, Instant},
};

use crate::{
    bpf::Bpf,
    engine::{
        launch::{self, Ended, Launched, NamedPid},
        tree::Tree,
    },
    error::{ExitCode, fatal},
    host::{cgroup, procinfo},
};

pub enum TargetSpec {
    All,
    Pids {
        pids: Vec<u32>,
        /// Follow their descendants.
        children: bool,
    },
    /// Full container ids (resolved from the prefixes given) and their processes now.
    Containers(Containers),
    Command {
        argv: Vec<OsString>,
        /// Follow its descendants.
        children: bool,
        /// Leave it running when profiling stops before it exits.
        leave_running: bool,
    },
}

/// The processes of some containers: those running, and those that appear later (checked on
/// every housekeeping tick). A process can join a container's cgroup after it started: runtimes
/// fork outside it and move the child in (`runc exec`), so a pid seen outside is read again
/// [`RECHECK_AFTER`] after it was first seen, then left alone: a bounded few reads per pid.
pub struct Containers {
    ids: Vec<String>,
    members: Vec<u32>,
    /// Pids whose cgroup was read and that are not members: when first seen, and how many of
    /// the re-reads were done; pruned to the living.
    seen: HashMap<u32, (Instant, usize)>,
}

/// When a pid seen outside the containers has its cgroup read again, from its first sight.
const RECHECK_AFTER: [Duration; 3] = [Duration::from_millis(500), Duration::from_secs(2), Duration::from_secs(10)];

impl Containers {
    /// Resolves id prefixes against the containers of the processes running now: each must
    /// name exactly one container, as `docker` requires.
    fn resolve(prefixes: &[String]) -> anyhow::Result<Self> {
        let mut running: Vec<(u32, String)> = Vec::new();
        let mut seen = HashMap::new();
        let now = Instant::now();
        for pid in all_pids() {
            seen.insert(pid, (now, 0));
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
        let members: Vec<u32> = running.iter().filter(|(_, id)| ids.contains(id)).map(|(pid, _)| *pid).collect();
        seen.retain(|pid, _| !members.contains(pid));
        Ok(Self { ids, members, seen })
    }

    /// Processes that joined one of the containers since the last call: new pids, and pids
    /// seen outside whose re-read is due.
    fn discover(&mut self) -> Vec<u32> {
        let alive: HashSet<u32> = all_pids().into_iter().collect();
        let now = Instant::now();
        self.seen.retain(|pid, _| alive.contains(pid));
        self.members.retain(|pid| alive.contains(pid));
        let mut joined = Vec::new();
        for pid in alive {
            if self.members.contains(&pid) {
                continue;
            }
            let due = match self.seen.get_mut(&pid) {
                None => {
                    self.seen.insert(pid, (now, 0));
                    true
                }
                Some((first, rereads)) => {
                    let due = RECHECK_AFTER.get(*rereads).is_some_and(|after| now.duration_since(*first) >= *after);
                    if due {
                        *rereads += 1;
                    }
                    due
                }
            };
            if due && cgroup::identity(pid).and_then(|i| i.container_id).is_some_and(|id| self.ids.contains(&id)) {
                log::debug!("pid {pid} joined a target container");
                self.seen.remove(&pid);
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
    /// process), a command must be non-empty, container prefixes must name one container each.
    /// `children`: follow the pids' or command's descendants (`None`: the default, yes for a
    /// command, no for pids).
    pub fn resolve(
        all: bool,
        pids: &[u32],
        containers: &[String],
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
        Ok(Self::Pids { pids: resolved, children: children.unwrap_or(false) })
    }

    /// Whether the kernel must follow forks.
    pub fn follows_children(&self) -> bool {
        match self {
            // A container's later processes are found by their cgroup, children or not.
            Self::All | Self::Containers(_) => false,
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
            Self::Containers(containers) => {
                for &pid in &containers.members {
                    bpf.add_target(pid)?;
                }
                Ok(Running { started: Started::Containers(containers), tree: None })
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

    /// The processes are named one by one (pids, containers), not the whole host or a command.
    pub fn is_explicit(&self) -> bool {
        matches!(self, Self::Pids { .. } | Self::Containers(_))
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
    Containers(Containers),
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
            Started::All => all_pids(),
            Started::Pids { pids, descendants, .. } => pids.iter().chain(descendants).copied().collect(),
            Started::Containers(c) => c.members.clone(),
            Started::Command { .. } => Vec::new(),
        }
    }

    /// Targets that appeared since the last call (processes a target container started),
    /// now registered with the BPF programs.
    pub fn discover(&mut self, bpf: &mut Bpf) -> Vec<u32> {
        let Started::Containers(c) = &mut self.started else { return Vec::new() };
        let joined = c.discover();
        joined.into_iter().filter(|&pid| bpf.add_target(pid).is_ok()).collect()
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

    /// Process `pid` exited (the kernel's exit event).
    pub fn exited(&mut self, pid: u32) {
        if let Some(tree) = &mut self.tree {
            tree.exited(pid);
        }
    }

    /// Is every process on the host a target (`--all`: no per-process target map)?
    pub fn is_host(&self) -> bool {
        matches!(self.started, Started::All)
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
            // A container's processes come and go (and it may restart): until stopped.
            Started::All | Started::Containers(_) => None,
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
