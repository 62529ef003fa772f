//! What `readlink /proc/PID/fd/FD` says: `socket:[INODE]`, `pipe:[INODE]`, `anon_inode:[KIND]`
//! or a path. Parsed apart from any other lookup so the fuzzer can feed it any text; a path is
//! then sorted by the open file's type.
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::FdTarget;

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
pub(super) fn file_target(fd_path: &str, path: String) -> FdTarget {
    match std::fs::metadata(fd_path) {
        Ok(meta) if meta.file_type().is_block_device() => FdTarget::BlockDevice { path },
        Ok(meta) if meta.file_type().is_char_device() => FdTarget::CharDevice { path },
        Ok(meta) if meta.file_type().is_fifo() => FdTarget::Pipe { inode: meta.ino() },
        _ => FdTarget::File { path },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
