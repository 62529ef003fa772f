//! Wait targets as the kernel saw them at the syscall's return (`profiler_common::
//! wait_target`): decoded from their ring-buffer record, named as [`FdTarget`]s, and handed to
//! the wait's stack event that follows.
//!
//! The kernel's record is the truth for the wait it comes with: the descriptor may be closed
//! or reused by the time userspace sees the event (a file per request, a connection per
//! request). What it cannot tell falls back to /proc as before: a unix socket's peer path
//! (sock_diag), other socket families, and anonymous inodes (epoll, eventfd...).
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;

use bytes::Buf;
use profiler_common::wait_target::{MAX_PATH_PARTS, PATH_PART_LEN, WaitTargetEvent, file_type, target_flags};

use super::fdinfo::FdTarget;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
const TCP_LISTEN: u16 = 10;
/// Resolved paths kept at most (they are cheap to find again).
const MAX_CACHED_PATHS: usize = 4096;

/// One decoded [`WaitTargetEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTarget {
    pub pid: u32,
    pub tid: u32,
    pub syscall_nr: i64,
    pub arg0: u64,
    pub flags: u32,
    pub ino: u64,
    /// Kernel encoding (major << 20 | minor).
    pub dev: u32,
    pub mode: u32,
    pub sk_family: u16,
    pub sk_protocol: u16,
    pub sk_state: u16,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Dentry names, leaf first.
    pub parts: Vec<String>,
}

impl KernelTarget {
    /// Decodes a record (kind already checked by the caller); `None` if it is short.
    pub fn decode(mut buf: &[u8]) -> Option<Self> {
        if buf.len() < size_of::<WaitTargetEvent>() {
            return None;
        }
        buf.advance(4);
        let pid = buf.get_u32_ne();
        let tid = buf.get_u32_ne();
        let flags = buf.get_u32_ne();
        let syscall_nr = buf.get_i64_ne();
        let arg0 = buf.get_u64_ne();
        let ino = buf.get_u64_ne();
        let dev = buf.get_u32_ne();
        let mode = buf.get_u32_ne();
        let sk_family = buf.get_u16_ne();
        let sk_protocol = buf.get_u16_ne();
        let _sk_type = buf.get_u16_ne();
        let sk_state = buf.get_u16_ne();
        let local_port = buf.get_u16_ne();
        let peer_port = buf.get_u16_ne();
        let path_parts = (buf.get_u32_ne() as usize).min(MAX_PATH_PARTS);
        let mut local_addr = [0u8; 16];
        buf.copy_to_slice(&mut local_addr);
        let mut peer_addr = [0u8; 16];
        buf.copy_to_slice(&mut peer_addr);
        let ip = |bytes: [u8; 16]| -> IpAddr {
            if sk_family == AF_INET6 {
                IpAddr::V6(Ipv6Addr::from(bytes))
            } else {
                IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
            }
        };
        let parts = (0..path_parts)
            .map(|i| {
                let part = &buf[i * PATH_PART_LEN..(i + 1) * PATH_PART_LEN];
                let end = part.iter().position(|&b| b == 0).unwrap_or(part.len());
                String::from_utf8_lossy(&part[..end]).into_owned()
            })
            .collect();
        Some(KernelTarget {
            pid,
            tid,
            syscall_nr,
            arg0,
            flags,
            ino,
            dev,
            mode,
            sk_family,
            sk_protocol,
            sk_state,
            local: SocketAddr::new(ip(local_addr), local_port),
            peer: SocketAddr::new(ip(peer_addr), peer_port),
            parts,
        })
    }

    /// The path from the kernel's dentry names: whole when they reach the root, else the tail
    /// it has (`…/dir/name`).
    fn kernel_path(&self) -> (String, bool) {
        let tail: Vec<&str> = self.parts.iter().rev().map(String::as_str).collect();
        if self.flags & target_flags::PATH_COMPLETE != 0 {
            (format!("/{}", tail.join("/")), true)
        } else {
            (format!("…/{}", tail.join("/")), false)
        }
    }
}

/// Kernel targets waiting for their stack event, and full paths found for the files whose
/// path the kernel could only give the tail of.
#[derive(Default)]
pub struct KernelTargets {
    /// tid → (syscall, argument, target) of the last record, until its event comes.
    pending: HashMap<u32, (i64, u64, Option<FdTarget>)>,
    /// (dev, inode, tail) → full path from /proc/PID/fd. Keyed by the tail too: inode numbers
    /// are reused once a file is deleted.
    paths: HashMap<(u32, u64, String), String>,
}

impl KernelTargets {
    /// A record from the kernel: named now (its descriptor is most likely still open if
    /// /proc must help) and kept for the stack event that follows it.
    pub fn record(&mut self, t: &KernelTarget) {
        if self.pending.len() > 65_536 {
            // Records whose event never came (lost): drop them all rather than grow.
            self.pending.clear();
        }
        let target = self.name(t);
        self.pending.insert(t.tid, (t.syscall_nr, t.arg0, target));
    }

    /// Thread `tid`'s last record is superseded by one not kept.
    pub fn forget(&mut self, tid: u32) {
        self.pending.remove(&tid);
    }

    /// The kernel's target for thread `tid`'s wait in (`syscall_nr`, `arg0`), if its record
    /// came just before. `Some(None)`: the kernel saw the descriptor but cannot name it.
    pub fn take(&mut self, tid: u32, syscall_nr: i64, arg0: u64) -> Option<Option<FdTarget>> {
        match self.pending.remove(&tid)? {
            (nr, arg, target) if nr == syscall_nr && arg == arg0 => Some(target),
            _ => None,
        }
    }

    /// What the record names; `None` for what only /proc can tell (unix peers, other socket
    /// families, anonymous inodes).
    pub fn name(&mut self, t: &KernelTarget) -> Option<FdTarget> {
        if t.flags & target_flags::FILE == 0 {
            return None;
        }
        match t.mode & file_type::MASK {
            file_type::SOCKET => socket_target(t),
            file_type::FIFO => Some(FdTarget::Pipe { inode: t.ino }),
            file_type::REGULAR | file_type::DIRECTORY => Some(FdTarget::File { path: self.path(t)? }),
            file_type::BLOCK => Some(FdTarget::BlockDevice { path: self.path(t)? }),
            file_type::CHAR => Some(FdTarget::CharDevice { path: self.path(t)? }),
            _ => None,
        }
    }

    fn path(&mut self, t: &KernelTarget) -> Option<String> {
        if t.parts.is_empty() {
            return None;
        }
        let (path, complete) = t.kernel_path();
        if complete {
            return Some(path);
        }
        // Deeper than the kernel walks, or a name longer than a part: the process's own
        // descriptor gives the full path if it still refers to the same file.
        let key = (t.dev, t.ino, path);
        if let Some(full) = self.paths.get(&key) {
            return Some(full.clone());
        }
        let full = proc_path(t).unwrap_or_else(|| key.2.clone());
        if self.paths.len() >= MAX_CACHED_PATHS {
            self.paths.clear();
        }
        self.paths.insert(key, full.clone());
        Some(full)
    }
}

fn socket_target(t: &KernelTarget) -> Option<FdTarget> {
    if t.flags & target_flags::SOCKET == 0 || !matches!(t.sk_family, AF_INET | AF_INET6) {
        return None;
    }
    match t.sk_protocol {
        IPPROTO_TCP if t.sk_state == TCP_LISTEN => Some(FdTarget::Tcp { local: t.local, peer: t.local.unspecified() }),
        IPPROTO_TCP => Some(FdTarget::Tcp { local: t.local, peer: t.peer }),
        IPPROTO_UDP => Some(FdTarget::Udp { local: t.local, peer: (t.peer.port() != 0).then_some(t.peer) }),
        _ => None,
    }
}

/// An unspecified address of the same family (a listening socket's "peer").
trait Unspecified {
    fn unspecified(self) -> SocketAddr;
}

impl Unspecified for SocketAddr {
    fn unspecified(self) -> SocketAddr {
        match self {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        }
    }
}

/// readlink of the descriptor, if it still refers to the kernel's (dev, inode).
fn proc_path(t: &KernelTarget) -> Option<String> {
    let fd_path = format!("/proc/{}/fd/{}", t.pid, t.arg0);
    let meta = std::fs::metadata(&fd_path).ok()?;
    // The kernel's s_dev is major << 20 | minor; stat's st_dev is the glibc encoding.
    let dev = libc::makedev(t.dev >> 20, t.dev & 0xf_ffff);
    if meta.ino() != t.ino || meta.dev() != dev {
        return None;
    }
    Some(std::fs::read_link(&fd_path).ok()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(build: impl FnOnce(&mut WaitTargetEvent)) -> Vec<u8> {
        let mut ev = WaitTargetEvent {
            kind: profiler_common::EventKind::WaitTarget as u32,
            pid: 1,
            tid: 2,
            flags: target_flags::FILE,
            syscall_nr: 74,
            arg0: 5,
            ino: 42,
            dev: (8 << 20) | 1,
            mode: 0,
            sk_family: 0,
            sk_protocol: 0,
            sk_type: 0,
            sk_state: 0,
            local_port: 0,
            peer_port: 0,
            path_parts: 0,
            local_addr: [0; 16],
            peer_addr: [0; 16],
            path: [[0; PATH_PART_LEN]; MAX_PATH_PARTS],
        };
        build(&mut ev);
        // SAFETY: a repr(C) struct of integers with no padding (see profiler_common's checks).
        let bytes =
            unsafe { std::slice::from_raw_parts(std::ptr::from_ref(&ev).cast::<u8>(), size_of::<WaitTargetEvent>()) };
        bytes.to_vec()
    }

    fn part(name: &str) -> [u8; PATH_PART_LEN] {
        let mut p = [0u8; PATH_PART_LEN];
        p[..name.len()].copy_from_slice(name.as_bytes());
        p
    }

    #[test]
    fn files_are_named_by_their_dentries() {
        let bytes = record(|ev| {
            ev.mode = file_type::REGULAR | 0o644;
            ev.flags |= target_flags::PATH_COMPLETE;
            ev.path_parts = 3;
            ev.path[0] = part("req-7.dat");
            ev.path[1] = part("app");
            ev.path[2] = part("tmp");
        });
        let t = KernelTarget::decode(&bytes).unwrap();
        let mut names = KernelTargets::default();
        assert_eq!(names.name(&t), Some(FdTarget::File { path: "/tmp/app/req-7.dat".into() }));
        // Too deep for the kernel, and no such descriptor here: the tail it has.
        let t = KernelTarget::decode(&record(|ev| {
            ev.mode = file_type::REGULAR;
            ev.pid = u32::MAX;
            ev.path_parts = 1;
            ev.path[0] = part("deep.dat");
        }))
        .unwrap();
        assert_eq!(names.name(&t), Some(FdTarget::File { path: "…/deep.dat".into() }));
    }

    #[test]
    fn sockets_are_named_by_their_addresses() {
        let tcp = |state: u16| {
            record(|ev| {
                ev.mode = file_type::SOCKET;
                ev.flags |= target_flags::SOCKET;
                ev.sk_family = AF_INET;
                ev.sk_protocol = IPPROTO_TCP;
                ev.sk_state = state;
                ev.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
                ev.local_port = 40000;
                ev.peer_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
                ev.peer_port = 8080;
            })
        };
        let mut names = KernelTargets::default();
        let established = names.name(&KernelTarget::decode(&tcp(1)).unwrap()).unwrap();
        assert_eq!(established.to_string(), "tcp 127.0.0.1:8080");
        let listening = names.name(&KernelTarget::decode(&tcp(TCP_LISTEN)).unwrap()).unwrap();
        assert_eq!(listening.to_string(), "tcp listen 127.0.0.1:40000");
        assert!(listening.is_listening());
        let v6 = record(|ev| {
            ev.mode = file_type::SOCKET;
            ev.flags |= target_flags::SOCKET;
            ev.sk_family = AF_INET6;
            ev.sk_protocol = IPPROTO_UDP;
            ev.peer_addr = Ipv6Addr::LOCALHOST.octets();
            ev.peer_port = 53;
        });
        assert_eq!(names.name(&KernelTarget::decode(&v6).unwrap()).unwrap().to_string(), "udp [::1]:53");
        // A unix socket: its peer's path is for sock_diag to tell.
        let unix = record(|ev| {
            ev.mode = file_type::SOCKET;
            ev.flags |= target_flags::SOCKET;
            ev.sk_family = 1;
        });
        assert_eq!(names.name(&KernelTarget::decode(&unix).unwrap()), None);
    }

    #[test]
    fn records_wait_for_their_event() {
        let bytes = record(|ev| {
            ev.mode = file_type::FIFO;
        });
        let t = KernelTarget::decode(&bytes).unwrap();
        let mut names = KernelTargets::default();
        names.record(&t);
        assert_eq!(names.take(2, 74, 6), None, "another wait");
        names.record(&t);
        assert_eq!(names.take(2, 74, 5), Some(Some(FdTarget::Pipe { inode: 42 })));
        assert_eq!(names.take(2, 74, 5), None, "taken once");
        assert_eq!(KernelTarget::decode(&bytes[..100]), None, "short record");
    }
}
