//! Shared by the fuzz targets: a fake address space built from fuzzer input.
//!
//! Garbage alone rarely gets a parser of interpreter memory past its first type check, so the
//! memory targets build a *valid* object graph in CPython's layout for the chosen version (code
//! objects, strings, dicts, ints, thread states: the same layouts the profiler reads from live
//! processes), then corrupt it with the fuzzer's pokes: any word anywhere, any value. Both the
//! valid paths and every way off them get exercised.
pub mod asyncio;

use arbitrary::Arbitrary;
use profiler::{
    host::memory::ImageMemory,
    python::{PyVersion, offsets::PyOffsets},
};

/// Where the image is mapped: any page-aligned address away from 0 does.
pub const BASE: u64 = 0x7f00_0000_0000;

/// A corruption: `value` written at byte `at` (modulo the image) with a width of 1, 2, 4 or 8.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Poke {
    pub at: u32,
    pub width: u8,
    pub value: u64,
}

/// Text for a `str` object: bytes and a storage kind (ASCII, 1, 2 or 4 bytes per character).
#[derive(Arbitrary, Debug, Clone)]
pub struct Text {
    pub kind: u8,
    pub bytes: Vec<u8>,
}

/// A growing byte image mapped at [`BASE`], with 16-byte aligned allocations.
pub struct Image {
    pub bytes: Vec<u8>,
    /// Bytes never handed out: objects are not placed beyond this many (fuzz inputs stay small).
    limit: usize,
}

impl Image {
    pub fn new(limit: usize) -> Self {
        // A first page left free, so that "before the object" reads (managed dicts) stay inside.
        Image { bytes: vec![0; 64], limit }
    }

    /// Allocates `size` zeroed bytes; None when the image would exceed its limit.
    pub fn alloc(&mut self, size: usize) -> Option<u64> {
        let start = self.bytes.len().next_multiple_of(16);
        let end = start.checked_add(size.max(8))?;
        if end > self.limit {
            return None;
        }
        self.bytes.resize(end, 0);
        Some(BASE + start as u64)
    }

    /// Writes `data` at `addr + off` when it is inside the image (fields a version lacks have
    /// offset -1 and are skipped).
    pub fn put(&mut self, addr: u64, off: i64, data: &[u8]) {
        if off < 0 {
            return;
        }
        let start = (addr - BASE) as usize + off as usize;
        if let Some(dst) = self.bytes.get_mut(start..start + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    pub fn put_u64(&mut self, addr: u64, off: i64, value: u64) {
        self.put(addr, off, &value.to_ne_bytes());
    }

    pub fn put_i32(&mut self, addr: u64, off: i64, value: i32) {
        self.put(addr, off, &value.to_ne_bytes());
    }

    pub fn poke(&mut self, p: &Poke) {
        if self.bytes.is_empty() {
            return;
        }
        let width = [1usize, 2, 4, 8][p.width as usize % 4];
        let at = p.at as usize % self.bytes.len();
        let end = (at + width).min(self.bytes.len());
        let value = p.value.to_ne_bytes();
        self.bytes[at..end].copy_from_slice(&value[..end - at]);
    }

    pub fn memory(self) -> ImageMemory {
        ImageMemory { base: BASE, image: self.bytes }
    }
}

/// The CPython layouts the profiler has (free-threaded builds included), picked by a fuzzer
/// byte.
pub fn offsets(selector: u8) -> (PyVersion, &'static PyOffsets) {
    let table = profiler::python::offsets::table();
    let ((major, minor, free_threaded), o) = &table[usize::from(selector) % table.len()];
    (PyVersion { major: *major, minor: *minor, patch: None, free_threaded: *free_threaded }, o)
}

/// Builds CPython objects in an [`Image`] with one version's layout.
pub struct Objects<'a> {
    pub img: Image,
    pub o: &'a PyOffsets,
    type_str: u64,
    type_dict: u64,
    type_int: u64,
    type_bytes: u64,
    type_code: u64,
}

fn max_field(fields: &[i64]) -> usize {
    fields.iter().copied().max().unwrap_or(0).max(0) as usize + 8
}

impl<'a> Objects<'a> {
    pub fn new(o: &'a PyOffsets, limit: usize) -> Option<Self> {
        let mut objects =
            Objects { img: Image::new(limit), o, type_str: 0, type_dict: 0, type_int: 0, type_bytes: 0, type_code: 0 };
        objects.type_str = objects.type_object(o.type_flag_unicode_subclass.max(0) as u64, "str", 0)?;
        objects.type_dict = objects.type_object(o.type_flag_dict_subclass.max(0) as u64, "dict", 0)?;
        objects.type_int = objects.type_object(o.type_flag_long_subclass.max(0) as u64, "int", 0)?;
        objects.type_bytes = objects.type_object(0, "bytes", 0)?;
        objects.type_code = objects.type_object(0, "code", 0)?;
        Some(objects)
    }

    /// A type object with `tp_flags`, `tp_name` and `tp_dictoffset`.
    pub fn type_object(&mut self, flags: u64, name: &str, dictoffset: i64) -> Option<u64> {
        let o = self.o;
        let size = max_field(&[o.type_flags, o.type_dictoffset, o.type_name, o.heap_type_cached_keys]);
        let ty = self.img.alloc(size)?;
        let text = self.img.alloc(name.len() + 1)?;
        self.img.put(text, 0, name.as_bytes());
        self.img.put_u64(ty, o.type_name, text);
        self.img.put_u64(ty, o.type_flags, flags);
        self.img.put_u64(ty, o.type_dictoffset, dictoffset as u64);
        Some(ty)
    }

    /// A compact `str` object holding `text` in the storage kind `text.kind` selects.
    pub fn str_object(&mut self, text: &Text) -> Option<u64> {
        let o = self.o;
        let (kind, ascii) = match text.kind % 4 {
            0 => (1u32, true),
            1 => (1, false),
            2 => (2, false),
            _ => (4, false),
        };
        let mut bytes = text.bytes.clone();
        if ascii {
            bytes.iter_mut().for_each(|b| *b &= 0x7f);
        }
        bytes.truncate(bytes.len() / kind as usize * kind as usize);
        let data = if ascii { o.unicode_ascii_data } else { o.unicode_compact_data };
        let obj = self.img.alloc(data as usize + bytes.len() + kind as usize)?;
        self.img.put_u64(obj, o.object_type, self.type_str);
        self.img.put_u64(obj, o.unicode_length, (bytes.len() / kind as usize) as u64);
        let state =
            1u32 << o.unicode_compact_shift | (ascii as u32) << o.unicode_ascii_shift | kind << o.unicode_kind_shift;
        self.img.put(obj, o.unicode_state, &state.to_ne_bytes());
        self.img.put(obj, data, &bytes);
        Some(obj)
    }

    pub fn ascii(&mut self, text: &str) -> Option<u64> {
        self.str_object(&Text { kind: 0, bytes: text.as_bytes().to_vec() })
    }

    /// A `bytes` object.
    pub fn bytes_object(&mut self, data: &[u8]) -> Option<u64> {
        let o = self.o;
        let obj = self.img.alloc(o.bytes_data as usize + data.len() + 1)?;
        self.img.put_u64(obj, o.object_type, self.type_bytes);
        self.img.put_u64(obj, o.bytes_size, data.len() as u64);
        self.img.put(obj, o.bytes_data, data);
        Some(obj)
    }

    /// An `int` object holding `value`, in the version's digit encoding.
    pub fn int_object(&mut self, value: i64) -> Option<u64> {
        let o = self.o;
        let bits = o.long_digit_bits as u32;
        let mut magnitude = value.unsigned_abs();
        let mut digits = Vec::new();
        while magnitude != 0 {
            digits.push((magnitude & ((1 << bits) - 1)) as u32);
            magnitude >>= bits;
        }
        let obj = self.img.alloc(o.long_digits as usize + 4 * digits.len().max(1))?;
        self.img.put_u64(obj, o.object_type, self.type_int);
        if o.long_tag >= 0 {
            let sign = match value.signum() {
                1 => 0u64,
                0 => 1,
                _ => 2,
            };
            self.img.put_u64(obj, o.long_tag, (digits.len() as u64) << o.long_tag_size_shift | sign);
        } else {
            self.img.put_u64(obj, o.long_size, (digits.len() as i64 * value.signum()) as u64);
        }
        for (i, d) in digits.iter().enumerate() {
            self.img.put(obj, o.long_digits + 4 * i as i64, &d.to_ne_bytes());
        }
        Some(obj)
    }

    /// A `dict` with these (key, value) object pointers, in a combined table with general keys.
    pub fn dict_object(&mut self, items: &[(u64, u64)]) -> Option<u64> {
        let o = self.o;
        let slots = (items.len() * 3 / 2 + 1).next_power_of_two().max(8) as u64;
        let index_width = match slots {
            0..=0xff => 1u64,
            0x100..=0xffff => 2,
            _ => 4,
        };
        let entries_start = o.dict_keys_indices as u64 + slots * index_width;
        let keys = self.img.alloc((entries_start + slots * o.dict_entry_size as u64) as usize)?;
        self.img.put_u64(keys, o.dict_keys_nentries, items.len() as u64);
        if o.dict_keys_size >= 0 {
            self.img.put_u64(keys, o.dict_keys_size, slots);
        } else {
            let log2 = slots.trailing_zeros() as u8;
            self.img.put(keys, o.dict_keys_log2_size, &[log2]);
            self.img.put(keys, o.dict_keys_log2_index_bytes, &[log2 + index_width.trailing_zeros() as u8]);
            self.img.put(keys, o.dict_keys_kind, &[o.dict_keys_kind_general as u8]);
        }
        for (i, &(key, value)) in items.iter().enumerate() {
            let entry = (entries_start + i as u64 * o.dict_entry_size as u64) as i64;
            self.img.put_u64(keys, entry + o.dict_entry_key, key);
            self.img.put_u64(keys, entry + o.dict_entry_value, value);
        }
        let dict = self.img.alloc(max_field(&[o.object_type, o.dict_used, o.dict_keys, o.dict_values]))?;
        self.img.put_u64(dict, o.object_type, self.type_dict);
        self.img.put_u64(dict, o.dict_used, items.len() as u64);
        self.img.put_u64(dict, o.dict_keys, keys);
        Some(dict)
    }

    /// A code object with `code_units` units of (zero) bytecode, its type named "code".
    #[allow(clippy::too_many_arguments)]
    pub fn code_object(
        &mut self,
        name: &Text,
        filename: &Text,
        firstlineno: i32,
        flags: i32,
        linetable: &[u8],
        first_traceable: i32,
        code_units: usize,
    ) -> Option<u64> {
        let o = self.o;
        let name = self.str_object(name)?;
        let filename = self.str_object(filename)?;
        let table = self.bytes_object(linetable)?;
        let code_bytes = if o.code_code_adaptive >= 0 { o.code_code_adaptive as usize + 2 * code_units } else { 0 };
        let code = self.img.alloc((o.code_size_of as usize).max(code_bytes))?;
        self.img.put_u64(code, o.object_type, self.type_code);
        self.img.put_u64(code, o.code_name, name);
        self.img.put_u64(code, o.code_qualname, name);
        self.img.put_u64(code, o.code_filename, filename);
        self.img.put_i32(code, o.code_firstlineno, firstlineno);
        self.img.put_i32(code, o.code_flags, flags);
        self.img.put_u64(code, o.code_linetable, table);
        self.img.put_i32(code, o.code_firsttraceable, first_traceable);
        Some(code)
    }
}

/// A Python thread for [`threading_graph`].
#[derive(Arbitrary, Debug, Clone)]
pub struct PyThread {
    pub name: Text,
    pub native_id: i64,
    pub ident: i64,
}

fn field_end(fields: &[i64]) -> usize {
    fields.iter().copied().max().unwrap_or(0).max(0) as usize + 8
}

/// The runtime, one interpreter with a thread state per thread, and the `threading` module's
/// objects. Returns `_PyRuntime`'s address.
pub fn threading_graph(objs: &mut Objects, threads: &[PyThread], managed: bool) -> Option<u64> {
    let o = objs.o;
    let gil_end = if o.runtime_ceval_gil >= 0 { o.runtime_ceval_gil + o.gil_size } else { 0 };
    let runtime = objs.img.alloc(field_end(&[o.runtime_interpreters_head, gil_end]))?;
    let interp =
        objs.img.alloc(field_end(&[o.interp_threads_head, o.interp_next, o.interp_modules, o.interp_ceval_gil]))?;
    objs.img.put_u64(runtime, o.runtime_interpreters_head, interp);
    if o.interp_ceval_gil >= 0 {
        let gil = objs.img.alloc(o.gil_size as usize)?;
        objs.img.put_u64(interp, o.interp_ceval_gil, gil);
    }

    let managed = managed && o.type_flag_managed_dict > 0;
    let (flags, dictoffset) =
        if managed { ((o.type_flag_managed_dict | o.type_flag_heaptype.max(0)) as u64, -1) } else { (0, 16) };
    let thread_type = objs.type_object(flags, "Thread", dictoffset)?;
    let pre_header = (o.object_managed_dict_before.max(o.object_managed_values_before).max(0)) as usize;

    let mut tstate_head = 0u64;
    let mut active = Vec::new();
    let mut first_thread = 0;
    for t in threads.iter().take(8) {
        let name = objs.str_object(&t.name)?;
        let native_id = objs.int_object(t.native_id)?;
        let name_key = objs.ascii("_name")?;
        let id_key = objs.ascii("_native_id")?;
        let attrs = objs.dict_object(&[(name_key, name), (id_key, native_id)])?;
        let base = objs.img.alloc(pre_header + 24)?;
        let thread = base + pre_header as u64;
        objs.img.put_u64(thread, o.object_type, thread_type);
        if managed {
            objs.img.put_u64(thread - o.object_managed_dict_before as u64, 0, attrs);
        } else {
            objs.img.put_u64(thread, dictoffset, attrs);
        }
        let ident = objs.int_object(t.ident)?;
        active.push((ident, thread));
        if first_thread == 0 {
            first_thread = thread;
        }

        let tstate = objs.img.alloc(field_end(&[
            o.tstate_next,
            o.tstate_thread_id,
            o.tstate_native_thread_id,
            o.tstate_frame,
        ]))?;
        objs.img.put_u64(tstate, o.tstate_next, tstate_head);
        objs.img.put_u64(tstate, o.tstate_thread_id, t.ident as u64);
        objs.img.put_u64(tstate, o.tstate_native_thread_id, t.native_id as u64);
        tstate_head = tstate;
    }
    objs.img.put_u64(interp, o.interp_threads_head, tstate_head);

    let active = objs.dict_object(&active)?;
    let (active_key, main_key, other_key) =
        (objs.ascii("_active")?, objs.ascii("_main_thread")?, objs.ascii("_limbo")?);
    let mut globals = vec![(other_key, active), (active_key, active)];
    if first_thread != 0 {
        globals.push((main_key, first_thread));
    }
    let globals = objs.dict_object(&globals)?;
    let module_type = objs.type_object(0, "module", 0)?;
    let module = objs.img.alloc(field_end(&[o.object_type, o.module_dict]))?;
    objs.img.put_u64(module, o.object_type, module_type);
    objs.img.put_u64(module, o.module_dict, globals);
    let (sys_key, threading_key) = (objs.ascii("sys")?, objs.ascii("threading")?);
    let modules = objs.dict_object(&[(sys_key, module_type), (threading_key, module)])?;
    objs.img.put_u64(interp, o.interp_modules, modules);
    Some(runtime)
}

/// The built images are what the profiler reads from live processes: read back unharmed, they
/// give exactly what was put in. (Otherwise the fuzzers would only ever see garbage.)
#[cfg(test)]
mod tests {
    use super::*;
    use profiler::python::{code, thread_names::thread_names, thread_states};

    fn text(s: &str, kind: u8) -> Text {
        let bytes = match kind % 4 {
            2 => s.encode_utf16().flat_map(u16::to_ne_bytes).collect(),
            3 => s.chars().flat_map(|c| (c as u32).to_ne_bytes()).collect(),
            1 => s.chars().map(|c| c as u8).collect(),
            _ => s.as_bytes().to_vec(),
        };
        Text { kind, bytes }
    }

    #[test]
    fn code_objects_read_back() {
        for selector in 0..6 {
            let (version, o) = offsets(selector);
            let minor = version.minor;
            let mut objs = Objects::new(o, 1 << 16).unwrap();
            // Line 20, +1 for the first instruction, in each version's table format.
            let table: &[u8] = match minor {
                8 | 9 => &[0, 1],
                10 => &[2, 1],
                _ => &[0x80 | (13 << 3), 2],
            };
            let addr = objs.code_object(&text("función", 3), &text("/app/x.py", 0), 20, 0x80, table, 0, 4).unwrap();
            let mem = objs.img.memory();
            assert!(code::is_code(&mem, o, addr, &mut None), "3.{minor}");
            let c = code::read_code(&mem, o, addr).unwrap();
            assert_eq!(
                (c.name.as_str(), c.filename.as_str(), c.firstlineno),
                ("función", "/app/x.py", 20),
                "3.{minor}"
            );
            assert!(c.is_coroutine());
            let instr = if o.code_code_adaptive >= 0 { addr + o.code_code_adaptive as u64 } else { 0 };
            assert_eq!(c.line(version, instr, true), code::FrameLine::Line(Some(21)), "3.{minor}");
        }
    }

    #[test]
    fn thread_graphs_read_back() {
        for selector in 0..6 {
            for managed in [false, true] {
                let (version, o) = offsets(selector);
                let minor = version.minor;
                let mut objs = Objects::new(o, 1 << 16).unwrap();
                let threads = [
                    PyThread { name: text("MainThread", 0), native_id: 100, ident: 7 },
                    PyThread { name: text("wörker", 1), native_id: 101, ident: 8 },
                    PyThread { name: text("线程", 2), native_id: 1 << 31, ident: -9 },
                ];
                let runtime = threading_graph(&mut objs, &threads, managed).unwrap();
                let mem = objs.img.memory();
                let names = thread_names(&mem, o, version, runtime);
                let mut names: Vec<_> = names.into_iter().collect();
                names.sort();
                let want =
                    vec![(100, "MainThread".to_string()), (101, "wörker".to_string()), (1 << 31, "线程".to_string())];
                assert_eq!(names, want, "3.{minor} managed={managed}");
                let key = if o.tstate_native_thread_id >= 0 { o.tstate_native_thread_id } else { o.tstate_thread_id };
                assert_eq!(thread_states(&mem, o, runtime, key as u64).len(), 3, "3.{minor}");
            }
        }
    }
}
