//! [`FdCache`]: targets per (pid, fd), kept while the descriptor still points to the same
//! thing, so that classifying thousands of waits a second does not redo /proc lookups.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{FdTarget, proc_net::NetCache, resolve};

/// How long a parsed /proc/PID/net table is used before it is read again, by default.
pub const DEFAULT_TABLE_MAX_AGE: Duration = Duration::from_secs(1);

/// Targets per (pid, fd), plus the parsed socket tables per network namespace.
///
/// A descriptor can be closed and its number reused: the caller must `invalidate` an entry when
/// it sees the fd closed (close, dup2 over it, exec with CLOEXEC) and `forget_process` when a
/// process exits. Provisional answers are kept only for `table_max_age`, then looked up again:
/// a socket its table did not list yet (created after the table was read), a TCP or UDP socket
/// with no peer (listening or unconnected: it may connect), a unix client whose connection is
/// not accepted yet.
pub struct FdCache {
    processes: HashMap<u32, HashMap<i32, Entry>>,
    net: NetCache,
}

struct Entry {
    target: FdTarget,
    /// What /proc/PID/fd/FD pointed to when resolved: a different link means the fd number was
    /// closed and reused for something else.
    link: Option<String>,
    /// `None`: valid until invalidated.
    expires: Option<Instant>,
}

impl Default for FdCache {
    fn default() -> Self {
        Self::new(DEFAULT_TABLE_MAX_AGE)
    }
}

impl FdCache {
    /// `table_max_age` bounds how often each /proc/PID/net table of a namespace is parsed.
    pub fn new(table_max_age: Duration) -> Self {
        FdCache { processes: HashMap::new(), net: NetCache::new(table_max_age) }
    }

    /// What `fd` of `pid` refers to, from the cache or resolved now.
    pub fn describe(&mut self, pid: u32, fd: i32) -> Option<&FdTarget> {
        let now = Instant::now();
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok().map(|p| p.to_string_lossy().into_owned());
        let fds = self.processes.entry(pid).or_default();
        // Once the fd (or the process) is gone, the last answer stands: waits are often
        // classified after the fact.
        let cached =
            fds.get(&fd).is_some_and(|e| link.is_none() || (e.link == link && e.expires.is_none_or(|at| now < at)));
        if !cached {
            let Some(resolved) = resolve(pid, fd, &mut self.net) else {
                fds.remove(&fd);
                if fds.is_empty() {
                    self.processes.remove(&pid);
                }
                return None;
            };
            let expires = (!resolved.complete).then(|| now + self.net.max_age);
            fds.insert(fd, Entry { target: resolved.target, link, expires });
        }
        self.processes.get(&pid)?.get(&fd).map(|entry| &entry.target)
    }

    /// Drops what is known of one descriptor (it was closed or replaced).
    pub fn invalidate(&mut self, pid: u32, fd: i32) {
        if let Some(fds) = self.processes.get_mut(&pid) {
            fds.remove(&fd);
        }
    }

    /// Drops every descriptor of a process (it exited or exec'd).
    pub fn forget_process(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vanished_process_leaves_nothing_cached() {
        let mut cache = FdCache::default();
        assert_eq!(cache.describe(u32::MAX, 0), None);
        assert!(cache.processes.is_empty());
    }
}
