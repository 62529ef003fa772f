//! Code objects read out of a target process: name, file, first line and line table, enough to
//! name any frame that runs the code and find its current line.
//!
//! Free-threaded 3.14+ runs each thread on its own copy of the bytecode once that thread has
//! specialized it (`co_tlbc`, an array indexed by the thread's bytecode index; entry 0 is
//! `co_code_adaptive`), so a frame's instruction pointer may point into any copy. The copy is
//! found by address among the array's entries (read when an instruction pointer falls outside
//! the copies already known) and the pointer mapped to the same offset in the main copy, which
//! the line table describes. No frame field is needed for it, so the kernel records the same
//! two words per frame for every build.
use super::{PyVersion, linetable, offsets::PyOffsets};
use crate::host::memory::{MAX_OBJECT_BYTES, ReadMemory, field_i32, field_u64};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeObject {
    /// `co_qualname` (3.11+) or `co_name`.
    pub name: String,
    pub filename: String,
    pub firstlineno: i32,
    /// `co_flags`.
    pub flags: i32,
    linetable: Vec<u8>,
    /// Address of the first code unit (3.11+: `co_code_adaptive`), for turning an instruction
    /// pointer into an index.
    code_start: u64,
    /// `_co_firsttraceable` (3.11+): frames before it are still being set up.
    first_traceable: i64,
    /// The code object's address, to read `co_tlbc` from.
    addr: u64,
    /// Bytes of bytecode (3.11+): of `co_code_adaptive` and of each per-thread copy.
    code_bytes: u64,
    /// Free-threaded 3.14+: the per-thread bytecode copies as last read from `co_tlbc`.
    copies: Vec<u64>,
}

/// Entries of a `co_tlbc` array read at most: one per thread index (indices are reused as
/// threads exit, so this bounds threads alive at once that ran the code, not threads ever).
const MAX_BYTECODE_COPIES: u64 = 4096;
/// Bytecode of one code object, at most (a corrupt `ob_size` must not make every address look
/// like it is inside a copy).
const MAX_CODE_BYTES: u64 = 1 << 24;

/// Where a frame is, as far as naming it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLine {
    /// A real frame at this line (None: the instruction has no line, e.g. generated code).
    Line(Option<i32>),
    /// A frame that has not started executing its code yet (3.11+ "incomplete" frame): not
    /// shown, as CPython itself hides it.
    Incomplete,
}

/// `co_flags` bits of code that runs as a coroutine (`async def`, `@types.coroutine`
/// generators, async generators); the same in every CPython 3.x.
const CO_COROUTINE: i32 = 0x80;
const CO_ITERABLE_COROUTINE: i32 = 0x100;
const CO_ASYNC_GENERATOR: i32 = 0x200;

impl CodeObject {
    /// The instruction pointer `instr` (3.11+) as an address in `co_code_adaptive`: itself, or,
    /// when it points into a free-threaded thread's own copy of the bytecode, the same offset
    /// in the main copy. A pointer in no known copy (a corrupt frame, a copy freed since) is
    /// returned as it is, and gives no line.
    pub fn main_copy_instr(&mut self, mem: &impl ReadMemory, o: &PyOffsets, instr: u64) -> u64 {
        if o.code_tlbc < 0 || self.code_bytes == 0 || self.in_copy(self.code_start, instr) {
            return instr;
        }
        if let Some(mapped) = self.map_from_copies(instr) {
            return mapped;
        }
        // A copy made since the last read (threads specialize lazily): read the array again.
        self.copies = read_copies(mem, o, self.addr).unwrap_or_default();
        self.map_from_copies(instr).unwrap_or(instr)
    }

    /// Does a 3.11+ instruction pointer point into this object's own bytecode? From one unit
    /// before its first (`prev_instr` of a frame not started yet, 3.11–3.12) to its end
    /// (`instr_ptr` past the last unit). False when the bytecode's extent is unknown.
    pub fn holds_instr(&self, instr: u64) -> bool {
        self.code_bytes != 0 && instr.wrapping_sub(self.code_start.wrapping_sub(2)) <= self.code_bytes + 2
    }

    /// The object's address in its process.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    fn in_copy(&self, start: u64, instr: u64) -> bool {
        instr.wrapping_sub(start) < self.code_bytes
    }

    fn map_from_copies(&self, instr: u64) -> Option<u64> {
        let copy = self.copies.iter().copied().find(|&c| c != 0 && self.in_copy(c, instr))?;
        Some(self.code_start.wrapping_add(instr - copy))
    }

    /// Whether frames of this code are coroutines, run by an event loop.
    pub fn is_coroutine(&self) -> bool {
        self.flags & (CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR) != 0
    }

    /// The line being executed for a frame's instruction field (`f_lasti` or the instruction
    /// pointer, as the kernel recorded it).
    pub fn line(&self, version: PyVersion, instr: u64, owned_by_generator: bool) -> FrameLine {
        match version.minor {
            ..=9 => {
                FrameLine::Line(Some(linetable::lnotab_line(&self.linetable, self.firstlineno, instr as u32 as i32)))
            }
            10 => {
                let lasti = instr as u32 as i32;
                // f_lasti is -1 before the first instruction: the frame is on its first line.
                if lasti < 0 {
                    return FrameLine::Line(Some(self.firstlineno));
                }
                // f_lasti counts code units: the table counts bytes.
                let offset = lasti.checked_mul(2);
                FrameLine::Line(offset.and_then(|o| linetable::linetable310_line(&self.linetable, self.firstlineno, o)))
            }
            _ => {
                // Any u64 may come from a corrupt frame: wrapping arithmetic, then the table
                // finds no such unit.
                let unit = (instr.wrapping_sub(self.code_start) as i64).div_euclid(2);
                if !owned_by_generator && unit < self.first_traceable {
                    return FrameLine::Incomplete;
                }
                FrameLine::Line(linetable::location_table_line(&self.linetable, self.firstlineno, unit))
            }
        }
    }
}

/// Reads `str` objects (compact unicode) with the version's layout.
pub fn read_unicode(mem: &impl ReadMemory, o: &PyOffsets, addr: u64) -> Option<String> {
    let mut head = vec![0u8; o.unicode_compact_data as usize];
    if !mem.read(addr, &mut head[..o.unicode_ascii_data as usize]) {
        return None;
    }
    let length = field_u64(&head, o.unicode_length)? as usize;
    let state = field_i32(&head, o.unicode_state)? as u32;
    let kind = (state >> o.unicode_kind_shift) & o.unicode_kind_mask as u32;
    let compact = (state >> o.unicode_compact_shift) & 1 == 1;
    let ascii = (state >> o.unicode_ascii_shift) & 1 == 1;
    // A corrupt length can be anything: the byte count is checked before it is used.
    let byte_len = length.checked_mul(kind as usize).filter(|&n| n <= MAX_OBJECT_BYTES);
    let (true, true, Some(byte_len)) = (compact, matches!(kind, 1 | 2 | 4), byte_len) else {
        return None;
    };
    let data = if ascii { o.unicode_ascii_data } else { o.unicode_compact_data } as u64;
    let raw = mem.bytes(addr.checked_add(data)?, byte_len)?;
    let text = match kind {
        1 => raw.iter().map(|&b| b as char).collect(),
        2 => char::decode_utf16(raw.chunks_exact(2).map(|c| u16::from_ne_bytes([c[0], c[1]])))
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    };
    Some(text)
}

/// Reads a `bytes` object's contents.
pub fn read_bytes(mem: &impl ReadMemory, o: &PyOffsets, addr: u64) -> Option<Vec<u8>> {
    let size = usize::try_from(mem.u64(addr.checked_add(o.bytes_size as u64)?)?).ok()?;
    mem.bytes(addr.checked_add(o.bytes_data as u64)?, size)
}

/// Checks that `addr` is a code object, by its type's name. `code_type` caches the type object
/// address once seen, so later checks cost one read.
pub fn is_code(mem: &impl ReadMemory, o: &PyOffsets, addr: u64, code_type: &mut Option<u64>) -> bool {
    let Some(ty) = addr.checked_add(o.object_type as u64).and_then(|a| mem.u64(a)) else { return false };
    if let Some(known) = *code_type {
        return ty == known;
    }
    let is_code = mem
        .u64(ty.wrapping_add(o.type_name as u64))
        .and_then(|name| mem.c_string(name, 16))
        .is_some_and(|name| name == "code");
    if is_code {
        *code_type = Some(ty);
    }
    is_code
}

/// Reads the code object at `addr`.
pub fn read_code(mem: &impl ReadMemory, o: &PyOffsets, addr: u64) -> Option<CodeObject> {
    let mut raw = vec![0u8; o.code_size_of as usize];
    if !mem.read(addr, &mut raw) {
        return None;
    }
    let name_field = if o.code_qualname >= 0 { o.code_qualname } else { o.code_name };
    let name = read_unicode(mem, o, field_u64(&raw, name_field)?)?;
    let filename = read_unicode(mem, o, field_u64(&raw, o.code_filename)?)?;
    let firstlineno = field_i32(&raw, o.code_firstlineno)?;
    let flags = field_i32(&raw, o.code_flags)?;
    let linetable = read_bytes(mem, o, field_u64(&raw, o.code_linetable)?).unwrap_or_default();
    let (code_start, first_traceable) = if o.code_code_adaptive >= 0 {
        (addr.checked_add(o.code_code_adaptive as u64)?, field_i32(&raw, o.code_firsttraceable)? as i64)
    } else {
        (0, 0)
    };
    let code_bytes = if o.code_units >= 0 {
        field_u64(&raw, o.code_units)?.checked_mul(2).filter(|&n| n <= MAX_CODE_BYTES).unwrap_or(0)
    } else {
        0
    };
    let copies = if o.code_tlbc >= 0 { read_copies(mem, o, addr).unwrap_or_default() } else { Vec::new() };
    Some(CodeObject {
        name,
        filename,
        firstlineno,
        flags,
        linetable,
        code_start,
        first_traceable,
        addr,
        code_bytes,
        copies,
    })
}

/// The entries of a free-threaded code object's `co_tlbc` array: its bytecode copies.
fn read_copies(mem: &impl ReadMemory, o: &PyOffsets, code: u64) -> Option<Vec<u64>> {
    let array = mem.u64(code.checked_add(o.code_tlbc as u64)?)?;
    let size = mem.u64(array.checked_add(o.code_array_size as u64)?)?;
    if size == 0 || size > MAX_BYTECODE_COPIES {
        return None;
    }
    let bytes = mem.bytes(array.checked_add(o.code_array_entries as u64)?, size as usize * 8)?;
    Some(bytes.chunks_exact(8).map(|w| u64::from_ne_bytes(w.try_into().unwrap())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{host::memory::ImageMemory, python::offsets::for_version};

    /// Found by the `code_object` fuzzer: a str whose length times its character width
    /// overflowed (a panic with overflow checks; without, a wrapped size that passed the
    /// length check).
    #[test]
    fn str_lengths_that_overflow_are_refused() {
        for ((_, minor, free_threaded), _) in crate::python::offsets::table() {
            let o = for_version(3, *minor, *free_threaded).unwrap();
            let mut image = vec![0u8; 256];
            let put = |image: &mut Vec<u8>, off: i64, bytes: &[u8]| {
                image[off as usize..off as usize + bytes.len()].copy_from_slice(bytes)
            };
            // Compact, 4 bytes per character, 2^62 + 1 characters: 4 * length wraps to 4.
            let state = 1u32 << o.unicode_compact_shift | 4 << o.unicode_kind_shift;
            put(&mut image, o.unicode_state, &state.to_ne_bytes());
            put(&mut image, o.unicode_length, &((1u64 << 62) + 1).to_ne_bytes());
            put(&mut image, o.unicode_compact_data, b"x\0\0\0");
            let mem = ImageMemory { base: 0x1000, image: image.clone() };
            assert_eq!(read_unicode(&mem, o, 0x1000), None, "3.{minor}");
            put(&mut image, o.unicode_length, &1u64.to_ne_bytes());
            let mem = ImageMemory { base: 0x1000, image };
            assert_eq!(read_unicode(&mem, o, 0x1000).as_deref(), Some("x"), "3.{minor}");
            // Objects at the very top of the address space.
            assert_eq!(read_unicode(&mem, o, u64::MAX - 8), None);
            assert_eq!(read_bytes(&mem, o, u64::MAX - 8), None);
            assert!(!is_code(&mem, o, u64::MAX - 4, &mut None));
        }
    }

    fn code(linetable: Vec<u8>, code_start: u64) -> CodeObject {
        CodeObject {
            name: "f".into(),
            filename: "f.py".into(),
            firstlineno: 10,
            flags: 0,
            linetable,
            code_start,
            first_traceable: 0,
            addr: 0,
            code_bytes: 0,
            copies: Vec::new(),
        }
    }

    /// Free-threaded 3.14+: a frame running its thread's own copy of the bytecode is mapped to
    /// the same offset in `co_code_adaptive`, the copies being read from `co_tlbc` when a
    /// pointer is in none of those known.
    #[test]
    fn instruction_pointers_in_per_thread_bytecode_copies_map_to_the_main_copy() {
        let ft = for_version(3, 14, true).unwrap();
        let base = 0x10_0000u64;
        let mut image = vec![0u8; 0x3000];
        let put = |image: &mut Vec<u8>, off: u64, v: u64| {
            image[off as usize..off as usize + 8].copy_from_slice(&v.to_ne_bytes())
        };
        let main = base + ft.code_code_adaptive as u64;
        let (array, copy) = (base + 0x1000, base + 0x2000);
        put(&mut image, ft.code_tlbc as u64, array);
        put(&mut image, 0x1000 + ft.code_array_size as u64, 3);
        let entries = 0x1000 + ft.code_array_entries as u64;
        put(&mut image, entries, main);
        put(&mut image, entries + 8, 0); // a thread index without a copy
        put(&mut image, entries + 16, copy);
        let mem = ImageMemory { base, image };
        let mut c = CodeObject { addr: base, code_bytes: 64, ..code(Vec::new(), main) };
        assert_eq!(c.main_copy_instr(&mem, ft, main + 10), main + 10);
        assert!(c.copies.is_empty(), "the main copy needs no read");
        assert_eq!(c.main_copy_instr(&mem, ft, copy + 10), main + 10);
        assert_eq!(c.copies, [main, 0, copy]);
        // Past the end of every copy (a corrupt frame, a freed copy): left as it is.
        assert_eq!(c.main_copy_instr(&mem, ft, copy + 64), copy + 64);
        assert_eq!(c.main_copy_instr(&mem, ft, 8), 8);
        // GIL builds have one copy, and never read an array.
        let gil = for_version(3, 14, false).unwrap();
        let mut c = CodeObject { addr: base, code_bytes: 64, ..code(Vec::new(), main) };
        assert_eq!(c.main_copy_instr(&mem, gil, copy + 10), copy + 10);
        assert!(c.copies.is_empty());
        // A corrupt array size is not followed.
        let mut image = mem.image.clone();
        put(&mut image, 0x1000 + ft.code_array_size as u64, u64::MAX);
        let mem = ImageMemory { base, image };
        let mut c = CodeObject { addr: base, code_bytes: 64, ..code(Vec::new(), main) };
        assert_eq!(c.main_copy_instr(&mem, ft, copy + 10), copy + 10);
    }

    /// 3.11+ without a fingerprint: a frame is tied to a cached code object only if its
    /// instruction pointer is inside that object's bytecode (one unit before it: a frame not
    /// started yet in 3.11-3.12), so code now at the address whose bytecode ends earlier, or
    /// a corrupt pointer, is read again rather than named from the cache.
    #[test]
    fn instruction_pointers_tie_a_frame_to_its_own_bytecode_only() {
        let start = 0x7f00_0000_1000u64;
        let c = CodeObject { code_bytes: 64, ..code(Vec::new(), start) };
        for instr in [start - 2, start, start + 10, start + 64] {
            assert!(c.holds_instr(instr), "{instr:#x}");
        }
        for instr in [start - 4, start + 66, 0, u64::MAX, start.wrapping_neg()] {
            assert!(!c.holds_instr(instr), "{instr:#x}");
        }
        // Bytecode of unknown extent ties nothing.
        assert!(!code(Vec::new(), start).holds_instr(start + 2));
        // At the bottom of the address space the range does not wrap into everything.
        let low = CodeObject { code_bytes: 64, ..code(Vec::new(), 0) };
        assert!(low.holds_instr(0) && low.holds_instr(64) && !low.holds_instr(66) && !low.holds_instr(u64::MAX - 8));
    }

    /// Found by the `code_object` fuzzer: a corrupt 3.10 `f_lasti` overflowed when turned into
    /// a byte offset, and a 3.11+ instruction pointer far from the code did too.
    #[test]
    fn corrupt_instruction_fields_give_no_line() {
        let v310 = PyVersion { major: 3, minor: 10, patch: None, free_threaded: false };
        let c = code(vec![4, 1, 4, 1], 0);
        assert_eq!(c.line(v310, 2, false), FrameLine::Line(Some(12)));
        assert_eq!(c.line(v310, i32::MAX as u64, false), FrameLine::Line(None));
        assert_eq!(c.line(v310, u64::MAX, false), FrameLine::Line(Some(10)), "-1: not started yet");
        let v312 = PyVersion { major: 3, minor: 12, patch: None, free_threaded: false };
        let c = code(vec![0x80 | (13 << 3) | 1, 2], 0x7f00_0000_0000);
        assert_eq!(c.line(v312, 0x7f00_0000_0002, false), FrameLine::Line(Some(11)));
        assert_eq!(c.line(v312, u64::MAX, true), FrameLine::Line(None));
        assert_eq!(c.line(v312, 0, true), FrameLine::Line(None));
        let c = code(vec![0x80 | (13 << 3) | 1, 2], u64::MAX);
        assert_eq!(c.line(v312, 0x10, true), FrameLine::Line(None));
    }
}
