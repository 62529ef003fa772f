//! [`FdTarget`]: what a descriptor refers to, and the short text reports show for it. Kept
//! apart from how it is found out (the other submodules) because it is all that callers see.
use std::fmt;
use std::net::SocketAddr;

/// What a descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FdTarget {
    /// A TCP socket; `peer` is all zeros for a listening socket.
    Tcp {
        local: SocketAddr,
        peer: SocketAddr,
    },
    /// A UDP socket; `peer` is set once it is connected.
    Udp {
        local: SocketAddr,
        peer: Option<SocketAddr>,
    },
    /// A unix socket: the path it is bound to, else its peer's; `None` for unnamed pairs.
    /// Abstract names start with `@`, as in /proc/net/unix.
    Unix {
        path: Option<String>,
    },
    /// Any other socket, or one not (yet) listed in its table. `kind` is the kernel's protocol
    /// name (`NETLINK`, `PACKET`, `TCP`...), or `socket` when unknown.
    OtherSocket {
        kind: String,
    },
    /// A regular file or directory, as the process sees the path (its mount namespace).
    File {
        path: String,
    },
    BlockDevice {
        path: String,
    },
    /// A character device (tty, /dev/null, /dev/urandom...): not disk I/O.
    CharDevice {
        path: String,
    },
    /// An anonymous pipe or a named FIFO.
    Pipe {
        inode: u64,
    },
    Epoll,
    EventFd,
    TimerFd,
    SignalFd,
    /// Anything else, as readlink gives it (`anon_inode:[io_uring]`, `anon_inode:inotify`...).
    Other {
        link: String,
    },
}

impl FdTarget {
    /// A TCP socket with no peer: listening for connections (a thread waiting on it is waiting
    /// for work, not doing I/O).
    pub fn is_listening(&self) -> bool {
        matches!(self, FdTarget::Tcp { peer, .. } if is_unset(peer))
    }

    pub fn is_socket(&self) -> bool {
        matches!(
            self,
            FdTarget::Tcp { .. } | FdTarget::Udp { .. } | FdTarget::Unix { .. } | FdTarget::OtherSocket { .. }
        )
    }
}

/// Short text for reports. A connected TCP or UDP socket shows its peer (what the thread is
/// waiting for): `tcp 127.0.0.1:5432`, `tcp [::1]:8080`, `udp 10.0.0.1:53`; one without a peer
/// shows its local address: `tcp listen 0.0.0.0:8080`, `udp local 0.0.0.0:5353`. IPv4-mapped
/// IPv6 addresses print as IPv4. Then `unix /run/x.sock` (or `unix`), `netlink`,
/// `file /var/lib/app/data.db`, `blockdev /dev/vda`, `chardev /dev/pts/0`, `pipe`, `epoll`,
/// `eventfd`, `timerfd`, `signalfd`, or the readlink text.
impl fmt::Display for FdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdTarget::Tcp { local, peer } if is_unset(peer) => {
                write!(f, "tcp listen {}", Addr(local))
            }
            FdTarget::Tcp { peer, .. } => write!(f, "tcp {}", Addr(peer)),
            FdTarget::Udp { peer: Some(peer), .. } => write!(f, "udp {}", Addr(peer)),
            FdTarget::Udp { local, peer: None } => write!(f, "udp local {}", Addr(local)),
            FdTarget::Unix { path: Some(path) } => write!(f, "unix {path}"),
            FdTarget::Unix { path: None } => f.write_str("unix"),
            FdTarget::OtherSocket { kind } => f.write_str(&kind.to_ascii_lowercase()),
            FdTarget::File { path } => write!(f, "file {path}"),
            FdTarget::BlockDevice { path } => write!(f, "blockdev {path}"),
            FdTarget::CharDevice { path } => write!(f, "chardev {path}"),
            FdTarget::Pipe { .. } => f.write_str("pipe"),
            FdTarget::Epoll => f.write_str("epoll"),
            FdTarget::EventFd => f.write_str("eventfd"),
            FdTarget::TimerFd => f.write_str("timerfd"),
            FdTarget::SignalFd => f.write_str("signalfd"),
            FdTarget::Other { link } => f.write_str(link),
        }
    }
}

pub(super) fn is_unset(addr: &SocketAddr) -> bool {
    addr.ip().is_unspecified() && addr.port() == 0
}

/// A socket address for display, with `::ffff:a.b.c.d` shown as `a.b.c.d` (a dual-stack socket
/// talking IPv4 is listed in tcp6).
struct Addr<'a>(&'a SocketAddr);

impl fmt::Display for Addr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => write!(f, "{v4}:{}", v6.port()),
                None => write!(f, "{v6}"),
            },
            SocketAddr::V4(v4) => write!(f, "{v4}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn display() {
        let cases = [
            (FdTarget::Tcp { local: addr("127.0.0.1:40000"), peer: addr("127.0.0.1:5432") }, "tcp 127.0.0.1:5432"),
            (FdTarget::Tcp { local: addr("[::1]:40000"), peer: addr("[::1]:8080") }, "tcp [::1]:8080"),
            (FdTarget::Tcp { local: addr("0.0.0.0:8080"), peer: addr("0.0.0.0:0") }, "tcp listen 0.0.0.0:8080"),
            (FdTarget::Tcp { local: addr("[::]:8080"), peer: addr("[::]:0") }, "tcp listen [::]:8080"),
            // A dual-stack socket talking IPv4 is listed in tcp6 with a mapped address.
            (
                FdTarget::Tcp { local: addr("[::ffff:127.0.0.1]:5432"), peer: addr("[::ffff:127.0.0.1]:49152") },
                "tcp 127.0.0.1:49152",
            ),
            (FdTarget::Udp { local: addr("10.0.0.2:40000"), peer: Some(addr("10.0.0.1:53")) }, "udp 10.0.0.1:53"),
            (
                FdTarget::Unix { path: Some("/run/postgresql/.s.PGSQL.5432".into()) },
                "unix /run/postgresql/.s.PGSQL.5432",
            ),
            (FdTarget::Unix { path: None }, "unix"),
            (FdTarget::OtherSocket { kind: "NETLINK".into() }, "netlink"),
            (FdTarget::File { path: "/var/lib/app/data.db".into() }, "file /var/lib/app/data.db"),
            (FdTarget::BlockDevice { path: "/dev/vda".into() }, "blockdev /dev/vda"),
            (FdTarget::CharDevice { path: "/dev/null".into() }, "chardev /dev/null"),
            (FdTarget::Pipe { inode: 5 }, "pipe"),
            (FdTarget::Epoll, "epoll"),
            (FdTarget::Other { link: "anon_inode:[io_uring]".into() }, "anon_inode:[io_uring]"),
        ];
        for (target, text) in cases {
            assert_eq!(target.to_string(), text);
        }
    }
}
