//! Pages of other programs' files that the symbolizer mapped, taken out of pyebpf's resident set.
//!
//! blazesym maps every binary it symbolizes (read-only, the whole file) and keeps the mapping
//! while a live process maps that file. The pages it touched (symbol tables, DWARF) stay in our
//! page tables, so they count in VmRSS although they are the page cache's: under `daemon --all`
//! on a host where processes come and go (builds, 1,000 short-lived processes a second), VmRSS
//! grew by the files of every program that was ever sampled, not by what pyebpf holds (issue
//! 13: ~40 MiB of file pages over a minute in scenario 4 on the shared build host, against
//! ~16 MiB of RssAnon).
//!
//! [`release_mapped_files`], once per window, drops those pages from our page tables with
//! `MADV_DONTNEED`. For a file mapping that was never writable nothing is lost: the next read
//! faults the page back in from the page cache (a minor fault, and only for the few addresses
//! that are new after the first symbolization of a process). Which mappings: read-only,
//! non-executable mappings of files that pyebpf does not map executable or writable anywhere
//! else, so its own binary and libraries (whose relocated read-only segments hold private
//! copies) are never touched.
use std::collections::HashSet;

/// A read-only mapping of another program's file, as `start..end` of our address space.
#[derive(Debug, PartialEq, Eq)]
pub struct FileMapping {
    pub start: u64,
    pub end: u64,
}

/// The mappings of `/proc/self/maps` text that hold only pages of files read by the
/// symbolizer (see the module's comment for the rule).
pub fn symbolizer_mappings(maps: &str) -> Vec<FileMapping> {
    let lines: Vec<(u64, u64, &str, &str)> = maps.lines().filter_map(parse_line).collect();
    // Files that are also mapped executable or writable are objects loaded by pyebpf itself.
    let loaded: HashSet<&str> =
        lines.iter().filter(|(_, _, perms, _)| perms.contains('x') || perms.contains('w')).map(|l| l.3).collect();
    lines
        .iter()
        .filter(|(_, _, perms, path)| perms.starts_with("r--") && !loaded.contains(path))
        .map(|&(start, end, ..)| FileMapping { start, end })
        .collect()
}

/// (start, end, permissions, path) of a file-backed mapping line; `None` for anonymous memory,
/// `[heap]`, `[stack]`, `anon_inode:...` and the like.
fn parse_line(line: &str) -> Option<(u64, u64, &str, &str)> {
    let mut fields = line.splitn(6, ' ');
    let (range, perms, _offset, _dev, inode) =
        (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let path = fields.next()?.trim_start();
    if inode == "0" || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?, perms, path))
}

/// Drops the symbolizer's file pages from pyebpf's page tables (see the module's comment).
/// Returns the bytes of address space advised; failures are ignored (nothing is lost: the
/// pages stay resident).
pub fn release_mapped_files() -> u64 {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let mut advised = 0;
    for m in symbolizer_mappings(&maps) {
        let len = (m.end - m.start) as usize;
        // SAFETY: the range is a whole read-only file mapping of this process that is never
        // written (see `symbolizer_mappings`); MADV_DONTNEED only unmaps its pages, which the
        // next access reads again from the file. A range unmapped meanwhile fails with ENOMEM.
        if unsafe { libc::madvise(m.start as *mut libc::c_void, len, libc::MADV_DONTNEED) } == 0 {
            advised += len as u64;
        }
    }
    advised
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:01 100 /usr/bin/pyebpf
55d0a0100000-55d0a0800000 r-xp 00100000 fe:01 100 /usr/bin/pyebpf
55d0a0800000-55d0a0900000 r--p 00800000 fe:01 100 /usr/bin/pyebpf
55d0a0900000-55d0a0910000 rw-p 00900000 fe:01 100 /usr/bin/pyebpf
55d0a1000000-55d0a2000000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0004000000 r--s 00000000 fe:01 200 /usr/lib/x86_64-linux-gnu/libLLVM.so.19
7f0004000000-7f0004100000 r--p 00000000 fe:01 300 /root/target/debug/xtask (deleted)
7f0005000000-7f0005028000 r--p 00000000 fe:01 400 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0005028000-7f00051bd000 r-xp 00028000 fe:01 400 /usr/lib/x86_64-linux-gnu/libc.so.6
7f00051bd000-7f0005215000 r--p 001bd000 fe:01 400 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0005215000-7f0005219000 r--p 00214000 fe:01 400 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0006000000-7f0006100000 rw-s 00000000 00:0f 1045 anon_inode:bpf-map
7f0007000000-7f0007001000 r--p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn only_files_the_process_did_not_load_itself() {
        assert_eq!(
            symbolizer_mappings(MAPS),
            vec![
                FileMapping { start: 0x7f00_0000_0000, end: 0x7f00_0400_0000 },
                FileMapping { start: 0x7f00_0400_0000, end: 0x7f00_0410_0000 },
            ],
            "libLLVM and the deleted xtask (mapped by the symbolizer); not pyebpf's or libc's \
             own read-only segments, not anonymous memory or BPF maps"
        );
    }

    #[test]
    fn a_mapped_file_stays_readable_after_its_pages_are_released() {
        // A real read-only file mapping, as blazesym makes them (memmap2: shared, read-only).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let content: Vec<u8> = (0..64 * 4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd as _;
        // SAFETY: a fresh read-only mapping of a file nobody writes.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), content.len(), libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        // SAFETY: the mapping is content.len() bytes long and lives until munmap below.
        let mapped = unsafe { std::slice::from_raw_parts(ptr as *const u8, content.len()) };
        assert_eq!(mapped, &content[..]);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(
            symbolizer_mappings(&maps).iter().any(|m| m.start == ptr as u64),
            "the test's mapping is one to release:\n{maps}"
        );
        assert!(release_mapped_files() >= content.len() as u64);
        assert_eq!(mapped, &content[..], "read again from the page cache");
        // SAFETY: unmapping the mapping made above; `mapped` is not used after.
        unsafe { libc::munmap(ptr, content.len()) };
    }
}
