//! The socket tables of a network namespace (`/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`): their
//! line formats, and [`NetCache`], the parsed tables per namespace. Read through a process of the
//! namespace, so sockets of processes in containers resolve as well as ours.
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The socket tables of /proc/PID/net.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Table {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
    Unix,
}

impl Table {
    pub(super) const ALL: [Table; 5] = [Table::Tcp, Table::Tcp6, Table::Udp, Table::Udp6, Table::Unix];

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
    pub(super) fn for_protocol(name: Option<&str>) -> &'static [Table] {
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

    pub(super) fn parse_line(self, line: &str) -> Option<(u64, SocketEntry)> {
        match self {
            Table::Tcp | Table::Tcp6 => {
                let listening = is_listening_line(line);
                parse_inet_line(line)
                    .map(|(inode, local, remote)| (inode, SocketEntry::Tcp { local, remote, listening }))
            }
            Table::Udp | Table::Udp6 => {
                parse_inet_line(line).map(|(inode, local, remote)| (inode, SocketEntry::Udp { local, remote }))
            }
            Table::Unix => parse_unix_line(line).map(|(inode, path)| (inode, SocketEntry::Unix { path })),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum SocketEntry {
    /// `listening`: in state LISTEN, which never gets a peer (so its entry is final).
    Tcp {
        local: SocketAddr,
        remote: SocketAddr,
        listening: bool,
    },
    Udp {
        local: SocketAddr,
        remote: SocketAddr,
    },
    Unix {
        path: Option<String>,
    },
}

/// Parsed socket tables per network namespace (by netns inode), each re-read at most once per
/// `max_age`: parsing /proc/net/tcp on a busy host costs milliseconds.
pub(super) struct NetCache {
    pub(super) max_age: Duration,
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
    pub(super) fn new(max_age: Duration) -> Self {
        NetCache { max_age, namespaces: HashMap::new() }
    }

    /// The entry for socket `inode` in `table` of namespace `netns`, read through process `pid`.
    pub(super) fn find(&mut self, pid: u32, netns: u64, table: Table, inode: u64) -> Option<&SocketEntry> {
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

/// Is this line of /proc/net/tcp{,6} a socket in state LISTEN (`st` = `0A`, `TCP_LISTEN`)?
fn is_listening_line(line: &str) -> bool {
    line.split_ascii_whitespace().nth(3) == Some("0A")
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
        assert!(is_listening_line(listen));
        assert_eq!(
            Table::Tcp.parse_line(listen),
            Some((
                23456,
                SocketEntry::Tcp { local: addr("127.0.0.1:5432"), remote: addr("0.0.0.0:0"), listening: true }
            ))
        );
        let established = "   3: 0F02000A:D2F2 0101A8C0:01BB 01 00000000:00000000 02:000004F1 00000000  1000        0 981234 2 0000000000000000 20 4 30 10 -1";
        assert_eq!(parse_inet_line(established), Some((981234, addr("10.0.2.15:54002"), addr("192.168.1.1:443"))));
        assert!(!is_listening_line(established));
        assert!(!is_listening_line(header));
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
    fn protocol_tables() {
        assert_eq!(Table::for_protocol(Some("TCP")), [Table::Tcp]);
        assert_eq!(Table::for_protocol(Some("TCPv6")), [Table::Tcp6]);
        assert_eq!(Table::for_protocol(Some("UDPv6")), [Table::Udp6]);
        assert_eq!(Table::for_protocol(Some("UNIX-STREAM")), [Table::Unix]);
        assert_eq!(Table::for_protocol(Some("UNIX")), [Table::Unix]);
        assert_eq!(Table::for_protocol(Some("NETLINK")), []);
        assert_eq!(Table::for_protocol(None), Table::ALL);
    }
}
