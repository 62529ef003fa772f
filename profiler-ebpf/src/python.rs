//! The CPython unwinder: finds the current thread's `PyThreadState` and walks its frame chain
//! in user memory, recording per frame the code object, the instruction and a fingerprint.
//! Everything version-specific comes from the `PyProcInfo` userspace wrote for the process;
//! names and line numbers are worked out in userspace.
//!
//! Bounded everywhere: interpreters, threads scanned and frames walked all have fixed caps, and
//! any failed read of user memory ends the walk (a corrupt or cyclic chain cannot loop).
use aya_ebpf::helpers::{
    bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf,
    generated::bpf_get_current_task,
};
use profiler_common::{
    EventKind, MAX_PY_FRAMES, PY_CODE_TAG_MASK, PY_FRAME_IS_ENTRY, PY_FRAME_READ_MAX, PY_OFFSET_NONE,
    PY_OWNER_ENTRY_MIN, PyFrameRecord, PyProcInfo, ThreadMissEvent, TstateEntry, py_status, stat,
};

use crate::maps::{EVENTS, PY_WINDOWS, TSTATE_CACHE, bump, fsbase_offset, py_max_depth};

/// Sub-interpreters walked at most (the main interpreter is the last in the list).
const MAX_INTERPRETERS: u32 = 2;
/// Threads looked at per interpreter when searching a thread's state. Kept small: the verifier
/// walks every iteration. A thread not found within it is reported to userspace (a
/// `ThreadMiss` event), which searches the whole list and fills `TSTATE_CACHE`.
const MAX_THREADS: u32 = 48;
/// A thread with no `PyThreadState` (a native thread, or one not yet registered) is looked up
/// again after this long, so threads that start running Python later are found.
const NEGATIVE_TTL_NS: u64 = 50_000_000;

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn read_u32(addr: u64) -> Option<u32> {
    unsafe { bpf_probe_read_user(addr as *const u32) }.ok()
}

/// Bytes of a frame read at once (every field the walk needs lies within them).
const FRAME_BYTES: usize = PY_FRAME_READ_MAX;

/// Bytes of a 3.11+ thread's frame memory read at once. Those frames (`_PyInterpreterFrame`)
/// are pushed on the thread's data stack, each right above its caller's locals, so one read
/// of the memory below a frame usually holds its next callers too (a small function's frame
/// with its locals is ~100-200 bytes): one `bpf_probe_read_user` per ~5-8 frames instead of
/// one per frame. The read, not its length, is the cost (~100 ns a call).
const WINDOW_BYTES: usize = 1024;
const WINDOW_WORDS: usize = WINDOW_BYTES / 8;
/// A window never reaches below the page of the frame it was read for: that page is mapped
/// (the frame is in it), the one below may not be (the start of a data-stack chunk), and a
/// failed read would end the walk.
const PAGE_MASK: u64 = !4095;

/// A copy of `[lo, hi)` of the walked thread's memory: `words[0]` holds the word at `lo`.
/// `lo` and `hi` are kept here, not in registers, and loaded again for each frame: the
/// verifier then knows nothing of them, and the states it walks after a window read (where
/// it learned bounds on them) and after a frame found in the window are the same. Kept in
/// registers, they doubled its states per frame and the `sys_exit` program went over the
/// 1M-instruction limit.
#[repr(C)]
pub struct FrameWindow {
    lo: u64,
    hi: u64,
    words: [u64; WINDOW_WORDS],
}

/// A little-endian field of `size` bytes (1, 4 or 8) at byte offset `off` of the frame that
/// starts at word `frame_word` of the window. Fields never straddle words: they are naturally
/// aligned in CPython's structs, and frames are 8-byte aligned.
#[inline(always)]
fn field(window: &FrameWindow, frame_word: usize, off: u16, size: u16) -> u64 {
    let word = frame_word + (off >> 3) as usize;
    if word >= WINDOW_WORDS {
        return 0;
    }
    let value = window.words[word] >> ((off & 7) * 8);
    match size {
        1 => value & 0xff,
        4 => value & 0xffff_ffff,
        _ => value,
    }
}

#[inline(always)]
fn at(base: u64, off: u16) -> u64 {
    base.wrapping_add(off as u64)
}

/// What identifies the current thread in a `PyThreadState`, and at which offset: the kernel
/// tid in `native_thread_id` (3.11+), else the `pthread_t` in `thread_id`, which on x86-64 is
/// the thread's fs base.
#[inline(always)]
fn thread_key(info: &PyProcInfo, tid: u32) -> Option<(u16, u64)> {
    if info.tstate_native_thread_id != PY_OFFSET_NONE {
        return Some((info.tstate_native_thread_id, tid as u64));
    }
    let off = fsbase_offset();
    if off == 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    let fsbase = unsafe { bpf_probe_read_kernel((task + off as u64) as *const u64) }.ok()?;
    Some((info.tstate_thread_id, fsbase))
}

/// The current thread's `PyThreadState`, from the cache or by scanning the thread lists.
#[inline(always)]
fn find_tstate(info: &PyProcInfo, tgid: u32, tid: u32) -> Option<u64> {
    let (id_off, want) = thread_key(info, tid)?;
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = unsafe { TSTATE_CACHE.get(&tid) } {
        if entry.tstate != 0 {
            // Still this thread's? (the state may have been freed and its memory reused)
            if read_u64(at(entry.tstate, id_off)) == Some(want) {
                return Some(entry.tstate);
            }
        } else if now.wrapping_sub(entry.checked_ns) < NEGATIVE_TTL_NS {
            return None;
        }
    }
    bump(stat::PY_THREAD_SCANS);
    let mut found = 0u64;
    let mut interp = read_u64(at(info.runtime_addr, info.runtime_interpreters_head)).unwrap_or(0);
    for _ in 0..MAX_INTERPRETERS {
        if interp == 0 {
            break;
        }
        let mut tstate = read_u64(at(interp, info.interp_threads_head)).unwrap_or(0);
        for _ in 0..MAX_THREADS {
            if tstate == 0 {
                break;
            }
            if read_u64(at(tstate, id_off)) == Some(want) {
                found = tstate;
                break;
            }
            tstate = read_u64(at(tstate, info.tstate_next)).unwrap_or(0);
        }
        if found != 0 {
            break;
        }
        interp = read_u64(at(interp, info.interp_next)).unwrap_or(0);
    }
    let _ = TSTATE_CACHE.insert(&tid, &TstateEntry { tstate: found, checked_ns: now }, 0);
    if found == 0 {
        // At most once per negative-entry lifetime per thread.
        let miss = ThreadMissEvent {
            kind: EventKind::ThreadMiss as u32,
            pid: tgid,
            tid,
            key_offset: id_off as u32,
            key: want,
        };
        let _ = EVENTS.output::<ThreadMissEvent>(&miss, 0);
        return None;
    }
    Some(found)
}

/// Walks the current thread's Python frames into `out` (innermost first). Returns the
/// `py_status` bits and sets `*len`. `slot` is the caller's [`profiler_common::scratch_slot`]
/// (programs that may interrupt each other on a CPU use different windows).
#[inline(always)]
pub fn unwind(
    info: &PyProcInfo,
    tgid: u32,
    tid: u32,
    slot: u32,
    out: &mut [PyFrameRecord; MAX_PY_FRAMES],
    len: &mut u32,
) -> u32 {
    let mut status = py_status::PYTHON_PROCESS;
    *len = 0;
    let Some(tstate) = find_tstate(info, tgid, tid) else {
        return status;
    };
    status |= py_status::THREAD_FOUND;
    let Some(mut frame) = read_u64(at(tstate, info.tstate_frame)) else {
        return status | py_status::READ_ERROR;
    };
    if info.cframe_current_frame != PY_OFFSET_NONE && frame != 0 {
        match read_u64(at(frame, info.cframe_current_frame)) {
            Some(f) => frame = f,
            None => return status | py_status::READ_ERROR,
        }
    }
    let depth = py_max_depth();
    let read_len = (info.frame_read_len as usize).min(FRAME_BYTES);
    // Frames before 3.11 (`PyFrameObject`s, allocated one by one) are not next to their
    // callers: each is read alone. (`owner` came with the data-stack frames.)
    let below = if info.frame_owner != PY_OFFSET_NONE { WINDOW_BYTES as u64 } else { 0 };
    let Some(window) = PY_WINDOWS.get_ptr_mut(slot) else { return status };
    let window = unsafe { &mut *window };
    // Empty at first.
    window.lo = 0;
    window.hi = 0;
    let mut n = 0u32;
    #[allow(
        clippy::needless_range_loop,
        reason = "a counted loop with a constant bound is what the verifier sees through; `i` is also the depth"
    )]
    for i in 0..MAX_PY_FRAMES {
        if frame == 0 {
            break;
        }
        if i as u32 >= depth {
            status |= py_status::TRUNCATED;
            break;
        }
        if frame & 7 != 0 {
            // Not a frame: CPython's are 8-byte aligned.
            status |= py_status::READ_ERROR;
            break;
        }
        let end = frame.wrapping_add(read_len as u64);
        let (lo, hi) = unsafe { (core::ptr::read_volatile(&window.lo), core::ptr::read_volatile(&window.hi)) };
        if frame < lo || end > hi || end < frame {
            // One read for all the frame's fields, and on 3.11+ for the memory below it, where
            // its callers' frames usually are: the reads, not the arithmetic, are the cost.
            let start = end.saturating_sub(below).max(frame & PAGE_MASK).min(frame);
            // The length is loaded and bounded here, next to the call: 5.10's verifier does not
            // carry a bound learned after a register was spilled to the stack back to the
            // spilled copy ("invalid indirect access to stack ... size=65535" on Debian 11's
            // kernel when LLVM spilled a length bounded before the loop).
            let len = unsafe { core::ptr::read_volatile(&end) }.wrapping_sub(start) as usize;
            if len == 0 || len > WINDOW_BYTES {
                status |= py_status::READ_ERROR;
                break;
            }
            let bytes = unsafe { core::slice::from_raw_parts_mut(window.words.as_mut_ptr().cast::<u8>(), len) };
            if unsafe { bpf_probe_read_user_buf(start as *const u8, bytes) }.is_err() {
                status |= py_status::READ_ERROR;
                break;
            }
            window.lo = start;
            window.hi = end;
        }
        let at_word = (frame.wrapping_sub(unsafe { core::ptr::read_volatile(&window.lo) }) >> 3) as usize;
        // 3.14's f_executable is a tagged _PyStackRef. Code objects are 8-byte aligned in every
        // version, so clearing the low bits is a no-op before 3.14. (A constant: a per-process
        // mask from PyProcInfo cost the verifier ~10K more instructions per program.)
        let code = field(window, at_word, info.frame_code, 8) & !PY_CODE_TAG_MASK;
        let instr = field(window, at_word, info.frame_instr, info.frame_instr_size);
        let mut owner =
            if info.frame_owner != PY_OFFSET_NONE { field(window, at_word, info.frame_owner, 1) as u32 } else { 0 };
        // An entry frame (3.12+) runs no code: its own address is what ties it to the C frame
        // of the eval call it belongs to, in mixed stacks.
        let instr = if owner >= PY_OWNER_ENTRY_MIN { frame } else { instr };
        if info.frame_is_entry != PY_OFFSET_NONE && field(window, at_word, info.frame_is_entry, 1) != 0 {
            owner |= PY_FRAME_IS_ENTRY;
        }
        // The fingerprint tells a code object from another later allocated at the same address.
        // Where userspace gives no `co_firstlineno` offset (3.11+ with the GIL) it is the
        // frame's `f_globals`, already read: the code object's read was one
        // user-memory read per frame, about half of the walk's cost.
        let fingerprint = if info.code_firstlineno != PY_OFFSET_NONE {
            if code != 0 { read_u32(at(code, info.code_firstlineno)).unwrap_or(0) } else { 0 }
        } else {
            field(window, at_word, info.frame_globals, 4) as u32
        };
        out[i] = PyFrameRecord { code, instr, fingerprint, owner };
        n = i as u32 + 1;
        frame = field(window, at_word, info.frame_previous, 8);
    }
    // Frames left beyond the bound (the loop ends at MAX_PY_FRAMES without the check firing
    // when the bound is MAX_PY_FRAMES itself).
    if frame != 0 && n >= depth {
        status |= py_status::TRUNCATED;
    }
    *len = n;
    status
}
