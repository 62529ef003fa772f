//! Per-version layout of the CPython structures the profiler reads from outside
//! the interpreter: the BPF program walks runtime → interpreter → thread → frame
//! chain with these offsets, and userspace reads code objects and their strings
//! with `process_vm_readv`.
//!
//! Production interpreters are stripped, so nothing here comes from DWARF at run
//! time: `offsets_generated.rs` is produced by `cargo xtask gen-python-offsets`,
//! which compiles `offsetof` probes against each version's own headers. All
//! values are byte offsets unless the field says otherwise; `-1` means the field
//! does not exist in that version. Widths of the integer fields the reader loads
//! (i32 `co_firstlineno`, u64 thread ids, the u8 frame owner, ...) are fixed by
//! static asserts in the probe, so a version that changes one fails generation.
//!
//! Free-threaded builds (3.13t+, `Py_GIL_DISABLED`) have their own entries: bigger object
//! headers (`ob_tid`, split reference counts) move every object field, and from 3.14 a frame
//! may run a per-thread copy of its code's bytecode (`co_tlbc`). A process says which build it
//! is in `_Py_DebugOffsets.free_threaded`.

use super::offsets_generated::{DEBUG_TABLE, TABLE};

/// Struct member offsets for one CPython minor version and build (with the GIL, or
/// free-threaded: see `free_threaded`), 64-bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyOffsets {
    /// `_PyRuntimeState.interpreters.head`: the most recently created
    /// `PyInterpreterState*` (the main interpreter is the last in the list).
    /// Every walk starts here, from the exported `_PyRuntime` symbol.
    pub runtime_interpreters_head: i64,
    /// `PyInterpreterState.threads.head` (`tstate_head` in 3.8–3.10): first
    /// `PyThreadState*` of the interpreter.
    pub interp_threads_head: i64,
    /// `PyInterpreterState.next`: next interpreter, or NULL.
    pub interp_next: i64,

    /// `PyThreadState.next`: next thread of the same interpreter, or NULL.
    pub tstate_next: i64,
    /// `PyThreadState.interp`: owning `PyInterpreterState*`.
    pub tstate_interp: i64,
    /// `PyThreadState.thread_id`: the creating thread's `pthread_t` (u64).
    pub tstate_thread_id: i64,
    /// `PyThreadState.native_thread_id`: kernel TID (u64), 3.11+. Older versions
    /// only have the `pthread_t`, which has to be mapped to a TID another way.
    pub tstate_native_thread_id: i64,
    /// Pointer to the thread's innermost frame, whose meaning depends on the
    /// version: 3.8–3.10 `frame` (`PyFrameObject*`); 3.11–3.12 `cframe` (a
    /// `_PyCFrame*`: follow it, then `cframe_current_frame`); 3.13+
    /// `current_frame` (`_PyInterpreterFrame*`).
    pub tstate_frame: i64,
    /// `_PyCFrame.current_frame` (`_PyInterpreterFrame*`), 3.11–3.12 only.
    pub cframe_current_frame: i64,

    /// Caller's frame: `PyFrameObject.f_back` (3.8–3.10) or
    /// `_PyInterpreterFrame.previous` (3.11+).
    pub frame_previous: i64,
    /// The frame's code: `PyFrameObject.f_code` (3.8–3.10),
    /// `_PyInterpreterFrame.f_code` (3.11–3.12), `_PyInterpreterFrame.f_executable`
    /// (3.13+, which may be `None` rather than a code object on the eval loop's
    /// entry frame: check the type before reading it as `PyCodeObject`). From
    /// 3.14 a `_PyStackRef`: clear `frame_code_tag_bits` to get the pointer.
    pub frame_code: i64,
    /// `PyFrameObject.f_lasti`, 3.8–3.10: a byte offset into `co_code` in
    /// 3.8–3.9 but an instruction (2-byte code unit) index in 3.10.
    pub frame_lasti: i64,
    /// Size in bytes of `f_lasti` (an `int`), 3.8–3.10.
    pub frame_lasti_size: i64,
    /// Current instruction pointer into `co_code_adaptive`: `prev_instr` in
    /// 3.11–3.12 (the code unit *before* the next one to run), `instr_ptr` in
    /// 3.13 (the one executing or about to).
    pub frame_instr_ptr: i64,
    /// `_PyInterpreterFrame.owner` (one byte), 3.11+.
    pub frame_owner: i64,
    /// Value of `FRAME_OWNED_BY_CSTACK` (3.12+): in 3.12–3.13 the shim frame
    /// the eval loop pushes when entered from C. It is not Python code and
    /// should be skipped (3.12 gives it a trampoline code object, 3.13 `None`).
    /// 3.14 renumbers it (4) and no longer uses it for the entry frame.
    pub frame_owned_by_cstack: i64,
    /// Value of `FRAME_OWNED_BY_GENERATOR` (3.11+): generator/coroutine frames
    /// live inside the generator object and are never "incomplete".
    pub frame_owned_by_generator: i64,
    /// Value of `FRAME_OWNED_BY_INTERPRETER` (3.14+): the eval loop's entry
    /// frame (executable `None`). Every owner from this value up is not Python
    /// code (CPython's own readers test `owner >= FRAME_OWNED_BY_INTERPRETER`).
    pub frame_owned_by_interpreter: i64,
    /// Low bits of the frame's code field that are not part of the pointer
    /// (a bit mask, not an offset): 0 up to 3.13; `Py_TAG_BITS` from 3.14, whose
    /// `f_executable` is a tagged `_PyStackRef` (e.g. `Py_TAG_REFCNT` on a
    /// reference that owns no count).
    pub frame_code_tag_bits: i64,

    /// `PyCodeObject.co_code_adaptive`: start of the bytecode, inline in the
    /// code object (3.11+). `frame_instr_ptr` points into it.
    pub code_code_adaptive: i64,
    /// `PyCodeObject._co_firsttraceable` (i32 code-unit index), 3.11+. A frame
    /// (not owned by a generator) whose instruction pointer is still before
    /// `co_code_adaptive + 2 * _co_firsttraceable` is incomplete: it is being
    /// set up and its locals are not valid yet; CPython hides such frames.
    pub code_firsttraceable: i64,
    /// `PyCodeObject.co_firstlineno` (i32).
    pub code_firstlineno: i64,
    /// `PyCodeObject.co_name` (`str`).
    pub code_name: i64,
    /// `PyCodeObject.co_qualname` (`str`), 3.11+.
    pub code_qualname: i64,
    /// `PyCodeObject.co_filename` (`str`).
    pub code_filename: i64,
    /// The line-number table (`bytes`), whose encoding differs per version:
    /// `co_lnotab` in 3.8–3.9, `co_linetable` in 3.10 (its own format) and in
    /// 3.11+ (the location table).
    pub code_linetable: i64,
    /// `PyCodeObject.co_argcount` (i32).
    pub code_argcount: i64,
    /// `PyCodeObject.co_flags` (i32).
    pub code_flags: i64,
    /// `sizeof(PyCodeObject)` (without the inline bytecode in 3.11+), for
    /// reading the whole header in one go.
    pub code_size_of: i64,
    /// `ob_size` of a code object (i64, 3.11+): its bytecode's length in 2-byte code units,
    /// the length of `co_code_adaptive` and of every per-thread copy.
    pub code_units: i64,
    /// `PyCodeObject.co_tlbc` (free-threaded 3.14+): the `_PyCodeArray*` of the code's
    /// bytecode copies, one per thread index that specialized its own; entry 0 is
    /// `co_code_adaptive`. A frame's instruction pointer points into its thread's copy.
    pub code_tlbc: i64,
    /// `_PyCodeArray.size` (i64): number of entries.
    pub code_array_size: i64,
    /// `_PyCodeArray.entries`: the copies' addresses (NULL where a thread index has none).
    pub code_array_entries: i64,
    /// `_PyInterpreterFrame.tlbc_index` (i32, free-threaded 3.14+): which copy the frame runs.
    /// Not read: the copy is found by address (see `code::CodeObject::line`); kept to check
    /// against `_Py_DebugOffsets`.
    pub frame_tlbc_index: i64,
    /// 1 for a free-threaded build's layout, 0 for a GIL build's (a flag, not an offset).
    pub free_threaded: i64,

    /// `PyObject.ob_type`.
    pub object_type: i64,
    /// `PyTypeObject.tp_name` (`const char*`).
    pub type_name: i64,

    /// `PyVarObject.ob_size` of a `bytes` object: its length (i64).
    pub bytes_size: i64,
    /// `PyBytesObject.ob_sval`: the bytes, inline.
    pub bytes_data: i64,

    /// `PyASCIIObject.length`: length in code points (i64).
    pub unicode_length: i64,
    /// `PyASCIIObject.state`: the u32 word holding the bitfields below.
    pub unicode_state: i64,
    /// `sizeof(PyASCIIObject)`: where the characters of a compact ASCII string
    /// (`compact` and `ascii` set) start.
    pub unicode_ascii_data: i64,
    /// `sizeof(PyCompactUnicodeObject)`: where the characters of a compact
    /// non-ASCII string start.
    pub unicode_compact_data: i64,
    /// Bit position of `state.kind` in the state word (a bit count, not an
    /// offset). Kind is the character width in bytes: 1, 2 or 4.
    pub unicode_kind_shift: i64,
    /// Mask of `state.kind` after shifting.
    pub unicode_kind_mask: i64,
    /// Bit position of the one-bit `state.compact` flag.
    pub unicode_compact_shift: i64,
    /// Bit position of the one-bit `state.ascii` flag.
    pub unicode_ascii_shift: i64,

    // Python-level objects (thread names): sys.modules → a module's dict →
    // dict entries → instance attributes → str / int values.
    /// `sys.modules` (a dict): `PyInterpreterState.modules` in 3.8–3.11,
    /// `PyInterpreterState.imports.modules` in 3.12+.
    pub interp_modules: i64,
    /// `PyModuleObject.md_dict`: the module's `__dict__`.
    pub module_dict: i64,

    /// `PyTypeObject.tp_flags` (u64).
    pub type_flags: i64,
    /// `PyTypeObject.tp_dictoffset` (i64): where an instance keeps its `__dict__`
    /// pointer when the type has no managed dict. Positive: from the object's
    /// start; negative: from its end (variable-size objects, which the reader
    /// does not follow); 0: no `__dict__`.
    pub type_dictoffset: i64,
    /// `PyHeapTypeObject.ht_cached_keys`: the keys shared by the instances'
    /// split dicts, and (3.11+) the keys of attribute values stored without a
    /// dict. Only valid on heap types (`type_flag_heaptype`).
    pub heap_type_cached_keys: i64,
    /// Value of `Py_TPFLAGS_HEAPTYPE` (a bit mask, not an offset).
    pub type_flag_heaptype: i64,
    /// Value of `Py_TPFLAGS_LONG_SUBCLASS`: the type is `int` or a subclass.
    pub type_flag_long_subclass: i64,
    /// Value of `Py_TPFLAGS_UNICODE_SUBCLASS`: `str` or a subclass.
    pub type_flag_unicode_subclass: i64,
    /// Value of `Py_TPFLAGS_DICT_SUBCLASS`: `dict` or a subclass.
    pub type_flag_dict_subclass: i64,
    /// Value of `Py_TPFLAGS_MANAGED_DICT` (3.11+): instances keep their
    /// attributes in the pre-header fields below, not at `tp_dictoffset`.
    pub type_flag_managed_dict: i64,
    /// Value of `Py_TPFLAGS_INLINE_VALUES` (3.13+): instances carry their
    /// attribute values inline at `object_inline_values`.
    pub type_flag_inline_values: i64,

    /// Managed-dict instances (3.11+): the `__dict__` pointer (NULL until a
    /// dict is materialized) is this many bytes *before* the object's start.
    pub object_managed_dict_before: i64,
    /// Managed-dict instances: the `PyDictValues*` holding attribute values
    /// without a dict (keys: the type's `ht_cached_keys`), this many bytes
    /// before the object. 3.11: its own slot, NULL once a dict exists; 3.12:
    /// the same slot as the dict, told apart by `object_managed_values_tag`.
    pub object_managed_values_before: i64,
    /// 3.12 only: the slot shared by dict and values holds the values pointer
    /// minus this tag, so the tag bit is set (a dict pointer never has it):
    /// `if slot & tag != 0 { values = slot + tag }`.
    pub object_managed_values_tag: i64,
    /// 3.13+: offset from the object's start of its inline `PyDictValues`
    /// (types with `type_flag_inline_values`), valid while
    /// `dict_values_valid` is set; a materialized dict, if any, wins.
    pub object_inline_values: i64,

    /// `PyDictObject.ma_used`: number of items (i64).
    pub dict_used: i64,
    /// `PyDictObject.ma_keys`: the `PyDictKeysObject*`.
    pub dict_keys: i64,
    /// `PyDictObject.ma_values`: NULL for a combined table; for a split table
    /// the values, in keys-entry order (`PyObject**` up to 3.10, then a
    /// `PyDictValues*`).
    pub dict_values: i64,
    /// Offset of the values array from what `ma_values` (or a managed values
    /// pointer) points to: 0 up to 3.12, `PyDictValues.values` (8) in 3.13.
    pub dict_values_array: i64,
    /// `PyDictValues.capacity` (u8, 3.13+): length of the values array.
    pub dict_values_capacity: i64,
    /// `PyDictValues.valid` (u8, 3.13+): inline values still hold the
    /// attributes (cleared when they move into a combined dict).
    pub dict_values_valid: i64,
    /// `PyDictKeysObject.dk_size` (i64, 3.8–3.10): slots in the index table;
    /// each index is 1, 2, 4 or 8 bytes for sizes up to 0xff, 0xffff,
    /// 0xffffffff, or beyond.
    pub dict_keys_size: i64,
    /// `PyDictKeysObject.dk_log2_size` (u8, 3.11+).
    pub dict_keys_log2_size: i64,
    /// `PyDictKeysObject.dk_log2_index_bytes` (u8, 3.11+): the index table is
    /// `1 << dk_log2_index_bytes` bytes; the entries follow it.
    pub dict_keys_log2_index_bytes: i64,
    /// `PyDictKeysObject.dk_kind` (u8, 3.11+): any value other than
    /// `dict_keys_kind_general` means `PyDictUnicodeEntry` entries.
    pub dict_keys_kind: i64,
    /// Value of `DICT_KEYS_GENERAL` (3.11+): entries are `PyDictKeyEntry`.
    pub dict_keys_kind_general: i64,
    /// `PyDictKeysObject.dk_nentries` (i64): entries used so far, including
    /// deleted ones (whose key or value is NULL).
    pub dict_keys_nentries: i64,
    /// `PyDictKeysObject.dk_indices`: start of the index table.
    pub dict_keys_indices: i64,
    /// `sizeof(PyDictKeyEntry)` {hash, key, value}: the entries of 3.8–3.10
    /// dicts, and of 3.11+ dicts with general (non-str) keys.
    pub dict_entry_size: i64,
    /// `PyDictKeyEntry.me_key`.
    pub dict_entry_key: i64,
    /// `PyDictKeyEntry.me_value` (unused by split tables).
    pub dict_entry_value: i64,
    /// `sizeof(PyDictUnicodeEntry)` {key, value} (3.11+): entries of str-keyed
    /// and split dicts.
    pub dict_unicode_entry_size: i64,
    /// `PyDictUnicodeEntry.me_key` (3.11+).
    pub dict_unicode_entry_key: i64,
    /// `PyDictUnicodeEntry.me_value` (3.11+; unused by split tables).
    pub dict_unicode_entry_value: i64,

    /// `ob_size` of an `int` (i64, 3.8–3.11): the digit count, negated for a
    /// negative number.
    pub long_size: i64,
    /// `PyLongObject.long_value.lv_tag` (u64, 3.12+): digit count shifted
    /// left by `long_tag_size_shift`, sign in the low bits.
    pub long_tag: i64,
    /// `_PyLong_SIGN_MASK` (3.12+): `1 - (lv_tag & mask)` is the sign (1, 0, -1).
    pub long_tag_sign_mask: i64,
    /// `_PyLong_NON_SIZE_BITS` (3.12+): `lv_tag >> shift` is the digit count.
    pub long_tag_size_shift: i64,
    /// The digits (u32 each, least significant first).
    pub long_digits: i64,
    /// `PyLong_SHIFT`: value bits per digit (a bit count).
    pub long_digit_bits: i64,

    // The GIL (`struct _gil_runtime_state`), for telling a thread blocked in
    // futex() on an address in [gil, gil + gil_size) to be waiting for the
    // GIL: waiters sleep on its `cond`/`mutex`, and a thread handing the GIL
    // over on its `switch_cond`/`switch_mutex`, all inside the struct.
    /// `_PyRuntimeState.ceval.gil`, 3.8–3.11: the one GIL, embedded in
    /// `_PyRuntime` (so the GIL is at `&_PyRuntime + runtime_ceval_gil`).
    pub runtime_ceval_gil: i64,
    /// `PyInterpreterState.ceval.gil`, 3.12+: a *pointer* to the GIL the
    /// interpreter uses, normally its own embedded `_gil` (the main
    /// interpreter's always is); a subinterpreter sharing the main GIL points
    /// at the main interpreter's.
    pub interp_ceval_gil: i64,
    /// `sizeof(struct _gil_runtime_state)`.
    pub gil_size: i64,
    /// `_gil_runtime_state.locked` (i32): 1 while some thread holds the GIL,
    /// 0 when free, -1 before it is created.
    pub gil_locked: i64,
    /// `_gil_runtime_state.last_holder`: the `PyThreadState*` holding or last
    /// to have held the GIL (not cleared on release).
    pub gil_last_holder: i64,
}

/// Every layout the profiler has: ((major, minor, free-threaded), offsets).
pub fn table() -> &'static [((u8, u8, bool), PyOffsets)] {
    TABLE
}

/// The offsets for CPython `major.minor` (its free-threaded build's with `free_threaded`), if
/// the table covers it.
pub fn for_version(major: u8, minor: u8, free_threaded: bool) -> Option<&'static PyOffsets> {
    TABLE.iter().find(|(version, _)| *version == (major, minor, free_threaded)).map(|(_, offsets)| offsets)
}

/// Where a 3.13+ process's `_Py_DebugOffsets` (the start of its `_PyRuntime`)
/// holds one `PyOffsets` field: the `u64` member at `at`, minus the one at
/// `base` when `base >= 0` (the GIL's members are given from the interpreter
/// state there, from the GIL itself in the table).
#[derive(Clone, Copy)]
pub struct DebugField {
    pub name: &'static str,
    pub at: u16,
    pub base: i32,
    pub field: fn(&mut PyOffsets) -> &mut i64,
}

/// `_Py_DebugOffsets` of one minor version, as its headers lay it out.
pub struct DebugLayout {
    /// `sizeof(_Py_DebugOffsets)`.
    pub size: u16,
    pub fields: &'static [DebugField],
}

/// `_Py_DebugOffsets` starts with this cookie, then the version and the free-threaded flag.
const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// The debug-offsets layout of `major.minor` (3.13+), of its free-threaded build with
/// `free_threaded`.
pub fn debug_layout(major: u8, minor: u8, free_threaded: bool) -> Option<&'static DebugLayout> {
    DEBUG_TABLE.iter().find(|(version, _)| *version == (major, minor, free_threaded)).map(|(_, layout)| layout)
}

/// The layout of one process, after checking the table against what the process says of itself.
#[derive(Debug, Clone)]
pub struct ProcessLayout {
    pub offsets: PyOffsets,
    /// `PY_VERSION_HEX` from `_Py_DebugOffsets` (3.13+).
    pub version_hex: Option<u32>,
    /// Fields compared with the process's `_Py_DebugOffsets`.
    pub checked: usize,
    /// (field, table value, process value) where they differ: the process's value is used.
    pub corrected: Vec<(&'static str, i64, i64)>,
}

/// Offsets no real layout has: beyond them a value from `_Py_DebugOffsets` is garbage (the
/// kernel takes offsets as u16, and reads a frame's fields, up to 8 bytes wide, from its first
/// `PY_FRAME_READ_MAX` bytes).
const MAX_OFFSET: i64 = 1 << 15;
const MAX_FRAME_FIELD: i64 = profiler_common::PY_FRAME_READ_MAX as i64 - 8;

/// The offsets for a process of CPython `major.minor`, a free-threaded build if
/// `free_threaded`. From 3.13 `debug` must be the start of the process's `_PyRuntime` (at least
/// [`DebugLayout::size`] bytes): its `_Py_DebugOffsets` must carry the cookie, the same minor
/// version and the same build (`free_threaded`), and every field it also gives is compared
/// with the table. A field that differs is taken from the process (it describes the build that
/// runs; the headers the table came from may be another patch release's) unless so many
/// differ that the struct itself is not laid out as expected.
pub fn for_process(major: u8, minor: u8, free_threaded: bool, debug: Option<&[u8]>) -> Result<ProcessLayout, String> {
    let table = for_version(major, minor, free_threaded).ok_or_else(|| {
        if free_threaded { "no layout for this free-threaded version" } else { "no layout for this version" }.to_owned()
    })?;
    // The kernel clears a fixed set of low bits from code pointers (see PY_CODE_TAG_MASK).
    if table.frame_code_tag_bits as u64 & !profiler_common::PY_CODE_TAG_MASK != 0 {
        return Err(format!("code pointer tag bits 0x{:x} not cleared by the unwinder", table.frame_code_tag_bits));
    }
    let mut layout = ProcessLayout { offsets: *table, version_hex: None, checked: 0, corrected: Vec::new() };
    let Some(debug_layout) = debug_layout(major, minor, free_threaded) else {
        return Ok(layout);
    };
    let debug = debug.ok_or_else(|| "_Py_DebugOffsets could not be read".to_owned())?;
    let word = |at: usize| debug.get(at..at + 8).map(|b| u64::from_ne_bytes(b.try_into().unwrap()));
    if debug.len() < debug_layout.size as usize || debug.get(..8) != Some(DEBUG_COOKIE.as_slice()) {
        return Err("_PyRuntime does not start with the _Py_DebugOffsets cookie".into());
    }
    let version = word(8).unwrap_or(0);
    if (version >> 24, (version >> 16) & 0xff) != (u64::from(major), u64::from(minor)) {
        return Err(format!("_Py_DebugOffsets gives version 0x{version:x}"));
    }
    layout.version_hex = Some(version as u32);
    if word(16) != Some(u64::from(free_threaded)) {
        return Err(format!("_Py_DebugOffsets.free_threaded is {:?}, not {}", word(16), u64::from(free_threaded)));
    }
    let mut values = Vec::new();
    for f in debug_layout.fields {
        let at = word(f.at as usize).ok_or_else(|| format!("_Py_DebugOffsets too short for {}", f.name))?;
        let base = if f.base >= 0 { word(f.base as usize).unwrap_or(u64::MAX) } else { 0 };
        let value = at.wrapping_sub(base) as i64;
        let frame_field = f.name.starts_with("frame_");
        if !(0..MAX_OFFSET).contains(&value) || (frame_field && value > MAX_FRAME_FIELD) {
            return Err(format!("_Py_DebugOffsets gives {} = {value}, which no layout has", f.name));
        }
        values.push((f, value));
    }
    let differing = values.iter().filter(|(f, value)| *(f.field)(&mut layout.offsets) != *value).count();
    if differing * 2 > values.len() {
        return Err(format!(
            "{differing} of {} fields of _Py_DebugOffsets disagree with the 3.{minor} layout",
            values.len()
        ));
    }
    for (f, value) in values {
        let slot = (f.field)(&mut layout.offsets);
        if *slot != value {
            layout.corrected.push((f.name, *slot, value));
            *slot = value;
        }
        layout.checked += 1;
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_unique_and_sorted() {
        let versions: Vec<_> = TABLE.iter().map(|(v, _)| *v).collect();
        let mut sorted = versions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(versions, sorted);
    }

    #[test]
    fn lookup() {
        assert!(for_version(2, 7, false).is_none());
        assert!(for_version(3, 12, true).is_none(), "no free-threaded build before 3.13");
        for (version, offsets) in TABLE {
            assert_eq!(for_version(version.0, version.1, version.2), Some(offsets));
            assert_eq!(offsets.free_threaded, i64::from(version.2));
        }
    }

    /// The reader picks its walking strategy from which fields are present;
    /// make sure each generation of the layout has exactly the ones it needs.
    #[test]
    fn fields_present_match_the_frame_model() {
        for ((_, minor, free_threaded), o) in TABLE {
            let frame_object = *minor <= 10;
            assert_eq!(o.frame_lasti >= 0, frame_object, "3.{minor}");
            assert_eq!(o.frame_lasti_size, if frame_object { 4 } else { -1 }, "3.{minor}");
            assert_eq!(o.frame_instr_ptr >= 0, !frame_object, "3.{minor}");
            assert_eq!(o.frame_owner >= 0, !frame_object, "3.{minor}");
            assert_eq!(o.code_code_adaptive >= 0, !frame_object, "3.{minor}");
            assert_eq!(o.cframe_current_frame >= 0, (11..=12).contains(minor), "3.{minor}");
            // 3.15 has no FRAME_OWNED_BY_CSTACK.
            assert_eq!(o.frame_owned_by_cstack >= 0, (12..=14).contains(minor), "3.{minor}");
            // 3.14: f_executable is a tagged stack reference, and every owner from
            // FRAME_OWNED_BY_INTERPRETER up (the entry frame, C-stack shims) is not code.
            assert_eq!(o.frame_owned_by_interpreter >= 0, *minor >= 14, "3.{minor}");
            assert_eq!(o.frame_code_tag_bits > 0, *minor >= 14, "3.{minor}");
            assert!((0..8).contains(&o.frame_code_tag_bits), "3.{minor}: objects are 8-byte aligned");
            if o.frame_owned_by_interpreter >= 0 {
                assert!(o.frame_owned_by_generator < o.frame_owned_by_interpreter, "3.{minor}");
                assert!(
                    o.frame_owned_by_cstack < 0 || o.frame_owned_by_cstack >= o.frame_owned_by_interpreter,
                    "3.{minor}"
                );
            }
            // Bytecode length from 3.11; per-thread bytecode copies in free-threaded 3.14+.
            assert_eq!(o.code_units >= 0, !frame_object, "3.{minor}");
            let tlbc = *free_threaded && *minor >= 14;
            for field in [o.code_tlbc, o.code_array_size, o.code_array_entries, o.frame_tlbc_index] {
                assert_eq!(field >= 0, tlbc, "3.{minor} free-threaded {free_threaded}");
            }
            assert!(!*free_threaded || *minor >= 13, "3.{minor}t");
            assert_eq!(o.tstate_native_thread_id >= 0, *minor >= 11, "3.{minor}");
            for required in [
                o.runtime_interpreters_head,
                o.interp_threads_head,
                o.interp_next,
                o.tstate_next,
                o.tstate_frame,
                o.frame_previous,
                o.frame_code,
                o.code_name,
                o.code_filename,
                o.code_firstlineno,
                o.object_type,
                o.type_name,
                o.unicode_length,
                o.unicode_state,
                o.unicode_ascii_data,
                o.unicode_compact_data,
                o.unicode_kind_shift,
            ] {
                assert!(required >= 0, "3.{minor}: {o:?}");
            }
        }
    }

    /// Same for the object model the thread-name reader relies on: which dict
    /// keys layout, where instance attributes live, and how ints are encoded.
    #[test]
    fn fields_present_match_the_object_model() {
        for ((_, minor, _), o) in TABLE {
            let minor = *minor;
            let log2_keys = minor >= 11;
            assert_eq!(o.dict_keys_size >= 0, !log2_keys, "3.{minor}");
            for field in
                [o.dict_keys_log2_size, o.dict_keys_log2_index_bytes, o.dict_keys_kind, o.dict_keys_kind_general]
            {
                assert_eq!(field >= 0, log2_keys, "3.{minor}");
            }
            assert_eq!(o.dict_unicode_entry_size >= 0, log2_keys, "3.{minor}");
            assert_eq!(o.type_flag_managed_dict >= 0, minor >= 11, "3.{minor}");
            assert_eq!(o.object_managed_dict_before > 0, minor >= 11, "3.{minor}");
            assert_eq!(o.object_managed_values_before > 0, (11..=12).contains(&minor), "3.{minor}");
            assert_eq!(o.object_managed_values_tag > 0, minor == 12, "3.{minor}");
            let inline = minor >= 13;
            assert_eq!(o.type_flag_inline_values >= 0, inline, "3.{minor}");
            assert_eq!(o.object_inline_values >= 0, inline, "3.{minor}");
            assert_eq!(o.dict_values_valid >= 0, inline, "3.{minor}");
            assert_eq!(o.dict_values_capacity >= 0, inline, "3.{minor}");
            assert_eq!(o.long_size >= 0, minor <= 11, "3.{minor}");
            assert_eq!(o.long_tag >= 0, minor >= 12, "3.{minor}");
            assert_eq!(o.long_tag_sign_mask >= 0, minor >= 12, "3.{minor}");
            assert_eq!(o.long_tag_size_shift >= 0, minor >= 12, "3.{minor}");
            for required in [
                o.interp_modules,
                o.module_dict,
                o.type_flags,
                o.type_dictoffset,
                o.heap_type_cached_keys,
                o.type_flag_heaptype,
                o.type_flag_long_subclass,
                o.type_flag_unicode_subclass,
                o.type_flag_dict_subclass,
                o.dict_used,
                o.dict_keys,
                o.dict_values,
                o.dict_values_array,
                o.dict_keys_nentries,
                o.dict_keys_indices,
                o.dict_entry_size,
                o.dict_entry_key,
                o.dict_entry_value,
                o.long_digits,
                o.long_digit_bits,
            ] {
                assert!(required >= 0, "3.{minor}: {o:?}");
            }
        }
    }

    /// A process's `_Py_DebugOffsets` that says exactly what the table says, laid out as the
    /// version's headers lay it out.
    fn debug_bytes(minor: u8, free_threaded: bool) -> Vec<u8> {
        let o = for_version(3, minor, free_threaded).unwrap();
        let layout = debug_layout(3, minor, free_threaded).unwrap();
        let mut bytes = vec![0u8; layout.size as usize];
        let mut put = |at: usize, v: u64| bytes[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        put(0, u64::from_ne_bytes(*DEBUG_COOKIE));
        put(8, 3 << 24 | u64::from(minor) << 16 | 0x0af0);
        put(16, u64::from(free_threaded));
        let base = 4096;
        for f in layout.fields {
            let value = *(f.field)(&mut o.clone()) as u64;
            if f.base >= 0 {
                put(f.base as usize, base);
                put(f.at as usize, base + value);
            } else {
                put(f.at as usize, value);
            }
        }
        bytes
    }

    #[test]
    fn debug_offsets_cover_3_13_on() {
        for ((major, minor, free_threaded), _) in TABLE {
            let layout = debug_layout(*major, *minor, *free_threaded);
            assert_eq!(layout.is_some(), *minor >= 13, "3.{minor}");
            if let Some(layout) = layout {
                // The thread and frame walk are all cross-checked.
                for name in
                    ["runtime_interpreters_head", "tstate_frame", "frame_code", "frame_owner", "code_firstlineno"]
                {
                    assert!(layout.fields.iter().any(|f| f.name == name), "3.{minor}: {name}");
                }
                for f in layout.fields {
                    assert!(f.at as usize + 8 <= layout.size as usize && f.base < i32::from(layout.size));
                }
            }
        }
    }

    #[test]
    fn process_layout_from_debug_offsets() {
        let with_debug_offsets = TABLE.iter().filter(|((_, minor, _), _)| *minor >= 13).map(|(v, _)| (v.1, v.2));
        for (minor, ft) in with_debug_offsets {
            let table = for_version(3, minor, ft).unwrap();
            let good = debug_bytes(minor, ft);
            let layout = for_process(3, minor, ft, Some(&good)).unwrap();
            assert_eq!(&layout.offsets, table, "3.{minor}");
            assert_eq!(layout.checked, debug_layout(3, minor, ft).unwrap().fields.len());
            assert!(layout.corrected.is_empty());
            assert_eq!(layout.version_hex, Some(3 << 24 | u32::from(minor) << 16 | 0x0af0));

            // A patch release that moved a field: the process's value wins.
            let mut moved = good.clone();
            let f = debug_layout(3, minor, ft)
                .unwrap()
                .fields
                .iter()
                .find(|f| f.name == "tstate_native_thread_id")
                .unwrap();
            let at = f.at as usize;
            moved[at..at + 8].copy_from_slice(&(table.tstate_native_thread_id as u64 + 8).to_ne_bytes());
            let layout = for_process(3, minor, ft, Some(&moved)).unwrap();
            assert_eq!(layout.offsets.tstate_native_thread_id, table.tstate_native_thread_id + 8);
            assert_eq!(
                layout.corrected,
                [("tstate_native_thread_id", table.tstate_native_thread_id, table.tstate_native_thread_id + 8)]
            );

            // Refused: no debug offsets, wrong cookie, another version, the other build, a
            // struct laid out otherwise, values no layout has, too short.
            assert!(for_process(3, minor, ft, None).is_err());
            let mut bad = good.clone();
            bad[0] = b'y';
            assert!(for_process(3, minor, ft, Some(&bad)).unwrap_err().contains("cookie"));
            let mut other = good.clone();
            other[8..16].copy_from_slice(&(3u64 << 24 | 12 << 16).to_ne_bytes());
            assert!(for_process(3, minor, ft, Some(&other)).unwrap_err().contains("version"));
            let mut other_build = good.clone();
            other_build[16] = u8::from(!ft);
            assert!(for_process(3, minor, ft, Some(&other_build)).unwrap_err().contains("free_threaded"));
            let mut shifted = vec![0u8; good.len()];
            shifted[..24].copy_from_slice(&good[..24]);
            shifted[32..].copy_from_slice(&good[24..good.len() - 8]);
            assert!(for_process(3, minor, ft, Some(&shifted)).is_err(), "3.{minor}: shifted struct accepted");
            let mut huge = good.clone();
            let owner = debug_layout(3, minor, ft).unwrap().fields.iter().find(|f| f.name == "frame_owner").unwrap();
            huge[owner.at as usize..owner.at as usize + 8].copy_from_slice(&200u64.to_ne_bytes());
            assert!(for_process(3, minor, ft, Some(&huge)).unwrap_err().contains("frame_owner"));
            assert!(for_process(3, minor, ft, Some(&good[..good.len() - 8])).is_err());
        }
        // Before 3.13 there is nothing to compare with.
        let layout = for_process(3, 12, false, None).unwrap();
        assert_eq!((layout.checked, layout.version_hex), (0, None));
        assert_eq!(for_process(3, 99, false, None).unwrap_err(), "no layout for this version");
        assert_eq!(for_process(3, 12, true, None).unwrap_err(), "no layout for this free-threaded version");
    }

    /// The GIL is embedded in `_PyRuntime` up to 3.11 and reached through a
    /// per-interpreter pointer from 3.12: exactly one of the two is present.
    #[test]
    fn fields_present_match_the_gil_model() {
        for ((_, minor, _), o) in TABLE {
            let per_interpreter = *minor >= 12;
            assert_eq!(o.runtime_ceval_gil >= 0, !per_interpreter, "3.{minor}");
            assert_eq!(o.interp_ceval_gil >= 0, per_interpreter, "3.{minor}");
            assert!(o.gil_size > 0, "3.{minor}: {o:?}");
            // (offset, width read): i32 `locked`, pointer `last_holder`.
            for (member, width) in [(o.gil_locked, 4), (o.gil_last_holder, 8)] {
                assert!(member >= 0 && member + width <= o.gil_size, "3.{minor}: {o:?}");
            }
        }
    }
}
