//! A process's executable mappings, from `/proc/PID/maps`, and the files behind them, opened
//! through `/proc/PID/map_files` (which works across mount namespaces and for deleted files).
use std::{fs::File, os::unix::fs::MetadataExt as _};

/// What an executable mapping holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A file: what identifies it (device, inode, size, mtime) and its path as the process
    /// sees it.
    File { key: FileKey, path: String },
    /// The kernel's vDSO (the same image in every process).
    Vdso,
    /// Anonymous executable memory: JIT code, generated trampolines (walked by frame pointers).
    Anonymous,
    /// Something else the unwinder cannot use (`[vsyscall]`, a file that cannot be opened).
    Unusable,
}

/// Identifies a binary across processes and mount namespaces: the same (device, inode, size,
/// mtime) is the same file contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecMapping {
    pub start: u64,
    pub end: u64,
    /// File offset the mapping starts at.
    pub offset: u64,
    pub backing: Backing,
}

/// The executable mappings of `pid`, sorted by address (the order /proc gives). None if the
/// process is gone.
pub fn exec_mappings(pid: u32) -> Option<Vec<ExecMapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    Some(parse_maps(&text, |start, end| file_key(pid, start, end)))
}

/// Parses maps text; `key(start, end)` identifies the file mapped at a range.
pub fn parse_maps(text: &str, key: impl Fn(u64, u64) -> Option<FileKey>) -> Vec<ExecMapping> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(offset), Some(_dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if perms.as_bytes().get(2) != Some(&b'x') {
            continue;
        }
        let path: String = f.collect::<Vec<_>>().join(" ");
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end), Ok(offset)) =
            (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16), u64::from_str_radix(offset, 16))
        else {
            continue;
        };
        let backing = if path == "[vdso]" {
            Backing::Vdso
        } else if inode != "0" {
            match key(start, end) {
                Some(key) => Backing::File { key, path },
                None => Backing::Unusable,
            }
        } else if path.is_empty() || path.starts_with("[anon") {
            Backing::Anonymous
        } else {
            Backing::Unusable
        };
        out.push(ExecMapping { start, end, offset, backing });
    }
    out
}

/// The file mapped at `start..end` of `pid`, opened through map_files.
pub fn open_mapped(pid: u32, start: u64, end: u64) -> Option<File> {
    File::open(format!("/proc/{pid}/map_files/{start:x}-{end:x}")).ok()
}

fn file_key(pid: u32, start: u64, end: u64) -> Option<FileKey> {
    let md = std::fs::metadata(format!("/proc/{pid}/map_files/{start:x}-{end:x}")).ok()?;
    Some(FileKey { dev: md.dev(), ino: md.ino(), size: md.size(), mtime: md.mtime() })
}

/// A file mapped read-only into our memory, for parsing without reading it all.
pub struct MappedFile {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl MappedFile {
    pub fn new(file: &File) -> Option<Self> {
        use std::os::fd::AsRawFd as _;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: a private read-only mapping of a file we opened, unmapped in Drop. The bytes
        // may change under us if the file is rewritten in place; parsing treats them as
        // untrusted input either way.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        Some(Self { ptr: std::ptr::NonNull::new(ptr.cast())?, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping made in `new`, alive as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_mappings_by_kind() {
        let text = "\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 123 /usr/bin/prog
55d0c0001000-55d0c0005000 r-xp 00001000 fd:01 123 /usr/bin/prog
7f0000000000-7f0000001000 rwxp 00000000 00:00 0 
7f0000002000-7f0000003000 r-xp 00000000 00:00 0 [anon:jit]
7ffc00000000-7ffc00002000 r-xp 00000000 00:00 0 [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
7f0000004000-7f0000005000 r-xp 00000000 fd:01 99 /gone/lib with space.so (deleted)
";
        let key = |start: u64, _end: u64| {
            (start == 0x55d0c0001000).then_some(FileKey { dev: 1, ino: 123, size: 10, mtime: 0 })
        };
        let m = parse_maps(text, key);
        let kinds: Vec<(u64, &Backing)> = m.iter().map(|m| (m.start, &m.backing)).collect();
        assert_eq!(m.len(), 6);
        assert_eq!(m[0].offset, 0x1000);
        assert!(matches!(kinds[0].1, Backing::File { path, .. } if path == "/usr/bin/prog"));
        assert_eq!(kinds[1].1, &Backing::Anonymous);
        assert_eq!(kinds[2].1, &Backing::Anonymous);
        assert_eq!(kinds[3].1, &Backing::Vdso);
        assert_eq!(kinds[4].1, &Backing::Unusable);
        // A file that cannot be opened is of no use.
        assert_eq!(kinds[5].1, &Backing::Unusable);
    }
}
