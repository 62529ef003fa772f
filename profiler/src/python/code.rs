//! Code objects read out of a target process: name, file, first line and line table, enough to
//! name any frame that runs the code and find its current line.
use super::{
    PyVersion,
    linetable,
    memory::{MAX_OBJECT_BYTES, Memory, field_i32, field_u64},
    offsets::PyOffsets,
};

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
}

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
    /// Whether frames of this code are coroutines, run by an event loop.
    pub fn is_coroutine(&self) -> bool {
        self.flags & (CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR) != 0
    }

    /// The line being executed for a frame's instruction field (`f_lasti` or the instruction
    /// pointer, as the kernel recorded it).
    pub fn line(&self, version: PyVersion, instr: u64, owned_by_generator: bool) -> FrameLine {
        match version.minor {
            ..=9 => FrameLine::Line(Some(linetable::lnotab_line(&self.linetable, self.firstlineno, instr as u32 as i32))),
            10 => {
                let lasti = instr as u32 as i32;
                // f_lasti is -1 before the first instruction: the frame is on its first line.
                if lasti < 0 {
                    return FrameLine::Line(Some(self.firstlineno));
                }
                FrameLine::Line(linetable::linetable310_line(&self.linetable, self.firstlineno, lasti * 2))
            }
            _ => {
                let unit = (instr as i64 - self.code_start as i64).div_euclid(2);
                if !owned_by_generator && unit < self.first_traceable {
                    return FrameLine::Incomplete;
                }
                FrameLine::Line(linetable::location_table_line(&self.linetable, self.firstlineno, unit))
            }
        }
    }
}

/// Reads `str` objects (compact unicode) with the version's layout.
pub fn read_unicode(mem: &Memory, o: &PyOffsets, addr: u64) -> Option<String> {
    let mut head = vec![0u8; o.unicode_compact_data as usize];
    if !mem.read(addr, &mut head[..o.unicode_ascii_data as usize]) {
        return None;
    }
    let length = field_u64(&head, o.unicode_length)? as usize;
    let state = field_i32(&head, o.unicode_state)? as u32;
    let kind = (state >> o.unicode_kind_shift) & o.unicode_kind_mask as u32;
    let compact = (state >> o.unicode_compact_shift) & 1 == 1;
    let ascii = (state >> o.unicode_ascii_shift) & 1 == 1;
    if !compact || !matches!(kind, 1 | 2 | 4) || length * kind as usize > MAX_OBJECT_BYTES {
        return None;
    }
    let data = if ascii { o.unicode_ascii_data } else { o.unicode_compact_data } as u64;
    let raw = mem.bytes(addr + data, length * kind as usize)?;
    let text = match kind {
        1 => raw.iter().map(|&b| b as char).collect(),
        2 => char::decode_utf16(raw.chunks_exact(2).map(|c| u16::from_ne_bytes([c[0], c[1]])))
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    };
    Some(text)
}

/// Reads a `bytes` object's contents.
pub fn read_bytes(mem: &Memory, o: &PyOffsets, addr: u64) -> Option<Vec<u8>> {
    let size = mem.u64(addr + o.bytes_size as u64)? as usize;
    mem.bytes(addr + o.bytes_data as u64, size)
}

/// Checks that `addr` is a code object, by its type's name. `code_type` caches the type object
/// address once seen, so later checks cost one read.
pub fn is_code(mem: &Memory, o: &PyOffsets, addr: u64, code_type: &mut Option<u64>) -> bool {
    let Some(ty) = mem.u64(addr + o.object_type as u64) else { return false };
    if let Some(known) = *code_type {
        return ty == known;
    }
    let is_code = mem
        .u64(ty + o.type_name as u64)
        .and_then(|name| mem.c_string(name, 16))
        .is_some_and(|name| name == "code");
    if is_code {
        *code_type = Some(ty);
    }
    is_code
}

/// Reads the code object at `addr`.
pub fn read_code(mem: &Memory, o: &PyOffsets, addr: u64) -> Option<CodeObject> {
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
        (addr + o.code_code_adaptive as u64, field_i32(&raw, o.code_firsttraceable)? as i64)
    } else {
        (0, 0)
    };
    Some(CodeObject { name, filename, firstlineno, flags, linetable, code_start, first_traceable })
}
