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

use super::offsets_generated::TABLE;

/// Struct member offsets for one CPython minor version (64-bit builds with the
/// GIL; the free-threaded 3.13t layout is different and not covered).
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
    /// (3.13, which may be `None` rather than a code object on the C-stack entry
    /// frame: check the type before reading it as `PyCodeObject`).
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
    /// Value of `FRAME_OWNED_BY_CSTACK` (3.12+): a shim frame the eval loop
    /// pushes when entered from C. It is not Python code and should be skipped
    /// (3.12 gives it a trampoline code object, 3.13 `None`).
    pub frame_owned_by_cstack: i64,
    /// Value of `FRAME_OWNED_BY_GENERATOR` (3.11+): generator/coroutine frames
    /// live inside the generator object and are never "incomplete".
    pub frame_owned_by_generator: i64,

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
}

/// The offsets for CPython `major.minor`, if the table covers it.
pub fn for_version(major: u8, minor: u8) -> Option<&'static PyOffsets> {
    TABLE
        .iter()
        .find(|(version, _)| *version == (major, minor))
        .map(|(_, offsets)| offsets)
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
        assert!(for_version(2, 7).is_none());
        for (version, offsets) in TABLE {
            assert_eq!(for_version(version.0, version.1), Some(offsets));
        }
    }

    /// The reader picks its walking strategy from which fields are present;
    /// make sure each generation of the layout has exactly the ones it needs.
    #[test]
    fn fields_present_match_the_frame_model() {
        for ((_, minor), o) in TABLE {
            let frame_object = *minor <= 10;
            assert_eq!(o.frame_lasti >= 0, frame_object, "3.{minor}");
            assert_eq!(
                o.frame_lasti_size,
                if frame_object { 4 } else { -1 },
                "3.{minor}"
            );
            assert_eq!(o.frame_instr_ptr >= 0, !frame_object, "3.{minor}");
            assert_eq!(o.frame_owner >= 0, !frame_object, "3.{minor}");
            assert_eq!(o.code_code_adaptive >= 0, !frame_object, "3.{minor}");
            assert_eq!(
                o.cframe_current_frame >= 0,
                (11..=12).contains(minor),
                "3.{minor}"
            );
            assert_eq!(o.frame_owned_by_cstack >= 0, *minor >= 12, "3.{minor}");
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
}
