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
use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{Duration, Instant};

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

fn is_unset(addr: &SocketAddr) -> bool {
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

/// What `fd` of process `pid` refers to now, with no caching (every socket lookup reads its
/// /proc/PID/net table). `None` when the process or the descriptor is gone.
pub fn describe(pid: u32, fd: i32) -> Option<FdTarget> {
    resolve(pid, fd, &mut NetCache::new(Duration::ZERO)).map(|resolved| resolved.target)
}

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

/// A readlink result, before anything else is read.
#[derive(Debug, PartialEq)]
pub enum Link {
    Socket(u64),
    Path(String),
    Known(FdTarget),
}

pub fn parse_link(link: &str) -> Link {
    if let Some(inode) = bracketed(link, "socket:").and_then(|n| n.parse().ok()) {
        return Link::Socket(inode);
    }
    if let Some(inode) = bracketed(link, "pipe:").and_then(|n| n.parse().ok()) {
        return Link::Known(FdTarget::Pipe { inode });
    }
    if link.starts_with('/') {
        return Link::Path(link.to_owned());
    }
    // Older kernels print some anonymous inodes without brackets (`anon_inode:inotify`).
    let anon = link.strip_prefix("anon_inode:").map(|k| k.trim_start_matches('[').trim_end_matches(']'));
    Link::Known(match anon {
        Some("eventpoll") => FdTarget::Epoll,
        Some("eventfd") => FdTarget::EventFd,
        Some("timerfd") => FdTarget::TimerFd,
        Some("signalfd") => FdTarget::SignalFd,
        _ => FdTarget::Other { link: link.to_owned() },
    })
}

/// `INNER` from `PREFIX[INNER]`.
fn bracketed<'a>(link: &'a str, prefix: &str) -> Option<&'a str> {
    link.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']')
}

/// Sorts a path target by the file type of the open file itself (stat through /proc/PID/fd
/// follows the descriptor, not the path, so it works across mount namespaces and for deleted
/// files).
fn file_target(fd_path: &str, path: String) -> FdTarget {
    match std::fs::metadata(fd_path) {
        Ok(meta) if meta.file_type().is_block_device() => FdTarget::BlockDevice { path },
        Ok(meta) if meta.file_type().is_char_device() => FdTarget::CharDevice { path },
        Ok(meta) if meta.file_type().is_fifo() => FdTarget::Pipe { inode: meta.ino() },
        _ => FdTarget::File { path },
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

/// A listed socket. One without a peer may still connect, so it is only provisional.
fn socket_target(entry: &SocketEntry, pid: u32, netns: u64, inode: u64) -> Resolved {
    let inet = |target, remote: &SocketAddr| Resolved { target, complete: !is_unset(remote) };
    match entry {
        SocketEntry::Tcp { local, remote } => inet(FdTarget::Tcp { local: *local, peer: *remote }, remote),
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

/// The socket tables of /proc/PID/net.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Table {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
    Unix,
}

impl Table {
    const ALL: [Table; 5] = [Table::Tcp, Table::Tcp6, Table::Udp, Table::Udp6, Table::Unix];

    fn file_name(self) -> &'static str {
        match self {
            Table::Tcp => "tcp",
            Table::Tcp6 => "tcp6",
            Table::Udp => "udp",
            Table::Udp6 => "udp6",
            Table::Unix => "unix",
        }
    }

    /// The tables that can list a socket, by its `system.sockprotoname`: none for protocols
    /// without a table (`NETLINK`, `PACKET`...), all of them when the name is unknown.
    fn for_protocol(name: Option<&str>) -> &'static [Table] {
        match name {
            None => &Table::ALL,
            Some("TCP") => &[Table::Tcp],
            Some("TCPv6") => &[Table::Tcp6],
            Some("UDP") => &[Table::Udp],
            Some("UDPv6") => &[Table::Udp6],
            // "UNIX" (datagram), "UNIX-STREAM", and "UNIX-SEQPACKET" on some kernels.
            Some(name) if name.starts_with("UNIX") => &[Table::Unix],
            Some(_) => &[],
        }
    }

    fn parse_line(self, line: &str) -> Option<(u64, SocketEntry)> {
        match self {
            Table::Tcp | Table::Tcp6 => {
                parse_inet_line(line).map(|(inode, local, remote)| (inode, SocketEntry::Tcp { local, remote }))
            }
            Table::Udp | Table::Udp6 => {
                parse_inet_line(line).map(|(inode, local, remote)| (inode, SocketEntry::Udp { local, remote }))
            }
            Table::Unix => parse_unix_line(line).map(|(inode, path)| (inode, SocketEntry::Unix { path })),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum SocketEntry {
    Tcp { local: SocketAddr, remote: SocketAddr },
    Udp { local: SocketAddr, remote: SocketAddr },
    Unix { path: Option<String> },
}

/// Parsed socket tables per network namespace (by netns inode), each re-read at most once per
/// `max_age`: parsing /proc/net/tcp on a busy host costs milliseconds.
struct NetCache {
    max_age: Duration,
    namespaces: HashMap<u64, Namespace>,
}

struct Namespace {
    tables: HashMap<Table, Snapshot>,
    last_used: Instant,
}

struct Snapshot {
    read_at: Instant,
    by_inode: HashMap<u64, SocketEntry>,
}

/// A namespace not looked at for this long is dropped (its containers are probably gone).
const NAMESPACE_IDLE: Duration = Duration::from_secs(60);

impl NetCache {
    fn new(max_age: Duration) -> Self {
        NetCache { max_age, namespaces: HashMap::new() }
    }

    /// The entry for socket `inode` in `table` of namespace `netns`, read through process `pid`.
    fn find(&mut self, pid: u32, netns: u64, table: Table, inode: u64) -> Option<&SocketEntry> {
        let now = Instant::now();
        if self.is_due(netns, table, now) {
            self.refresh(pid, netns, table, now);
        }
        let namespace = self.namespaces.get_mut(&netns)?;
        namespace.last_used = now;
        namespace.tables.get(&table)?.by_inode.get(&inode)
    }

    fn is_due(&self, netns: u64, table: Table, now: Instant) -> bool {
        let snapshot = self.namespaces.get(&netns).and_then(|ns| ns.tables.get(&table));
        snapshot.is_none_or(|s| now.saturating_duration_since(s.read_at) >= self.max_age)
    }

    /// Reads the table again; on failure (the process is gone) the old snapshot stays.
    fn refresh(&mut self, pid: u32, netns: u64, table: Table, now: Instant) {
        self.namespaces.retain(|&ns, n| ns == netns || now.saturating_duration_since(n.last_used) < NAMESPACE_IDLE);
        let Ok(bytes) = std::fs::read(format!("/proc/{pid}/net/{}", table.file_name())) else {
            return;
        };
        // Unix socket paths are arbitrary bytes: decode lossily rather than lose the table.
        let text = String::from_utf8_lossy(&bytes);
        let by_inode = text
            .lines()
            .filter_map(|line| table.parse_line(line))
            // TIME_WAIT and other socket-less entries all have inode 0.
            .filter(|&(inode, _)| inode != 0)
            .collect();
        let namespace =
            self.namespaces.entry(netns).or_insert_with(|| Namespace { tables: HashMap::new(), last_used: now });
        namespace.tables.insert(table, Snapshot { read_at: now, by_inode });
    }
}

/// `(inode, local, remote)` from a line of /proc/net/{tcp,udp}{,6}:
/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`.
/// The header line and malformed lines give `None`.
pub fn parse_inet_line(line: &str) -> Option<(u64, SocketAddr, SocketAddr)> {
    let mut fields = line.split_ascii_whitespace();
    let local = parse_inet_addr(fields.nth(1)?)?;
    let remote = parse_inet_addr(fields.next()?)?;
    let inode = fields.nth(6)?.parse().ok()?;
    Some((inode, local, remote))
}

/// `ADDR:PORT` in /proc/net's hex. The kernel prints each 32-bit word of the address (one for
/// IPv4, four for IPv6) with `%08X` as the word sits in memory, that is network-order bytes read
/// as a host-order integer: so each word's bytes come back with `to_ne_bytes`. The port is
/// printed as a plain number.
fn parse_inet_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // Checked first so that slicing below stays on character boundaries.
    if !addr.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let word = |i: usize| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok().map(u32::to_ne_bytes);
    match addr.len() {
        8 => Some(SocketAddr::new(Ipv4Addr::from(word(0)?).into(), port)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            Some(SocketAddr::new(Ipv6Addr::from(bytes).into(), port))
        }
        _ => None,
    }
}

/// `(inode, path)` from a line of /proc/net/unix:
/// `Num: RefCount Protocol Flags Type St Inode [Path]`. The path is the rest of the line after
/// one space, so it may contain spaces; abstract names start with `@`.
pub fn parse_unix_line(line: &str) -> Option<(u64, Option<String>)> {
    let mut rest = line;
    for _ in 0..6 {
        rest = next_field(rest)?.1;
    }
    let (inode, rest) = next_field(rest)?;
    let path = rest.strip_prefix(' ').filter(|p| !p.is_empty()).map(str::to_owned);
    Some((inode.parse().ok()?, path))
}

/// The first space-separated field of `text`, and the rest from the space after it.
fn next_field(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start_matches(' ');
    let end = text.find(' ').unwrap_or(text.len());
    (end > 0).then(|| text.split_at(end))
}

/// The unix sock_diag netlink query (linux/unix_diag.h): a socket's bound name, its peer's inode.
pub mod unix_diag {
    use std::mem::size_of;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;

    // From linux/sock_diag.h and linux/unix_diag.h; libc does not have them.
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_NAME: u32 = 0x1;
    const UDIAG_SHOW_PEER: u32 = 0x4;
    const UNIX_DIAG_NAME: u16 = 0;
    const UNIX_DIAG_PEER: u16 = 2;
    const NLMSG_HDRLEN: usize = size_of::<libc::nlmsghdr>();
    /// `struct unix_diag_msg`: family, type, state, pad (u8 each), ino (u32), cookie (2 x u32).
    const UNIX_DIAG_MSG_LEN: usize = 16;

    #[repr(C)]
    struct UnixDiagReq {
        family: u8,
        protocol: u8,
        pad: u16,
        states: u32,
        inode: u32,
        show: u32,
        cookie: [u32; 2],
    }

    #[repr(C)]
    struct Request {
        header: libc::nlmsghdr,
        body: UnixDiagReq,
    }

    #[derive(Debug, Default, PartialEq)]
    pub struct Reply {
        pub name: Option<String>,
        pub peer: Option<u64>,
    }

    /// What to call a unix socket.
    pub(super) enum Name {
        /// The name it is bound to, else the name its peer is bound to.
        Known(String),
        /// Neither it nor its peer has a name (a socketpair), or it has no peer.
        Unnamed,
        /// sock_diag could not say, or the peer is a connection the server has not accepted
        /// yet (such a socket has no inode to ask about): worth asking again later.
        Unknown,
    }

    /// `pid` is any process in namespace `netns`: sock_diag only sees its caller's namespace.
    pub(super) fn name(pid: u32, netns: u64, inode: u64) -> Name {
        lookup(pid, netns, inode).unwrap_or(Name::Unknown)
    }

    fn lookup(pid: u32, netns: u64, inode: u64) -> Option<Name> {
        let socket = open_in_netns(pid, netns)?;
        let own = query(&socket, inode, UDIAG_SHOW_NAME | UDIAG_SHOW_PEER)?;
        Some(match (own.name, own.peer) {
            (Some(name), _) => Name::Known(name),
            (None, None) => Name::Unnamed,
            (None, Some(peer)) => query(&socket, peer, UDIAG_SHOW_NAME)?.name.map_or(Name::Unnamed, Name::Known),
        })
    }

    /// A sock_diag socket in namespace `netns`. A socket stays in the namespace it was created
    /// in, so for another namespace a short-lived thread enters it, creates the socket and
    /// exits: the profiler's own threads never change namespace.
    fn open_in_netns(pid: u32, netns: u64) -> Option<OwnedFd> {
        if super::netns_inode("/proc/thread-self/ns/net") == Some(netns) {
            return open_socket();
        }
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
        // The pid may have exited and been reused since `netns` was read.
        if ns.metadata().ok()?.ino() != netns {
            return None;
        }
        let thread = std::thread::Builder::new().name("pyebpf-netns".into()).spawn(move || {
            // SAFETY: setns on this thread only, with a namespace descriptor we own.
            let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
            if entered { open_socket() } else { None }
        });
        thread.ok()?.join().ok().flatten()
    }

    fn open_socket() -> Option<OwnedFd> {
        // SAFETY: plain socket(2); on success the new descriptor is ours alone.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn query(socket: &OwnedFd, inode: u64, show: u32) -> Option<Reply> {
        let request = Request {
            header: libc::nlmsghdr {
                nlmsg_len: size_of::<Request>() as u32,
                nlmsg_type: SOCK_DIAG_BY_FAMILY,
                nlmsg_flags: libc::NLM_F_REQUEST as u16,
                nlmsg_seq: 1,
                nlmsg_pid: 0,
            },
            body: UnixDiagReq {
                family: libc::AF_UNIX as u8,
                protocol: 0,
                pad: 0,
                states: u32::MAX,
                inode: u32::try_from(inode).ok()?,
                show,
                // INET_DIAG_NOCOOKIE: look the socket up by inode alone.
                cookie: [u32::MAX; 2],
            },
        };
        // SAFETY: `request` is a plain repr(C) value that lives across the call.
        let sent = unsafe { libc::send(socket.as_raw_fd(), (&raw const request).cast(), size_of::<Request>(), 0) };
        if usize::try_from(sent).ok()? != size_of::<Request>() {
            return None;
        }
        let mut buf = [0u8; 4096];
        // The kernel answers inside send(), so the reply is already queued: never block here.
        // SAFETY: `buf` is writable for its whole length.
        let len = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        parse_reply(buf.get(..usize::try_from(len).ok()?)?, inode)
    }

    /// The answer to a query about `inode`: one `unix_diag_msg` and its attributes, or an
    /// NLMSG_ERROR (no such socket), which gives `None`.
    pub fn parse_reply(bytes: &[u8], inode: u64) -> Option<Reply> {
        let len = usize::try_from(u32_at(bytes, 0)?).ok()?;
        if u16_at(bytes, 4)? != SOCK_DIAG_BY_FAMILY {
            return None;
        }
        let message = bytes.get(NLMSG_HDRLEN..len)?;
        if u64::from(u32_at(message, 4)?) != inode {
            return None;
        }
        let mut reply = Reply::default();
        for (kind, payload) in attributes(message.get(UNIX_DIAG_MSG_LEN..)?) {
            match kind {
                UNIX_DIAG_NAME => reply.name = Some(sun_path(payload)),
                UNIX_DIAG_PEER => reply.peer = u32_at(payload, 0).map(u64::from),
                _ => {}
            }
        }
        Some(reply)
    }

    /// Netlink attributes: `{u16 len, u16 type, payload}`, each padded to 4 bytes.
    fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
        std::iter::from_fn(move || {
            let len = usize::from(u16_at(bytes, 0)?);
            let kind = u16_at(bytes, 2)?;
            let payload = bytes.get(4..len)?;
            bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or_default();
            Some((kind, payload))
        })
    }

    /// A `sun_path` as /proc/net/unix prints it: a path up to its NUL, or an abstract name
    /// (leading NUL) with `@` for every NUL.
    fn sun_path(bytes: &[u8]) -> String {
        let name = match bytes.split_first() {
            Some((0, _)) => bytes.iter().map(|&b| if b == 0 { b'@' } else { b }).collect(),
            _ => bytes.split(|&b| b == 0).next().unwrap_or_default().to_vec(),
        };
        String::from_utf8_lossy(&name).into_owned()
    }

    fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    }
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
    fn tcp_lines() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        assert_eq!(parse_inet_line(header), None);
        let listen = "   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   113        0 23456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_inet_line(listen), Some((23456, addr("127.0.0.1:5432"), addr("0.0.0.0:0"))));
        let established = "   3: 0F02000A:D2F2 0101A8C0:01BB 01 00000000:00000000 02:000004F1 00000000  1000        0 981234 2 0000000000000000 20 4 30 10 -1";
        assert_eq!(parse_inet_line(established), Some((981234, addr("10.0.2.15:54002"), addr("192.168.1.1:443"))));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp6_lines() {
        let loopback = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:A41C 01 00000000:00000000 00:00000000 00000000     0        0 55501 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(parse_inet_line(loopback), Some((55501, addr("[::1]:8080"), addr("[::1]:42012"))));
        // 2a00:1450:4001:814::200e, word by word: 2a001450 -> 5014002A, and so on.
        let global = "   1: 5014002A14080140000000000E200000:01BB B80D0120000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            parse_inet_line(global),
            Some((77, addr("[2a00:1450:4001:814::200e]:443"), addr("[2001:db8::1]:50000")))
        );
        let mapped = "   2: 0000000000000000FFFF00000100007F:1538 0000000000000000FFFF00000100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 78 1 0000000000000000 20 4 30 10 -1";
        let (_, _, remote) = parse_inet_line(mapped).unwrap();
        assert_eq!(remote, addr("[::ffff:127.0.0.1]:49152"));
        assert_eq!(Addr(&remote).to_string(), "127.0.0.1:49152");
    }

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
    fn odd_inet_lines_are_skipped() {
        for line in [
            "",
            "   0:",
            "   0: 0100007F:1538",
            "   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   113        0",
            "   0: 0100007F:15389 00000000:0000 0A 0:0 00:0 0 0 0 1",
            "   0: 0100007:1538 00000000:0000 0A 0:0 00:0 0 0 0 1",
            "   0: 0100007G:1538 00000000:0000 0A 0:0 00:0 0 0 0 1",
            "   0: é100007F:1538 00000000:0000 0A 0:0 00:0 0 0 0 1",
            "   0: 0000000000000000000000000100000é:1538 00000000:0000 0A 0:0 00:0 0 0 0 1",
            "   0: 0100007F:1538 00000000:0000 0A 0:0 00:0 0 0 0 -1",
        ] {
            assert_eq!(parse_inet_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn unix_lines() {
        let header = "Num       RefCount Protocol Flags    Type St Inode Path";
        assert_eq!(parse_unix_line(header), None);
        let unnamed = "00000000c20958fa: 00000003 00000000 00000000 0001 03  1212";
        assert_eq!(parse_unix_line(unnamed), Some((1212, None)));
        let bound = "0000000000000000: 00000002 00000000 00010000 0001 01 23456 /run/postgresql/.s.PGSQL.5432";
        assert_eq!(parse_unix_line(bound), Some((23456, Some("/run/postgresql/.s.PGSQL.5432".into()))));
        let spaces = "0000000000000000: 00000002 00000000 00010000 0001 01 23457 /tmp/a dir/s ock";
        assert_eq!(parse_unix_line(spaces), Some((23457, Some("/tmp/a dir/s ock".into()))));
        let abstract_ = "0000000000000000: 00000002 00000000 00000000 0002 01    99 @/tmp/.X11-unix/X0";
        assert_eq!(parse_unix_line(abstract_), Some((99, Some("@/tmp/.X11-unix/X0".into()))));
        assert_eq!(parse_unix_line("garbage"), None);
        assert_eq!(parse_unix_line("é: é é é é é é é"), None);
    }

    #[test]
    fn links() {
        assert_eq!(parse_link("socket:[12345]"), Link::Socket(12345));
        assert_eq!(parse_link("pipe:[678]"), Link::Known(FdTarget::Pipe { inode: 678 }));
        assert_eq!(parse_link("anon_inode:[eventpoll]"), Link::Known(FdTarget::Epoll));
        assert_eq!(parse_link("anon_inode:[eventfd]"), Link::Known(FdTarget::EventFd));
        assert_eq!(parse_link("anon_inode:[timerfd]"), Link::Known(FdTarget::TimerFd));
        assert_eq!(parse_link("anon_inode:[signalfd]"), Link::Known(FdTarget::SignalFd));
        assert_eq!(
            parse_link("anon_inode:inotify"),
            Link::Known(FdTarget::Other { link: "anon_inode:inotify".into() })
        );
        assert_eq!(parse_link("/var/lib/app/data.db (deleted)"), Link::Path("/var/lib/app/data.db (deleted)".into()));
        assert_eq!(parse_link("net:[4026531840]"), Link::Known(FdTarget::Other { link: "net:[4026531840]".into() }));
        assert_eq!(parse_link("socket:[x]"), Link::Known(FdTarget::Other { link: "socket:[x]".into() }));
    }

    #[test]
    fn display() {
        let cases = [
            (FdTarget::Tcp { local: addr("127.0.0.1:40000"), peer: addr("127.0.0.1:5432") }, "tcp 127.0.0.1:5432"),
            (FdTarget::Tcp { local: addr("[::1]:40000"), peer: addr("[::1]:8080") }, "tcp [::1]:8080"),
            (FdTarget::Tcp { local: addr("0.0.0.0:8080"), peer: addr("0.0.0.0:0") }, "tcp listen 0.0.0.0:8080"),
            (FdTarget::Tcp { local: addr("[::]:8080"), peer: addr("[::]:0") }, "tcp listen [::]:8080"),
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

    #[test]
    fn protocol_tables() {
        assert_eq!(Table::for_protocol(Some("TCP")), [Table::Tcp]);
        assert_eq!(Table::for_protocol(Some("TCPv6")), [Table::Tcp6]);
        assert_eq!(Table::for_protocol(Some("UDPv6")), [Table::Udp6]);
        assert_eq!(Table::for_protocol(Some("UNIX-STREAM")), [Table::Unix]);
        assert_eq!(Table::for_protocol(Some("UNIX")), [Table::Unix]);
        assert_eq!(Table::for_protocol(Some("NETLINK")), []);
        assert_eq!(Table::for_protocol(None), Table::ALL);
    }

    /// A reply as the kernel builds it: nlmsghdr, unix_diag_msg, then NAME and PEER attributes.
    fn diag_reply(inode: u32, name: &[u8], peer: u32) -> Vec<u8> {
        let mut body = vec![libc::AF_UNIX as u8, 1, 1, 0];
        body.extend(inode.to_ne_bytes());
        body.extend([0xff; 8]);
        let name_len = 4 + name.len();
        body.extend((name_len as u16).to_ne_bytes());
        body.extend(0u16.to_ne_bytes());
        body.extend(name);
        body.resize(body.len() + (name_len.next_multiple_of(4) - name_len), 0);
        body.extend(8u16.to_ne_bytes());
        body.extend(2u16.to_ne_bytes());
        body.extend(peer.to_ne_bytes());
        let mut message = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        message.extend(20u16.to_ne_bytes());
        message.extend([0; 10]);
        message.extend(body);
        message
    }

    #[test]
    fn diag_replies() {
        let reply = unix_diag::parse_reply(&diag_reply(7, b"/run/x.sock\0", 8), 7).unwrap();
        assert_eq!(reply, unix_diag::Reply { name: Some("/run/x.sock".into()), peer: Some(8) });
        let reply = unix_diag::parse_reply(&diag_reply(7, b"\0abs\0x", 0), 7).unwrap();
        assert_eq!(reply.name.as_deref(), Some("@abs@x"));
        assert_eq!(unix_diag::parse_reply(&diag_reply(7, b"/x\0", 8), 9), None, "another socket");
        let full = diag_reply(7, b"/run/x.sock\0", 8);
        for len in 0..full.len() {
            let _ = unix_diag::parse_reply(&full[..len], 7); // truncated: no panic
        }
        let mut error = full.clone();
        error[4..6].copy_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        assert_eq!(unix_diag::parse_reply(&error, 7), None);
    }

    #[test]
    fn vanished_process_or_fd() {
        assert_eq!(describe(u32::MAX, 0), None);
        assert_eq!(describe(std::process::id(), -1), None);
        assert_eq!(describe(std::process::id(), 1_000_000), None);
        let mut cache = FdCache::default();
        assert_eq!(cache.describe(u32::MAX, 0), None);
        assert!(cache.processes.is_empty());
    }
}
