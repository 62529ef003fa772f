//! What a process's file descriptor refers to, to name the target of a blocking syscall: a TCP
//! or UDP peer, a unix socket path, a file, a pipe...
//!
//! `readlink /proc/PID/fd/FD` says `socket:[INODE]`, `pipe:[INODE]`, `anon_inode:[KIND]` or a
//! path. A socket is looked up by inode in the target's own view of its network namespace
//! (`/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`), so processes in containers resolve too; the
//! socket's `system.sockprotoname` extended attribute says which one table to read. A connected
//! unix client has no path of its own: the path its peer is bound to comes from the kernel's
//! sock_diag netlink interface (`UNIX_DIAG_PEER`), asked inside the target's namespace.
//!
//! A process or descriptor vanishing mid-lookup gives `None`; odd lines in /proc are skipped.
//!
//! - `target.rs`: [`FdTarget`], what callers get, and its report text.
//! - `link.rs`: the readlink text of /proc/PID/fd/FD.
//! - `proc_net.rs`: the socket tables of a network namespace, parsed and cached.
//! - `unix_diag.rs`: unix socket names and peers from the kernel's sock_diag interface.
//! - `cache.rs`: [`FdCache`], targets per (pid, fd) while the descriptor is unchanged.
//!
//! This module ties them together: from a descriptor to its target ([`describe`]), sockets
//! through their protocol, namespace and table.
mod cache;
mod link;
mod proc_net;
mod target;
pub mod unix_diag;

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

pub use cache::{DEFAULT_TABLE_MAX_AGE, FdCache};
pub use link::{Link, parse_link};
pub use proc_net::{parse_inet_line, parse_unix_line};
pub use target::FdTarget;

use link::file_target;
use proc_net::{NetCache, SocketEntry, Table};
use target::is_unset;

/// What `fd` of process `pid` refers to now, with no caching (every socket lookup reads its
/// /proc/PID/net table). `None` when the process or the descriptor is gone.
pub fn describe(pid: u32, fd: i32) -> Option<FdTarget> {
    resolve(pid, fd, &mut NetCache::new(Duration::ZERO)).map(|resolved| resolved.target)
}

/// A target, and whether it is final. A provisional one (a socket its table did not list yet,
/// or one that may still connect) is looked up again once its table is due for reading.
struct Resolved {
    target: FdTarget,
    complete: bool,
}

impl Resolved {
    fn complete(target: FdTarget) -> Self {
        Resolved { target, complete: true }
    }

    fn provisional(target: FdTarget) -> Self {
        Resolved { target, complete: false }
    }
}

fn resolve(pid: u32, fd: i32, net: &mut NetCache) -> Option<Resolved> {
    let fd_path = format!("/proc/{pid}/fd/{fd}");
    let link = std::fs::read_link(&fd_path).ok()?;
    match parse_link(&link.to_string_lossy()) {
        Link::Socket(inode) => resolve_socket(pid, &fd_path, inode, net),
        Link::Path(path) => Some(Resolved::complete(file_target(&fd_path, path))),
        Link::Known(target) => Some(Resolved::complete(target)),
    }
}

fn resolve_socket(pid: u32, fd_path: &str, inode: u64, net: &mut NetCache) -> Option<Resolved> {
    let protocol = socket_protocol(fd_path);
    let tables = Table::for_protocol(protocol.as_deref());
    if let (Some(kind), []) = (&protocol, tables) {
        return Some(Resolved::complete(FdTarget::OtherSocket { kind: kind.clone() }));
    }
    let netns = netns_inode(&format!("/proc/{pid}/ns/net"))?;
    for &table in tables {
        if let Some(entry) = net.find(pid, netns, table, inode) {
            return Some(socket_target(entry, pid, netns, inode));
        }
    }
    // Not listed: the table predates the socket, or the socket is not bound to anything.
    if tables == [Table::Unix] {
        return Some(unix_target(pid, netns, inode));
    }
    let kind = protocol.unwrap_or_else(|| "socket".to_owned());
    Some(Resolved::provisional(FdTarget::OtherSocket { kind }))
}

/// A listed socket. One without a peer may still connect, so it is only provisional, unless it
/// listens: a listening socket never connects, and looking it up again every second (servers
/// wait on theirs all the time) re-read the whole TCP table each time, which walks the
/// kernel's entire established-socket hash (milliseconds on a large host).
fn socket_target(entry: &SocketEntry, pid: u32, netns: u64, inode: u64) -> Resolved {
    let inet = |target, remote: &SocketAddr| Resolved { target, complete: !is_unset(remote) };
    match entry {
        SocketEntry::Tcp { local, remote, listening: true } => {
            Resolved::complete(FdTarget::Tcp { local: *local, peer: *remote })
        }
        SocketEntry::Tcp { local, remote, listening: false } => {
            inet(FdTarget::Tcp { local: *local, peer: *remote }, remote)
        }
        SocketEntry::Udp { local, remote } => {
            let peer = (!is_unset(remote)).then_some(*remote);
            inet(FdTarget::Udp { local: *local, peer }, remote)
        }
        SocketEntry::Unix { path: Some(path) } => Resolved::complete(FdTarget::Unix { path: Some(path.clone()) }),
        SocketEntry::Unix { path: None } => unix_target(pid, netns, inode),
    }
}

/// A unix socket with no name in the table: its own name or its peer's, from sock_diag.
fn unix_target(pid: u32, netns: u64, inode: u64) -> Resolved {
    match unix_diag::name(pid, netns, inode) {
        unix_diag::Name::Known(path) => Resolved::complete(FdTarget::Unix { path: Some(path) }),
        unix_diag::Name::Unnamed => Resolved::complete(FdTarget::Unix { path: None }),
        unix_diag::Name::Unknown => Resolved::provisional(FdTarget::Unix { path: None }),
    }
}

/// The kernel's name for a socket's protocol (`TCP`, `TCPv6`, `UNIX-STREAM`, `NETLINK`...),
/// which sockfs exposes as an extended attribute of the socket inode.
fn socket_protocol(fd_path: &str) -> Option<String> {
    let path = CString::new(fd_path).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both names are NUL-terminated and `buf` is writable for its whole length.
    let len =
        unsafe { libc::getxattr(path.as_ptr(), c"system.sockprotoname".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let value = buf.get(..usize::try_from(len).ok()?)?;
    let name = value.split(|&b| b == 0).next()?;
    (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
}

/// The inode of a network namespace file (`/proc/PID/ns/net`), which names the namespace.
fn netns_inode(ns_path: &str) -> Option<u64> {
    std::fs::metadata(ns_path).ok().map(|meta| meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    // The hex words below are as a little-endian kernel prints them.
    #[cfg(target_endian = "little")]
    #[test]
    fn udp_lines() {
        let bound = " 1337: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0";
        assert_eq!(parse_inet_line(bound), Some((4242, addr("0.0.0.0:53"), addr("0.0.0.0:0"))));
        let entry = Table::Udp.parse_line(bound).unwrap().1;
        let resolved = socket_target(&entry, 0, 0, 4242);
        assert_eq!(resolved.target.to_string(), "udp local 0.0.0.0:53");
        assert!(!resolved.complete, "an unconnected socket may connect later");
    }

    #[test]
    fn vanished_process_or_fd() {
        assert_eq!(describe(u32::MAX, 0), None);
        assert_eq!(describe(std::process::id(), -1), None);
        assert_eq!(describe(std::process::id(), 1_000_000), None);
    }
}
