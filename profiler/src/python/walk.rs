//! A thread's Python frame chain read from userspace, record for record as the kernel unwinder
//! (`profiler-ebpf/src/python.rs`) reads it, from the same [`PyProcInfo`]: for threads the
//! kernel never sees run (blocked since before tracking began, or through the whole window)
//! and for `pyebpf dump`. The records go through the same [`super::PythonProcess::resolve`] as
//! the kernel's, so both name frames identically.
//!
//! The memory is untrusted: every read may fail (that ends the walk, frames so far kept), the
//! chain is bounded by `max_depth` and a frame seen twice ends it (a cycle).
use profiler_common::{
    PY_CODE_TAG_MASK, PY_FRAME_IS_ENTRY, PY_FRAME_READ_MAX, PY_OFFSET_NONE, PY_OWNER_ENTRY_MIN, PyFrameRecord,
    PyProcInfo, py_status,
};

use crate::host::memory::ReadMemory;

/// A field of `size` bytes (1, 4 or 8) at `off` in a frame read whole; 0 past its end, as the
/// kernel's `field`.
fn field(chunk: &[u8], off: u16, size: u16) -> u64 {
    let off = off as usize;
    let Some(bytes) = chunk.get(off..off + size as usize) else { return 0 };
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// The frames of the thread whose `PyThreadState` is at `tstate`, innermost first, and the
/// `py_status` bits the kernel would have set (`PYTHON_PROCESS | THREAD_FOUND`, plus
/// `TRUNCATED` or `READ_ERROR`).
pub fn walk(mem: &impl ReadMemory, info: &PyProcInfo, tstate: u64, max_depth: usize) -> (Vec<PyFrameRecord>, u32) {
    let mut status = py_status::PYTHON_PROCESS | py_status::THREAD_FOUND;
    let mut out = Vec::new();
    let Some(mut frame) = mem.u64(tstate.wrapping_add(info.tstate_frame as u64)) else {
        return (out, status | py_status::READ_ERROR);
    };
    if info.cframe_current_frame != PY_OFFSET_NONE && frame != 0 {
        match mem.u64(frame.wrapping_add(info.cframe_current_frame as u64)) {
            Some(f) => frame = f,
            None => return (out, status | py_status::READ_ERROR),
        }
    }
    let len = (info.frame_read_len as usize).min(PY_FRAME_READ_MAX);
    let mut chunk = vec![0u8; len];
    let mut seen = std::collections::HashSet::new();
    while frame != 0 {
        if out.len() >= max_depth {
            status |= py_status::TRUNCATED;
            break;
        }
        if !seen.insert(frame) || !mem.read(frame, &mut chunk) {
            status |= py_status::READ_ERROR;
            break;
        }
        let code = field(&chunk, info.frame_code, 8) & !PY_CODE_TAG_MASK;
        let instr = field(&chunk, info.frame_instr, info.frame_instr_size);
        let mut owner = if info.frame_owner != PY_OFFSET_NONE { field(&chunk, info.frame_owner, 1) as u32 } else { 0 };
        let instr = if owner >= PY_OWNER_ENTRY_MIN { frame } else { instr };
        if info.frame_is_entry != PY_OFFSET_NONE && field(&chunk, info.frame_is_entry, 1) != 0 {
            owner |= PY_FRAME_IS_ENTRY;
        }
        let fingerprint = if info.code_firstlineno == PY_OFFSET_NONE {
            field(&chunk, info.frame_globals, 4) as u32
        } else if code != 0 {
            let mut b = [0u8; 4];
            if mem.read(code.wrapping_add(info.code_firstlineno as u64), &mut b) { u32::from_le_bytes(b) } else { 0 }
        } else {
            0
        };
        out.push(PyFrameRecord { code, instr, fingerprint, owner });
        frame = field(&chunk, info.frame_previous, 8);
    }
    (out, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::ImageMemory;

    /// A 3.12-like layout: frames of 80 bytes, previous at 8, code at 0, instr at 56, owner at 70.
    fn info() -> PyProcInfo {
        PyProcInfo {
            runtime_addr: 0,
            runtime_interpreters_head: 0,
            interp_threads_head: 0,
            interp_next: 0,
            tstate_next: 0,
            tstate_thread_id: 0,
            tstate_native_thread_id: 0,
            tstate_frame: 16,
            cframe_current_frame: PY_OFFSET_NONE,
            frame_previous: 8,
            frame_code: 0,
            frame_instr: 56,
            frame_instr_size: 8,
            frame_owner: 70,
            code_firstlineno: 48,
            frame_read_len: 72,
            frame_is_entry: PY_OFFSET_NONE,
            frame_globals: 24,
            _pad: [0; 3],
        }
    }

    fn put(img: &mut [u8], at: usize, v: u64) {
        img[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn walks_the_chain_as_the_kernel_records_it_and_stops_on_cycles_and_bounds() {
        const BASE: u64 = 0x10000;
        let mut img = vec![0u8; 4096];
        // tstate at 0 → frame at 256 → frame at 512 → NULL; code objects at 1024 and 2048.
        put(&mut img, 16, BASE + 256);
        put(&mut img, 256, BASE + 1024 + 1); // a tagged _PyStackRef
        put(&mut img, 256 + 8, BASE + 512);
        put(&mut img, 256 + 56, 0x1234);
        put(&mut img, 512, BASE + 2048);
        put(&mut img, 512 + 56, 0x5678);
        img[512 + 70] = 4; // an entry frame owner: its own address is recorded
        put(&mut img, 1024 + 48, 7);
        put(&mut img, 2048 + 48, 9);
        let mem = ImageMemory { base: BASE, image: img.clone() };
        let (frames, status) = walk(&mem, &info(), BASE, 10);
        assert_eq!(status, py_status::PYTHON_PROCESS | py_status::THREAD_FOUND);
        assert_eq!(
            frames,
            [
                PyFrameRecord { code: BASE + 1024, instr: 0x1234, fingerprint: 7, owner: 0 },
                PyFrameRecord { code: BASE + 2048, instr: BASE + 512, fingerprint: 9, owner: 4 },
            ]
        );
        let (frames, status) = walk(&mem, &info(), BASE, 1);
        assert_eq!((frames.len(), status & py_status::TRUNCATED), (1, py_status::TRUNCATED));
        // A chain that loops back on itself ends.
        put(&mut img, 512 + 8, BASE + 256);
        let (frames, status) = walk(&ImageMemory { base: BASE, image: img }, &info(), BASE, 100);
        assert_eq!((frames.len(), status & py_status::READ_ERROR), (2, py_status::READ_ERROR));
        // An unreadable thread state.
        let (frames, status) = walk(&mem, &info(), 8, 10);
        assert!(frames.is_empty() && status & py_status::READ_ERROR != 0);
    }

    /// 3.11+ with the GIL: no read of the code object; the fingerprint is the low half of the
    /// frame's `f_globals`, so frames of two modules' code at one address differ.
    #[test]
    fn without_a_firstlineno_offset_the_fingerprint_is_the_frames_globals() {
        const BASE: u64 = 0x10000;
        let mut img = vec![0u8; 4096];
        put(&mut img, 16, BASE + 256);
        put(&mut img, 256, BASE + 1024);
        put(&mut img, 256 + 8, BASE + 512);
        put(&mut img, 256 + 24, 0x7f00_dead_b000);
        put(&mut img, 512, BASE + 1024);
        put(&mut img, 512 + 24, 0x7f00_beef_c000);
        put(&mut img, 1024 + 48, 7);
        let info = PyProcInfo { code_firstlineno: PY_OFFSET_NONE, ..info() };
        let (frames, _) = walk(&ImageMemory { base: BASE, image: img }, &info, BASE, 10);
        let prints: Vec<u32> = frames.iter().map(|f| f.fingerprint).collect();
        assert_eq!(prints, [0xdead_b000, 0xbeef_c000]);
    }
}
