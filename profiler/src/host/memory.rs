//! Reading another process's memory with process_vm_readv: one syscall per read, no ptrace
//! attach, the target keeps running. Every read can fail (the process exited, the address is
//! unmapped, the memory is garbage); callers treat failure as "unknown", never as fatal.

/// Reads of a target's address space. Every parser of interpreter memory takes one of these:
/// [`Memory`] in the profiler, a byte image in the fuzzers (`fuzz/`) and unit tests. Only
/// `read` differs between them; every other read is built on it here.
pub trait ReadMemory {
    /// Fills `buf` from `addr`; false unless every byte was read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// `len` bytes from `addr`; None past [`MAX_OBJECT_BYTES`] (a corrupt size) or on failure.
    fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        if len > MAX_OBJECT_BYTES {
            return None;
        }
        let mut buf = vec![0u8; len];
        self.read(addr, &mut buf).then_some(buf)
    }

    /// Fills each buffer from its address; whether each was read whole. [`Memory`] makes one
    /// call for many (a dict's keys: one `process_vm_readv` instead of one per key).
    fn read_each(&self, reads: &mut [(u64, &mut [u8])]) -> Vec<bool> {
        reads.iter_mut().map(|(addr, buf)| self.read(*addr, buf)).collect()
    }

    fn u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_ne_bytes(b))
    }

    /// A NUL-terminated C string of at most `max` bytes.
    fn c_string(&self, addr: u64, max: usize) -> Option<String> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 64];
        while out.len() < max {
            // Read in small chunks: a longer read could cross into an unmapped page.
            let at = addr.checked_add(out.len() as u64)?;
            let page_left = 4096 - (at % 4096) as usize;
            let want = chunk.len().min(max - out.len()).min(page_left);
            if !self.read(at, &mut chunk[..want]) {
                return None;
            }
            if let Some(end) = chunk[..want].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return Some(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&chunk[..want]);
        }
        None
    }
}

/// A process's address space, for reads.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub pid: u32,
}

/// Longest string or byte object we agree to read out of a target (names, file names, line
/// tables). Anything longer is treated as corrupt.
pub const MAX_OBJECT_BYTES: usize = 1 << 20;

impl Memory {
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }
}

impl ReadMemory for Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        if buf.is_empty() {
            return true;
        }
        if addr == 0 {
            return false;
        }
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: `local` covers exactly `buf`; the kernel checks `remote`.
        let n = unsafe { libc::process_vm_readv(self.pid as i32, &local, 1, &remote, 1, 0) };
        n == buf.len() as isize
    }

    /// Vectored: the kernel copies the elements in order and stops at the first it cannot
    /// read whole (an element is never split), so the count of bytes says which were read;
    /// the next call starts after the one that failed.
    fn read_each(&self, reads: &mut [(u64, &mut [u8])]) -> Vec<bool> {
        let mut ok = vec![false; reads.len()];
        let (mut next, total) = (0, reads.len());
        while next < total {
            let batch = &mut reads[next..(next + MAX_IOVECS).min(total)];
            let local: Vec<libc::iovec> = batch
                .iter_mut()
                .map(|(_, buf)| libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() })
                .collect();
            let remote: Vec<libc::iovec> = batch
                .iter()
                .map(|(addr, buf)| libc::iovec { iov_base: *addr as *mut libc::c_void, iov_len: buf.len() })
                .collect();
            // SAFETY: each local iovec covers exactly one of the buffers, borrowed mutably for
            // the call; the kernel checks the remote ones.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid as i32,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            let mut left = usize::try_from(n).unwrap_or(0);
            let mut whole = 0;
            while whole < batch.len()
                && left >= batch[whole].1.len()
                && (batch[whole].0 != 0 || batch[whole].1.is_empty())
            {
                left -= batch[whole].1.len();
                ok[next + whole] = true;
                whole += 1;
            }
            // Element `whole` (if any) failed.
            next += whole + 1;
        }
        ok
    }
}

/// Bytes of a page: the unit a process's memory is mapped in, so a page is readable whole or
/// not at all.
const PAGE: u64 = 4096;
/// Pages one read may span through a [`PageCache`]; a longer read (a line table, a big set's
/// table) goes straight to the process.
const MAX_CACHED_SPAN: u64 = 4;
/// Pages a [`PageCache`] keeps by default (16 MiB): past them, reads go straight to the
/// process.
pub const DEFAULT_CACHED_PAGES: usize = 4096;

/// One moment's view of a process's memory: each page touched is read whole, once, and every
/// later read of it is served from here. An asyncio snapshot reads a dozen small fields per
/// task (the task, its name, each coroutine and its frame, the future it awaits, their types)
/// from objects that pymalloc packs into a few pools: one `process_vm_readv` per field made a
/// 1,000-task snapshot cost tens of milliseconds, almost all of it syscalls (BENCHMARKS, bench
/// tasks). Dropped when the snapshot ends: nothing read here outlives the moment it describes,
/// and reads made together see the objects as they were together (a page is copied at once).
pub struct PageCache<M: ReadMemory> {
    inner: M,
    /// Page address → its bytes, or None when it could not be read whole.
    pages: std::cell::RefCell<std::collections::HashMap<u64, Option<Box<[u8]>>>>,
    max_pages: usize,
}

impl<M: ReadMemory> PageCache<M> {
    pub fn new(inner: M) -> Self {
        Self::with_capacity(inner, DEFAULT_CACHED_PAGES)
    }

    pub fn with_capacity(inner: M, max_pages: usize) -> Self {
        Self { inner, pages: Default::default(), max_pages }
    }

    /// Pages read so far (for the debug log).
    pub fn pages(&self) -> usize {
        self.pages.borrow().len()
    }
}

impl<M: ReadMemory> ReadMemory for PageCache<M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        if buf.is_empty() {
            return true;
        }
        let Some(last) = addr.checked_add(buf.len() as u64 - 1) else { return false };
        let (first_page, last_page) = (addr & !(PAGE - 1), last & !(PAGE - 1));
        if (last_page - first_page) / PAGE >= MAX_CACHED_SPAN {
            return self.inner.read(addr, buf);
        }
        let mut pages = self.pages.borrow_mut();
        let mut at = addr;
        let mut filled = 0;
        while filled < buf.len() {
            let page = at & !(PAGE - 1);
            if !pages.contains_key(&page) {
                if pages.len() >= self.max_pages {
                    drop(pages);
                    return self.inner.read(addr, buf);
                }
                let mut bytes = vec![0u8; PAGE as usize].into_boxed_slice();
                let ok = self.inner.read(page, &mut bytes);
                pages.insert(page, ok.then_some(bytes));
            }
            // A page that could not be read whole: this read is made as asked, without the cache
            // (the answers are always the memory's own, wherever its readable bytes begin).
            let Some(bytes) = &pages[&page] else {
                drop(pages);
                return self.inner.read(addr, buf);
            };
            let from = (at - page) as usize;
            let n = (PAGE as usize - from).min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&bytes[from..from + n]);
            filled += n;
            at = at.wrapping_add(n as u64);
        }
        true
    }
}

/// Elements per vectored call (the kernel's `UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

/// An address space made of one byte image mapped at `base`: what the fuzzers and unit tests
/// hand the parsers instead of a live process. Reads outside the image fail, as unmapped
/// memory does.
#[derive(Clone, Debug, Default)]
pub struct ImageMemory {
    pub base: u64,
    pub image: Vec<u8>,
}

impl ReadMemory for ImageMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        if buf.is_empty() {
            return true;
        }
        let Some(start) = addr.checked_sub(self.base).and_then(|o| usize::try_from(o).ok()) else { return false };
        match start.checked_add(buf.len()).and_then(|end| self.image.get(start..end)) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// Reads a little-endian integer field out of a struct already copied into `buf`.
pub fn field_u64(buf: &[u8], off: i64) -> Option<u64> {
    let off = usize::try_from(off).ok()?;
    Some(u64::from_ne_bytes(buf.get(off..off + 8)?.try_into().ok()?))
}

pub fn field_i32(buf: &[u8], off: i64) -> Option<i32> {
    let off = usize::try_from(off).ok()?;
    Some(i32::from_ne_bytes(buf.get(off..off + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_rejects_bad_addresses() {
        let me = Memory::new(std::process::id());
        let value: u64 = 0x1122_3344_5566_7788;
        assert_eq!(me.u64(&raw const value as u64), Some(value));
        assert_eq!(me.u64(0), None);
        assert_eq!(me.u64(8), None);
        let s = b"hello\0world";
        assert_eq!(me.c_string(s.as_ptr() as u64, 100).as_deref(), Some("hello"));
        assert_eq!(me.c_string(s.as_ptr() as u64, 3), None);
    }

    #[test]
    fn vectored_reads_say_which_were_read() {
        let me = Memory::new(std::process::id());
        let (a, b) = (0x1111_u64, 0x2222_u64);
        let (mut x, mut y, mut z, mut e) = ([0u8; 8], [0u8; 8], [0u8; 8], [0u8; 0]);
        let mut reads: Vec<(u64, &mut [u8])> =
            vec![(&raw const a as u64, &mut x), (8, &mut y), (&raw const b as u64, &mut z), (0, &mut e)];
        assert_eq!(me.read_each(&mut reads), [true, false, true, true]);
        assert_eq!((u64::from_ne_bytes(x), u64::from_ne_bytes(z)), (a, b));
        // More elements than one call takes, the same answers as one read each.
        let values: Vec<u64> = (0..2500).collect();
        let mut bufs = vec![[0u8; 8]; values.len()];
        let mut reads: Vec<(u64, &mut [u8])> = values
            .iter()
            .zip(bufs.iter_mut())
            .enumerate()
            .map(|(i, (v, buf))| (if i % 700 == 3 { 16 } else { std::ptr::from_ref(v) as u64 }, buf.as_mut_slice()))
            .collect();
        let ok = me.read_each(&mut reads);
        for (i, (v, buf)) in values.iter().zip(&bufs).enumerate() {
            assert_eq!(ok[i], i % 700 != 3, "{i}");
            if ok[i] {
                assert_eq!(u64::from_ne_bytes(*buf), *v);
            }
        }
    }

    #[test]
    fn image_reads_stay_inside_the_image() {
        let mem = ImageMemory { base: 0x1000, image: (0..32).collect() };
        assert_eq!(mem.u64(0x1000), Some(u64::from_ne_bytes([0, 1, 2, 3, 4, 5, 6, 7])));
        assert_eq!(mem.u64(0x1018), Some(u64::from_ne_bytes([24, 25, 26, 27, 28, 29, 30, 31])));
        assert_eq!(mem.u64(0x1019), None, "runs past the end");
        assert_eq!(mem.u64(0xfff), None, "starts before the image");
        assert_eq!(mem.u64(u64::MAX - 3), None);
        // A string running to the top of the address space ends there (an address overflow
        // before, found reading the code for the fuzzers).
        let top = ImageMemory { base: u64::MAX - 63, image: vec![b'a'; 64] };
        assert_eq!(top.c_string(top.base, 100), None);
    }

    #[test]
    fn page_cache_reads_what_the_memory_holds_and_fails_where_it_fails() {
        // An image of three pages from 0x10000 and one unmapped page before it.
        let image: Vec<u8> = (0..3 * PAGE as usize).map(|i| (i * 7 % 251) as u8).collect();
        let mem = ImageMemory { base: 0x10000, image: image.clone() };
        let cache = PageCache::new(mem.clone());
        for (addr, len) in [(0x10000u64, 8usize), (0x10ffc, 8), (0x11000, 4096), (0x10010, 3 * 4096 - 16), (0x12ff8, 8)]
        {
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            assert_eq!(cache.read(addr, &mut a), mem.read(addr, &mut b), "{addr:#x}+{len}");
            assert_eq!(a, b, "{addr:#x}+{len}");
        }
        assert_eq!(cache.pages(), 3, "each page read once");
        assert_eq!(cache.u64(0xfffc), None, "starts in an unmapped page");
        assert_eq!(cache.u64(0x12ffc), None, "runs into an unmapped page");
        assert_eq!(cache.u64(u64::MAX - 3), None);
        assert!(cache.read(0x10000, &mut []));
        // Memory whose readable bytes do not start at a page (an image; a real mapping always
        // does): the cache answers as the memory does.
        let odd = ImageMemory { base: 0x10010, image: image.clone() };
        let cache = PageCache::new(odd.clone());
        for addr in [0x10010u64, 0x10ff8, 0x12ff0, 0x13008, 0x1000c] {
            assert_eq!(cache.u64(addr), odd.u64(addr), "{addr:#x}");
        }
        // Past its capacity it reads through, with the same answers.
        let small = PageCache::with_capacity(mem.clone(), 1);
        assert_eq!(small.u64(0x10000), mem.u64(0x10000));
        assert_eq!(small.u64(0x11000), mem.u64(0x11000));
        assert_eq!(small.pages(), 1);
        // A read longer than the span it caches goes straight through.
        let big = PageCache::new(ImageMemory {
            base: 0x10000,
            image: (0..(MAX_CACHED_SPAN as usize + 1) * 4096).map(|i| i as u8).collect(),
        });
        assert!(big.bytes(0x10000, (MAX_CACHED_SPAN as usize + 1) * 4096).is_some());
        assert_eq!(big.pages(), 0);
    }

    #[test]
    fn fields_are_bounds_checked() {
        let buf = [1u8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(field_u64(&buf, 0), Some(1));
        assert_eq!(field_i32(&buf, 8), Some(2));
        assert_eq!(field_u64(&buf, 8), None);
        assert_eq!(field_u64(&buf, -1), None);
    }
}
