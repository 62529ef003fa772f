//! The unix sock_diag netlink query (linux/unix_diag.h): a socket's bound name, its peer's
//! inode. A connected unix client has no path of its own in /proc/net/unix; the path its peer
//! is bound to comes from here, asked inside the target's network namespace.
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
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    // SAFETY: a descriptor socket(2) just returned, owned by nothing else.
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let reply = parse_reply(&diag_reply(7, b"/run/x.sock\0", 8), 7).unwrap();
        assert_eq!(reply, Reply { name: Some("/run/x.sock".into()), peer: Some(8) });
        let reply = parse_reply(&diag_reply(7, b"\0abs\0x", 0), 7).unwrap();
        assert_eq!(reply.name.as_deref(), Some("@abs@x"));
        assert_eq!(parse_reply(&diag_reply(7, b"/x\0", 8), 9), None, "another socket");
        let full = diag_reply(7, b"/run/x.sock\0", 8);
        for len in 0..full.len() {
            let _ = parse_reply(&full[..len], 7); // truncated: no panic
        }
        let mut error = full.clone();
        error[4..6].copy_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        assert_eq!(parse_reply(&error, 7), None);
    }
}
