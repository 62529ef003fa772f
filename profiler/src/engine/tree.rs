//! Process trees: the descendants of the targets, followed as they fork.
//!
//! The kernel does the following (`process_fork`: a child of a followed process becomes a
//! target, and followed, before it first runs; an exec keeps its pid, so it stays followed).
//! This module keeps userspace's view of the tree: which processes are followed and who forked
//! each (the JSON's `ppid`), the descendants already running when profiling starts (found by
//! one walk of /proc), and the kernel maps cleaned of exited members, so they stay bounded
//! however many children come and go (gunicorn replacing workers, a pool's tasks).
use std::collections::{HashMap, HashSet, hash_map::Entry};

use crate::{bpf::Bpf, host::procinfo};

/// Walks of /proc at start, at most: a descendant forked by a process found in one walk, before
/// that process was followed, is found by the next.
const START_WALKS: usize = 8;

/// A followed process.
#[derive(Debug, Clone)]
struct Member {
    /// The process that forked it (for a root: its parent when profiling started).
    ppid: u32,
    /// Its start time (/proc), telling it apart from a later process given the same pid;
    /// `None` when it was gone before it could be read.
    starttime: Option<u64>,
    /// Its name when last read (at its fork, its exec): a child may be gone before its first
    /// sample, and /proc with it.
    comm: Option<String>,
    /// A target given by the user (a `--pid`, the command), not a descendant.
    root: bool,
    exited: bool,
}

impl Member {
    /// A member as /proc describes it now; `ppid` (if not 0) is who forked it. One already
    /// gone is exited from the start: without its start time, a later process given its pid
    /// could not be told from it.
    fn read(pid: u32, ppid: u32) -> Self {
        let stat = procinfo::stat(pid).filter(|s| !s.zombie);
        Member {
            ppid: if ppid != 0 { ppid } else { stat.as_ref().map_or(0, |s| s.ppid) },
            starttime: stat.as_ref().map(|s| s.starttime),
            exited: stat.is_none(),
            comm: stat.map(|s| s.comm),
            root: false,
        }
    }
}

/// The followed processes: the roots and their descendants.
#[derive(Default)]
pub struct Tree {
    members: HashMap<u32, Member>,
}

impl Tree {
    /// Follows `roots` (processes already running, or the command about to be released) in
    /// the kernel and here.
    pub fn follow_roots(&mut self, roots: &[u32], bpf: &mut Bpf) -> anyhow::Result<()> {
        for &pid in roots {
            bpf.follow(pid)?;
            let mut member = Member::read(pid, 0);
            member.root = true;
            self.members.insert(pid, member);
        }
        Ok(())
    }

    /// Finds the descendants of the members that are running now, follows them, and returns
    /// them. Call once the roots are followed: whatever they fork from then on, the kernel
    /// follows; what they forked before is in /proc.
    pub fn adopt_running(&mut self, bpf: &mut Bpf) -> Vec<u32> {
        let mut found = Vec::new();
        // A walk finds the descendants of what is followed when it starts; one forked meanwhile
        // by a process not yet followed is found by the next walk.
        for _ in 0..START_WALKS {
            let new = self.descendants_in(procinfo::all_stats());
            if new.is_empty() {
                break;
            }
            for s in new {
                if let Err(e) = bpf.follow(s.pid) {
                    log::warn!("cannot follow pid {}: {e:#}", s.pid);
                    continue;
                }
                found.push(s.pid);
                let member = Member {
                    ppid: s.ppid,
                    starttime: Some(s.starttime),
                    comm: Some(s.comm),
                    root: false,
                    exited: false,
                };
                self.members.insert(s.pid, member);
            }
        }
        found
    }

    /// The processes in `stats` descended from a live member that are not members yet, pyebpf
    /// aside (it may be a descendant of a target: a shell's). /proc lists pids in order, which
    /// is not tree order once pids wrap: a child may come before its parent.
    fn descendants_in(&self, stats: Vec<procinfo::ProcStat>) -> Vec<procinfo::ProcStat> {
        let me = std::process::id();
        let live: Vec<procinfo::ProcStat> = stats.into_iter().filter(|s| !s.zombie && s.pid != me).collect();
        let mut inside: HashSet<u32> = self.members.iter().filter(|(_, m)| !m.exited).map(|(&pid, _)| pid).collect();
        let mut found = Vec::new();
        loop {
            let before = found.len();
            for s in &live {
                if !inside.contains(&s.pid) && inside.contains(&s.ppid) {
                    inside.insert(s.pid);
                    found.push(s.clone());
                }
            }
            if found.len() == before {
                return found;
            }
        }
    }

    /// The kernel followed a child forked by `ppid`.
    pub fn forked(&mut self, pid: u32, ppid: u32) {
        self.members.insert(pid, Member::read(pid, ppid));
    }

    /// Member `pid` called exec: its name changed.
    pub fn exec(&mut self, pid: u32) {
        if let Some(m) = self.members.get_mut(&pid)
            && let Some(comm) = procinfo::comm(pid)
        {
            m.comm = Some(comm);
        }
    }

    /// The name of member `pid` when last read.
    pub fn comm(&self, pid: u32) -> Option<&str> {
        self.members.get(&pid)?.comm.as_deref()
    }

    /// The process that forked `pid`, if it is a member.
    pub fn ppid(&self, pid: u32) -> Option<u32> {
        self.members.get(&pid).map(|m| m.ppid)
    }

    /// Is `pid` (still) this member, not a later process that was given its pid?
    fn same_process(member: &Member, stat: &procinfo::ProcStat) -> bool {
        member.starttime == Some(stat.starttime)
    }

    /// Member `pid` exited (the kernel's exit event; the session drops it from the kernel's
    /// maps).
    pub fn exited(&mut self, pid: u32) {
        if let Some(m) = self.members.get_mut(&pid) {
            m.exited = true;
        }
    }

    /// The safety net behind exit and fork events (the session's /proc rescan, see
    /// [`super::exits`]): marks members that exited and drops them from the kernel's maps,
    /// and adds children the kernel followed whose fork event was lost (a full ring buffer).
    /// Returns the pids added.
    pub fn sweep(&mut self, bpf: &mut Bpf) -> Vec<u32> {
        let mut added = Vec::new();
        let in_kernel: HashSet<u32> = bpf.followed().into_iter().collect();
        for &pid in &in_kernel {
            if let Entry::Vacant(entry) = self.members.entry(pid) {
                // The parent /proc gives: the one that forked it, unless that one exited.
                entry.insert(Member::read(pid, 0));
                added.push(pid);
            }
        }
        for (&pid, member) in self.members.iter_mut() {
            if !member.exited {
                member.exited = !procinfo::stat(pid).is_some_and(|s| !s.zombie && Self::same_process(member, &s));
            }
            // Exited, or gone before it was first looked at: out of the maps, so that a later
            // process given its pid is not profiled for it.
            if member.exited && in_kernel.contains(&pid) {
                bpf.forget_process(pid);
            }
        }
        added
    }

    /// Members still running (checked now, not at the last sweep).
    pub fn alive(&self) -> Vec<u32> {
        let mut alive: Vec<u32> = self
            .members
            .iter()
            .filter(|(_, m)| !m.exited)
            .filter(|&(&pid, m)| procinfo::stat(pid).is_some_and(|s| !s.zombie && Self::same_process(m, &s)))
            .map(|(&pid, _)| pid)
            .collect();
        alive.sort_unstable();
        alive
    }

    /// Members not known to have exited (as of the last sweep).
    pub fn any_running(&self) -> bool {
        self.members.values().any(|m| !m.exited)
    }

    /// Descendants (not roots) still running.
    pub fn alive_descendants(&self) -> Vec<u32> {
        self.alive().into_iter().filter(|pid| self.members.get(pid).is_some_and(|m| !m.root)).collect()
    }

    /// Is `pid` with start time `starttime` a member that has not exited? (Before signalling
    /// a member: its pid may have been reused.)
    pub fn is_member_process(&self, stat: &procinfo::ProcStat) -> bool {
        self.members.get(&stat.pid).is_some_and(|m| !m.exited && Self::same_process(m, stat))
    }

    /// Forgets members that exited (a rotating session's window is built by then).
    pub fn forget_exited(&mut self) {
        self.members.retain(|_, m| !m.exited);
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: u32, ppid: u32, zombie: bool) -> procinfo::ProcStat {
        procinfo::ProcStat { pid, comm: format!("p{pid}"), ppid, pgrp: pid, session: 1, zombie, starttime: pid.into() }
    }

    fn member(ppid: u32, starttime: u64) -> Member {
        Member { ppid, starttime: Some(starttime), comm: None, root: false, exited: false }
    }

    #[test]
    fn descendants_are_found_whatever_the_pid_order() {
        let mut tree = Tree::default();
        tree.members.insert(100, member(1, 100));
        // 5 is a grandchild listed before its parent 300 (pids wrapped); 7 is a zombie child;
        // 200 is someone else's.
        let stats = vec![
            stat(5, 300, false),
            stat(7, 100, true),
            stat(100, 1, false),
            stat(200, 1, false),
            stat(300, 100, false),
        ];
        let mut found: Vec<(u32, u32)> = tree.descendants_in(stats).iter().map(|s| (s.pid, s.ppid)).collect();
        found.sort_unstable();
        assert_eq!(found, [(5, 300), (300, 100)]);
        // Members already known are not found again; an exited member's children are not its.
        tree.members.insert(300, member(100, 300));
        tree.members.get_mut(&100).unwrap().exited = true;
        assert!(tree.descendants_in(vec![stat(400, 100, false)]).is_empty());
        assert_eq!(tree.descendants_in(vec![stat(5, 300, false)]).len(), 1);
    }

    #[test]
    fn a_reused_pid_is_not_the_member() {
        let mut tree = Tree::default();
        tree.members.insert(42, member(1, 1000));
        assert!(!tree.is_member_process(&stat(42, 1, false)));
        let mut same = stat(42, 1, false);
        same.starttime = 1000;
        assert!(tree.is_member_process(&same));
        assert_eq!(tree.ppid(42), Some(1));
    }
}
