//! CPython support in userspace: finding Python processes, handing the kernel their layout,
//! and turning the frames the kernel recorded into names, files and lines.
pub mod asyncio;
pub mod code;
pub mod discover;
pub mod event_loop;
pub mod linetable;
mod name_refresh;
pub mod offsets;
mod offsets_generated;
pub mod thread_names;
pub mod walk;

use std::{
    collections::{HashMap, hash_map::Entry},
    fmt,
    time::{Duration, Instant},
};

use profiler_common::{PY_OFFSET_NONE, PyFrameRecord, PyProcInfo};

use self::{
    code::{CodeObject, FrameLine},
    discover::{Inspection, Inspector, Interpreter},
    name_refresh::NameRefresh,
    offsets::PyOffsets,
};
use crate::host::memory::{Memory, ReadMemory};

#[cfg(test)]
mod tests {
    #[test]
    fn shim_frames_are_hidden_by_owner() {
        let owners = |minor| {
            let o = super::offsets::for_version(3, minor, false).unwrap();
            (0..=5).filter(|&owner| super::is_shim_owner(o, owner)).collect::<Vec<u32>>()
        };
        assert!(owners(11).is_empty());
        // FRAME_OWNED_BY_CSTACK (3) is the entry shim of 3.12 and 3.13...
        assert_eq!(owners(12), [3]);
        assert_eq!(owners(13), [3]);
        // ... 3.14 inserts FRAME_OWNED_BY_INTERPRETER (3, the entry frame) before CSTACK (4).
        assert_eq!(owners(14), [3, 4, 5]);
        // ... and 3.15 drops CSTACK: owners are 0-3, INTERPRETER the last.
        assert_eq!(owners(15), [3, 4, 5]);
        // Free-threaded builds number their owners as their GIL builds do.
        for ((_, minor, free_threaded), o) in super::offsets_generated::TABLE {
            if *free_threaded {
                let gil = super::offsets::for_version(3, *minor, false).unwrap();
                for owner in 0..=5 {
                    assert_eq!(super::is_shim_owner(o, owner), super::is_shim_owner(gil, owner), "3.{minor}t");
                }
            }
        }
    }

    #[test]
    fn code_pointer_tags_are_cleared_by_the_kernel() {
        for ((_, minor, _), o) in super::offsets_generated::TABLE {
            let tags = o.frame_code_tag_bits as u64;
            assert_eq!(tags & !profiler_common::PY_CODE_TAG_MASK, 0, "3.{minor}");
        }
    }

    #[test]
    fn namespace_ids_from_status() {
        assert_eq!(super::nspids("Name:\tpython3\nNSpid:\t4242\t1\nNSpgid:\t4242\t1\n"), vec![4242, 1]);
        assert_eq!(super::nspids("NSpid:\t77\n"), vec![77]);
        assert_eq!(super::nspids("Name:\tx\n"), Vec::<u32>::new());
        assert!(!super::in_child_pid_namespace(std::process::id()));
    }

    #[test]
    fn is_entry_only_in_3_11() {
        for ((_, minor, _), o) in super::offsets_generated::TABLE {
            let at = super::frame_is_entry(o);
            if *minor == 11 {
                assert_eq!(at, 68, "3.11: is_entry precedes owner (69)");
            } else {
                assert_eq!(at, -1, "3.{minor}");
            }
        }
    }

    #[test]
    fn the_walk_reads_a_fingerprint_only_where_the_instruction_cannot_tie_the_frame() {
        for ((_, minor, free_threaded), o) in super::offsets_generated::TABLE {
            let at = super::fingerprint_offset(o);
            // f_lasti (an offset) before 3.11; per-thread bytecode copies in free-threaded 3.14+.
            let needed = *minor < 11 || (*free_threaded && *minor >= 14);
            assert_eq!(at >= 0, needed, "3.{minor}{}", if *free_threaded { "t" } else { "" });
            if needed {
                assert_eq!(at, o.code_firstlineno);
            }
            let info = super::proc_info(0, o);
            assert_eq!(info.code_firstlineno == profiler_common::PY_OFFSET_NONE, !needed);
            // Where the fingerprint is `f_globals` instead: a word of its own inside the read.
            if !needed {
                let g = info.frame_globals;
                assert!(g.is_multiple_of(8) && g + 8 <= info.frame_read_len, "3.{minor}: f_globals at {g}");
                let words = [info.frame_code, info.frame_previous, info.frame_instr, info.frame_owner & !7];
                assert!(!words.contains(&g), "3.{minor}: f_globals at {g} overlaps {words:?}");
            }
        }
    }

    #[test]
    fn frame_fields_fit_the_kernels_single_read() {
        for ((major, minor, _), o) in super::offsets_generated::TABLE {
            let len = super::frame_read_len(o);
            assert!(len > 0 && len as usize <= profiler_common::PY_FRAME_READ_MAX, "{major}.{minor}: {len}");
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PyVersion {
    pub major: u8,
    pub minor: u8,
    pub patch: Option<u8>,
    /// A free-threaded build (`--disable-gil`, 3.13+): shown as "3.14.2t", CPython's own name
    /// for its ABI.
    pub free_threaded: bool,
}

impl PyVersion {
    /// From `PY_VERSION_HEX` (0xMMmmpp..), a GIL build.
    pub fn from_hex(hex: u32) -> Self {
        Self { major: (hex >> 24) as u8, minor: (hex >> 16) as u8, patch: Some((hex >> 8) as u8), free_threaded: false }
    }
}

impl fmt::Display for PyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.patch {
            Some(p) => write!(f, "{}.{}.{}", self.major, self.minor, p)?,
            None => write!(f, "{}.{}", self.major, self.minor)?,
        }
        if self.free_threaded { f.write_str("t") } else { Ok(()) }
    }
}

/// The kernel's view of a process: `_PyRuntime` and the offsets it walks.
pub fn proc_info(runtime_addr: u64, o: &PyOffsets) -> PyProcInfo {
    let off = |v: i64| u16::try_from(v).unwrap_or(PY_OFFSET_NONE);
    let (instr, instr_size) =
        if o.frame_lasti >= 0 { (o.frame_lasti, o.frame_lasti_size) } else { (o.frame_instr_ptr, 8) };
    PyProcInfo {
        runtime_addr,
        runtime_interpreters_head: off(o.runtime_interpreters_head),
        interp_threads_head: off(o.interp_threads_head),
        interp_next: off(o.interp_next),
        tstate_next: off(o.tstate_next),
        tstate_thread_id: off(o.tstate_thread_id),
        tstate_native_thread_id: off(o.tstate_native_thread_id),
        tstate_frame: off(o.tstate_frame),
        cframe_current_frame: off(o.cframe_current_frame),
        frame_previous: off(o.frame_previous),
        frame_code: off(o.frame_code),
        frame_instr: off(instr),
        frame_instr_size: instr_size as u16,
        frame_owner: off(o.frame_owner),
        code_firstlineno: off(fingerprint_offset(o)),
        frame_read_len: frame_read_len(o),
        frame_is_entry: off(frame_is_entry(o)),
        frame_globals: off(frame_globals(o)),
        _pad: [0; 3],
    }
}

/// Where the frame walk reads each frame's fingerprint (`co_firstlineno`), or -1 where it reads
/// none. 3.11+ builds with the GIL need none: the frame's instruction pointer points into its
/// code object's own bytecode (`co_code_adaptive`), so [`PythonProcess::resolve`] ties a frame
/// to the object it caches by checking the pointer falls inside it, and the kernel's
/// fingerprint is the frame's `f_globals` instead (see [`frame_globals`]), which it has read
/// anyway; the object is re-checked now and then (see [`CODE_RECHECK`]). The code object's
/// read was about half the kernel's cost per frame. Before 3.11 the instruction is an offset
/// (`f_lasti`), and free-threaded 3.14+ may point into a per-thread copy of the bytecode
/// elsewhere: both keep the fingerprint, as does a frame layout [`frame_globals`] does not know.
fn fingerprint_offset(o: &PyOffsets) -> i64 {
    let instr_in_code = o.frame_instr_ptr >= 0 && o.code_code_adaptive >= 0 && o.code_units >= 0;
    if instr_in_code && o.code_tlbc < 0 && frame_globals(o) >= 0 { -1 } else { o.code_firstlineno }
}

/// `_PyInterpreterFrame.f_globals` (3.11+): the dict of the module the frame's code belongs to
/// (borrowed from the frame's function, which the frame holds, so it outlives the frame). Its
/// address keeps code objects of different modules apart when one is freed and another takes
/// its address: an import's module code, freed once the import is done, whose address a later
/// module's function took (all module code has `co_firstlineno` 1, so the old fingerprint did
/// not tell those apart either). Not in the generated table (CPython's debug offsets leave it
/// out): placed from the headers, for the two layouts known, and -1 (keep `co_firstlineno`)
/// for any other. 3.11 (`pycore_frame.h`): `f_func, f_globals, f_builtins, f_locals, f_code,
/// frame_obj, previous, prev_instr`; 3.12-3.15 (`pycore_frame.h`,
/// `pycore_interpframe_structs.h`): `f_code`/`f_executable, previous, f_funcobj, f_globals,
/// f_builtins, f_locals, frame_obj, prev_instr`/`instr_ptr`.
fn frame_globals(o: &PyOffsets) -> i64 {
    match (o.frame_code, o.frame_previous, o.frame_instr_ptr) {
        (32, 48, 56) => 8,
        (0, 8, 56) => 24,
        _ => -1,
    }
}

/// A code object cached at an address without a fingerprint is checked again this long after
/// its last check: its `co_firstlineno` re-read (one 4-byte read), or, if it could not be read,
/// the whole object when next met. Code freed and another allocated at its address whose
/// bytecode also spans the frame's instruction pointer is caught here (and by
/// [`PythonRegistry::recheck_codes`] for frames the aggregator has already named), so a name
/// may stay stale this long at most, plus the cap below.
const CODE_RECHECK: Duration = Duration::from_secs(5);
/// Cached code objects re-checked at most per process per [`PythonRegistry::recheck_codes`]
/// call (four a second): those not reached are due first the next time.
const MAX_RECHECKS: usize = 256;

/// `_PyInterpreterFrame.is_entry` (3.11 only: the first frame of each `_PyEval_EvalFrameDefault`
/// call; 3.12 replaced it by entry frames). Not in the generated table: in 3.11's struct it is
/// the `bool` just before the `char owner` (`int stacktop; bool is_entry; char owner;`).
/// 3.11 is the version with an owner byte and no C-stack owner.
fn frame_is_entry(o: &PyOffsets) -> i64 {
    if o.frame_owner > 0 && o.frame_owned_by_cstack < 0 && o.frame_owned_by_interpreter < 0 {
        o.frame_owner - 1
    } else {
        -1
    }
}

/// Bytes from a frame's start that cover every field the kernel reads from it.
fn frame_read_len(o: &PyOffsets) -> u16 {
    let instr_end = if o.frame_lasti >= 0 { o.frame_lasti + o.frame_lasti_size } else { o.frame_instr_ptr + 8 };
    let end = [o.frame_previous + 8, o.frame_code + 8, instr_end, o.frame_owner + 1, frame_globals(o) + 8]
        .into_iter()
        .max()
        .unwrap_or(0);
    (((end + 7) / 8) * 8) as u16
}

/// Is a frame with this owner byte not Python code (the eval loop's entry frame, C-stack
/// shims)? 3.12–3.13: owner `FRAME_OWNED_BY_CSTACK`; 3.14+: any owner from
/// `FRAME_OWNED_BY_INTERPRETER` up.
fn is_shim_owner(o: &PyOffsets, owner: u32) -> bool {
    let owner = i64::from(owner);
    (o.frame_owned_by_cstack >= 0 && owner == o.frame_owned_by_cstack)
        || (o.frame_owned_by_interpreter >= 0 && owner >= o.frame_owned_by_interpreter)
}

/// A Python frame, named.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PyFrame {
    pub function: String,
    pub file: String,
    pub line: Option<i32>,
    /// Its code is a coroutine (`async def`...): the frame runs under an event loop.
    pub coroutine: bool,
    /// `co_firstlineno`: where the function starts (pprof's `Function.start_line`).
    pub first_line: i32,
}

/// What one recorded frame turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Frame(PyFrame),
    /// Not a frame a user wrote (C-stack shims, frames still being set up): left out.
    Hidden,
    /// The code object could not be read (freed, corrupt, or the process is gone).
    Unknown,
}

/// A profiled CPython process: its interpreter and the code objects read from it so far.
pub struct PythonProcess {
    pub interpreter: Interpreter,
    /// The version's table, with anything the process's own `_Py_DebugOffsets` says otherwise.
    offsets: PyOffsets,
    mem: Memory,
    code_type: Option<u64>,
    /// (code address, fingerprint) → code object; None when it could not be read.
    codes: HashMap<(u64, u32), CachedCode>,
    /// tid → `threading.Thread.name`, as last read.
    thread_names: HashMap<u32, String>,
    /// When to read them again (new threads, renames).
    names_refresh: NameRefresh,
    /// In a pid namespace of its own: its tids are not the ones the kernel reports.
    namespaced: bool,
}

impl PythonProcess {
    pub fn version(&self) -> PyVersion {
        self.interpreter.version
    }

    /// Reads the Python thread names again when a thread without one has appeared or one
    /// renamed itself, or for renames now and then (see [`name_refresh`]). Names of threads
    /// that have ended are kept: their samples still need them.
    pub fn refresh_thread_names(&mut self) {
        let now = Instant::now();
        if !self.names_refresh.due(now, &self.thread_names) {
            return;
        }
        let names = thread_names::thread_names(
            &self.mem,
            &self.offsets,
            self.interpreter.version,
            self.interpreter.runtime_addr,
        );
        if self.namespaced {
            // `_native_id` is the tid inside the process's pid namespace.
            let host = host_tids(self.mem.pid);
            self.thread_names.extend(names.into_iter().filter_map(|(tid, name)| Some((*host.get(&tid)?, name))));
        } else {
            self.thread_names.extend(names);
        }
        self.names_refresh.read_done(now, &self.thread_names);
    }

    pub fn thread_name(&self, tid: u32) -> Option<&str> {
        self.thread_names.get(&tid).map(String::as_str)
    }

    /// Every `PyThreadState` of every interpreter, as (address, value of the field at
    /// `key_offset`): see [`thread_states`].
    pub fn thread_states(&self, key_offset: u64) -> Vec<(u64, u64)> {
        thread_states(&self.mem, &self.offsets, self.interpreter.runtime_addr, key_offset)
    }

    /// tid → `PyThreadState` for every thread whose state names its tid (3.11+), so the kernel
    /// needs no scan for threads that exist when the process is found.
    pub fn native_thread_states(&self) -> Vec<(u32, u64)> {
        let off = self.offsets.tstate_native_thread_id;
        if off < 0 {
            return Vec::new();
        }
        self.thread_states(off as u64).into_iter().map(|(tstate, tid)| (tid as u32, tstate)).collect()
    }

    /// The GIL's address range: futex waits inside it are waits for the GIL (see [`gil_range`]).
    pub fn gil_range(&self) -> Option<(u64, u64)> {
        gil_range(&self.mem, &self.offsets, self.interpreter.runtime_addr)
    }

    /// Is `addr` in the eval loop (`_PyEval_EvalFrameDefault`), whose calls run Python frames?
    pub fn in_eval(&self, addr: u64) -> bool {
        self.interpreter.eval_ranges.iter().any(|&(lo, hi)| (lo..hi).contains(&addr))
    }

    /// Is `addr` inside the interpreter's own machine code?
    pub fn in_interpreter(&self, addr: u64) -> bool {
        self.interpreter.code_ranges.iter().any(|&(lo, hi)| (lo..hi).contains(&addr))
    }

    /// Where each thread's `PyThreadState` is now, by host tid (3.11+) and by `pthread_t`
    /// (every version): one walk of the thread lists, for [`PythonProcess::thread_frames`].
    pub fn thread_state_index(&self) -> ThreadStateIndex {
        let mut index = ThreadStateIndex::default();
        let off = self.offsets.tstate_native_thread_id;
        if off >= 0 {
            let host = if self.namespaced { Some(host_tids(self.mem.pid)) } else { None };
            for (tstate, tid) in self.thread_states(off as u64) {
                let tid = tid as u32;
                let tid = match &host {
                    Some(host) => match host.get(&tid) {
                        Some(&t) => t,
                        None => continue,
                    },
                    None => tid,
                };
                index.by_tid.insert(tid, tstate);
            }
        }
        if self.offsets.tstate_thread_id >= 0 {
            index.by_pthread =
                self.thread_states(self.offsets.tstate_thread_id as u64).into_iter().map(|(t, k)| (k, t)).collect();
        }
        index
    }

    /// Thread `tid`'s Python frames now, innermost first, with their `py_status` bits, read
    /// from its thread state in userspace (see [`walk`]): found by tid, else by its
    /// `pthread_t` (the fs base, from the kernel's task iterator). None when it has no state.
    pub fn thread_frames(
        &self,
        index: &ThreadStateIndex,
        tid: u32,
        fsbase: Option<u64>,
        max_depth: usize,
    ) -> Option<(Vec<PyFrameRecord>, u32)> {
        let tstate = index.by_tid.get(&tid).or_else(|| index.by_pthread.get(&fsbase.filter(|&f| f != 0)?))?;
        let info = proc_info(self.interpreter.runtime_addr, &self.offsets);
        Some(walk::walk(&self.mem, &info, *tstate, max_depth))
    }

    /// The `PyThreadState` holding the GIL now: `locked` set, and `last_holder` (None when
    /// unlocked or unreadable; free-threaded builds run without it).
    pub fn gil_holder(&self) -> Option<u64> {
        let (start, _) = self.gil_range()?;
        let o = &self.offsets;
        let mut locked = [0u8; 4];
        if o.gil_locked < 0 || !self.mem.read(start.wrapping_add(o.gil_locked as u64), &mut locked) {
            return None;
        }
        if i32::from_ne_bytes(locked) == 0 || o.gil_last_holder < 0 {
            return None;
        }
        self.mem.u64(start.wrapping_add(o.gil_last_holder as u64)).filter(|&t| t != 0)
    }

    /// Re-checks code objects cached without a fingerprint that are due (see
    /// [`CODE_RECHECK`], at most [`MAX_RECHECKS`]): returns the addresses of those that
    /// changed, or held no readable code, and drops them so they are read again when met.
    pub fn recheck_codes(&mut self, now: Instant) -> Vec<u64> {
        if fingerprint_offset(&self.offsets) >= 0 {
            return Vec::new();
        }
        let (mem, o) = (&self.mem, &self.offsets);
        let (mut changed, mut checked) = (Vec::new(), 0);
        self.codes.retain(|&(addr, _), cached| {
            if checked >= MAX_RECHECKS || now.duration_since(cached.checked) < CODE_RECHECK {
                return true;
            }
            checked += 1;
            let current = cached.code.as_ref().is_some_and(|code| same_firstlineno(mem, o, code));
            if current {
                cached.checked = now;
            } else {
                changed.push(addr);
            }
            current
        });
        changed
    }

    pub fn resolve(&mut self, rec: &PyFrameRecord) -> Resolved {
        let o = &self.offsets;
        if is_shim_owner(o, rec.owner) {
            return Resolved::Hidden;
        }
        if rec.code == 0 {
            return Resolved::Unknown;
        }
        let (mem, code_type) = (&self.mem, &mut self.code_type);
        // No `co_firstlineno` from the walk (see `fingerprint_offset`; the fingerprint is the
        // frame's globals): the instruction pointer, inside the object's bytecode, is what ties
        // the frame to it.
        let by_instr = fingerprint_offset(o) < 0;
        let mut read = || {
            if !code::is_code(mem, o, rec.code, code_type) {
                return None;
            }
            code::read_code(mem, o, rec.code)
                .filter(|c| if by_instr { c.holds_instr(rec.instr) } else { c.firstlineno as u32 == rec.fingerprint })
        };
        let now = Instant::now();
        let cached = match self.codes.entry((rec.code, rec.fingerprint)) {
            Entry::Occupied(e) => {
                let cached = e.into_mut();
                if by_instr && !cached.still_current(mem, o, rec.instr, now) {
                    *cached = CachedCode { code: read(), checked: now };
                }
                cached
            }
            Entry::Vacant(e) => e.insert(CachedCode { code: read(), checked: now }),
        };
        let Some(code) = &mut cached.code else { return Resolved::Unknown };
        let generator = o.frame_owned_by_generator >= 0 && rec.owner as i64 == o.frame_owned_by_generator;
        // Free-threaded 3.14+: the frame may run its thread's own copy of the bytecode.
        let instr =
            if rec.instr != 0 && o.frame_instr_ptr >= 0 { code.main_copy_instr(mem, o, rec.instr) } else { rec.instr };
        match code.line(self.interpreter.version, instr, generator) {
            FrameLine::Incomplete => Resolved::Hidden,
            FrameLine::Line(line) => Resolved::Frame(PyFrame {
                function: code.name.clone(),
                file: code.filename.clone(),
                line,
                coroutine: code.is_coroutine(),
                first_line: code.firstlineno,
            }),
        }
    }
}

/// A code object as read from a process at some address (None: it could not be read, or was
/// not the frame's), and when that was last checked.
struct CachedCode {
    code: Option<CodeObject>,
    checked: Instant,
}

impl CachedCode {
    /// Is this still the code object of a frame with no fingerprint at `instr`? Its bytecode
    /// must span `instr`; past [`CODE_RECHECK`] its `co_firstlineno` is read again too (one
    /// 4-byte read), and an address that held no readable code is read again whole.
    fn still_current(&mut self, mem: &impl ReadMemory, o: &PyOffsets, instr: u64, now: Instant) -> bool {
        let due = now.duration_since(self.checked) >= CODE_RECHECK;
        let Some(code) = &self.code else { return !due };
        if !code.holds_instr(instr) {
            return false;
        }
        if !due {
            return true;
        }
        let same = same_firstlineno(mem, o, code);
        if same {
            self.checked = now;
        }
        same
    }
}

/// Does the code object's `co_firstlineno` still read as when it was cached?
fn same_firstlineno(mem: &impl ReadMemory, o: &PyOffsets, code: &CodeObject) -> bool {
    let mut first = [0u8; 4];
    mem.read(code.addr().wrapping_add(o.code_firstlineno as u64), &mut first)
        && i32::from_ne_bytes(first) == code.firstlineno
}

/// Thread states of one process by what identifies their thread (see
/// [`PythonProcess::thread_state_index`]).
#[derive(Debug, Default, Clone)]
pub struct ThreadStateIndex {
    pub by_tid: HashMap<u32, u64>,
    pub by_pthread: HashMap<u64, u64>,
}

/// Every `PyThreadState` of every interpreter, with no bound but a sanity cap, as
/// (address, value of the field at `key_offset`). Userspace has no verifier to please, so this
/// is where threads beyond the kernel's short scan are found. A cycle in the lists (garbage, or
/// a hostile process) ends the walk; wild pointers just fail to read.
pub fn thread_states(mem: &impl ReadMemory, o: &PyOffsets, runtime_addr: u64, key_offset: u64) -> Vec<(u64, u64)> {
    const MAX_WALK: usize = 100_000;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut interp = mem.u64(runtime_addr.wrapping_add(o.runtime_interpreters_head as u64)).unwrap_or(0);
    while interp != 0 && seen.insert(interp) && seen.len() < MAX_WALK {
        let mut tstate = mem.u64(interp.wrapping_add(o.interp_threads_head as u64)).unwrap_or(0);
        while tstate != 0 && seen.insert(tstate) && seen.len() < MAX_WALK {
            if let Some(key) = mem.u64(tstate.wrapping_add(key_offset)) {
                out.push((tstate, key));
            }
            tstate = mem.u64(tstate.wrapping_add(o.tstate_next as u64)).unwrap_or(0);
        }
        interp = mem.u64(interp.wrapping_add(o.interp_next as u64)).unwrap_or(0);
    }
    out
}

/// The GIL's address range. 3.8–3.11 embed it in `_PyRuntime`; 3.12+ point to it from the main
/// interpreter (the last in the list).
pub fn gil_range(mem: &impl ReadMemory, o: &PyOffsets, runtime_addr: u64) -> Option<(u64, u64)> {
    let start = if o.runtime_ceval_gil >= 0 {
        runtime_addr.checked_add(o.runtime_ceval_gil as u64)?
    } else {
        let mut interp = mem.u64(runtime_addr.wrapping_add(o.runtime_interpreters_head as u64))?;
        for _ in 0..64 {
            match mem.u64(interp.wrapping_add(o.interp_next as u64)) {
                Some(next) if next != 0 => interp = next,
                _ => break,
            }
        }
        if interp == 0 || o.interp_ceval_gil < 0 {
            return None;
        }
        mem.u64(interp.wrapping_add(o.interp_ceval_gil as u64)).filter(|&g| g != 0)?
    };
    Some((start, start.checked_add(o.gil_size as u64)?))
}

enum Known {
    Python(Box<PythonProcess>),
    /// Not (yet) Python. Young processes are looked at again for a while: a shared libpython
    /// is mapped by the dynamic loader after exec, and the interpreter may only come later.
    NotPython {
        checked: Instant,
        /// When the process started or last called exec, while that is under [`YOUNG`] ago.
        young_since: Option<Instant>,
    },
    Unsupported,
}

/// How long after a process starts (or execs) it is re-inspected if it did not look like
/// Python. Loading an interpreter takes milliseconds on an idle host, but seconds on a loaded
/// one and under emulation (ld.so reading libpython over 9p in `cargo xtask test-kernels`,
/// userspace ~30x slower), and the look-ups thin out with age (below), so the window is long.
const YOUNG: Duration = Duration::from_secs(30);
/// The shortest time between two looks at a young process; later ones are a quarter of its
/// age apart (about 25 looks in [`YOUNG`], each a read of /proc/PID/maps).
const RECHECK_EVERY: Duration = Duration::from_millis(100);

/// Whether a process that did not look like Python when `checked` is due another look.
fn recheck_due(checked: Instant, young_since: Option<Instant>) -> bool {
    young_since.is_some_and(|since| {
        let age = since.elapsed();
        age < YOUNG && checked.elapsed() >= RECHECK_EVERY.max(age / 4)
    })
}

/// All processes seen so far, and which of them are Python.
#[derive(Default)]
pub struct PythonRegistry {
    inspector: Inspector,
    /// foldhash: looked up for every event of every process on the host.
    known: foldhash::HashMap<u32, Known>,
    /// Newly found Python processes whose layout the kernel needs.
    pending: Vec<(u32, PyProcInfo)>,
    /// Thread states found in userspace for the kernel's cache: (tid, tstate).
    pending_tstates: Vec<(u32, u64)>,
    /// Python processes whose GIL has not been located yet (3.12+ finds it through the main
    /// interpreter, which may not exist yet right after exec).
    gil_pending: std::collections::HashSet<u32>,
    /// One line per process we could not unwind, for the summary.
    pub notes: Vec<String>,
}

impl PythonRegistry {
    /// Looks at `pid` if it has not been looked at (or is young and due another look).
    pub fn observe(&mut self, pid: u32) {
        match self.known.get(&pid) {
            Some(Known::NotPython { checked, young_since }) if recheck_due(*checked, *young_since) => {}
            Some(_) => return,
            None => {}
        }
        let known = match self.inspector.inspect(pid) {
            Inspection::Python(interpreter) => match offsets::for_process(
                interpreter.version.major,
                interpreter.version.minor,
                interpreter.version.free_threaded,
                interpreter.debug_offsets.as_deref(),
            ) {
                Ok(layout) => {
                    let offsets = layout.offsets;
                    log::info!("pid {pid}: CPython {} ({})", interpreter.version, interpreter.path.display());
                    if layout.checked > 0 {
                        log::info!(
                            "pid {pid}: {} of {} layout fields agree with its _Py_DebugOffsets",
                            layout.checked - layout.corrected.len(),
                            layout.checked
                        );
                    }
                    for (field, table, process) in &layout.corrected {
                        log::warn!(
                            "pid {pid}: {field} is {process} by its _Py_DebugOffsets, not {table}: using {process}"
                        );
                    }
                    let mut info = proc_info(interpreter.runtime_addr, &offsets);
                    // In its own pid namespace (a container), `native_thread_id` holds the
                    // namespace's tids, which the kernel program does not see: match threads
                    // by their pthread_t (the fs base), as for 3.8-3.10.
                    let namespaced = in_child_pid_namespace(pid);
                    if namespaced {
                        info.tstate_native_thread_id = PY_OFFSET_NONE;
                    }
                    self.pending.push((pid, info));
                    let process = PythonProcess {
                        interpreter,
                        offsets,
                        mem: Memory::new(pid),
                        code_type: None,
                        codes: HashMap::new(),
                        thread_names: HashMap::new(),
                        names_refresh: NameRefresh::default(),
                        namespaced,
                    };
                    if !namespaced {
                        self.pending_tstates.extend(process.native_thread_states());
                    }
                    self.gil_pending.insert(pid);
                    Known::Python(Box::new(process))
                }
                Err(reason) => self.unsupported(pid, &interpreter.version.to_string(), &reason),
            },
            Inspection::Unsupported { version, reason } => self.unsupported(pid, &version, &reason),
            Inspection::NotPython => {
                let now = Instant::now();
                log::debug!("pid {pid}: not Python (yet)");
                // Young since its exec when that was seen, else since it started.
                let young_since = match self.known.get(&pid) {
                    Some(Known::NotPython { young_since: Some(since), .. }) => Some(*since),
                    _ => process_age(pid).and_then(|age| now.checked_sub(age)),
                };
                Known::NotPython { checked: now, young_since: young_since.filter(|since| since.elapsed() < YOUNG) }
            }
        };
        self.known.insert(pid, known);
    }

    fn unsupported(&mut self, pid: u32, version: &str, reason: &str) -> Known {
        let note = format!("pid {pid}: CPython {version} cannot be unwound ({reason}); native stacks only");
        log::warn!("{note}");
        self.notes.push(note);
        Known::Unsupported
    }

    /// Followed process `parent` forked `pid`: the child is a copy of the parent's memory, so
    /// it is the same interpreter at the same addresses (no inspection needed), and not Python
    /// if the parent is not (until it execs: see [`PythonRegistry::exec`]). `copied`: the
    /// kernel already gave the child its parent's layout.
    pub fn forked(&mut self, pid: u32, parent: u32, copied: bool) {
        let known = match self.known.get(&parent) {
            Some(Known::Python(p)) => {
                let mut info = proc_info(p.interpreter.runtime_addr, &p.offsets);
                if p.namespaced {
                    info.tstate_native_thread_id = PY_OFFSET_NONE;
                }
                if !copied {
                    self.pending.push((pid, info));
                }
                self.gil_pending.insert(pid);
                Known::Python(Box::new(PythonProcess {
                    interpreter: p.interpreter.clone(),
                    offsets: p.offsets,
                    mem: Memory::new(pid),
                    code_type: p.code_type,
                    codes: HashMap::new(),
                    thread_names: HashMap::new(),
                    names_refresh: NameRefresh::default(),
                    namespaced: p.namespaced,
                }))
            }
            Some(Known::NotPython { .. }) => Known::NotPython { checked: Instant::now(), young_since: None },
            Some(Known::Unsupported) => Known::Unsupported,
            None => return self.observe(pid),
        };
        self.known.insert(pid, known);
    }

    /// Process `pid` called exec: inspect it afresh, for a while, as a new process.
    pub fn exec(&mut self, pid: u32) {
        self.gil_pending.remove(&pid);
        self.known.insert(
            pid,
            Known::NotPython { checked: Instant::now() - RECHECK_EVERY, young_since: Some(Instant::now()) },
        );
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut PythonProcess> {
        match self.known.get_mut(&pid) {
            Some(Known::Python(p)) => Some(p),
            _ => None,
        }
    }

    pub fn version(&self, pid: u32) -> Option<PyVersion> {
        match self.known.get(&pid) {
            Some(Known::Python(p)) => Some(p.version()),
            _ => None,
        }
    }

    /// (pid, code address) of cached code objects found replaced or unreadable in every Python
    /// process (see [`PythonProcess::recheck_codes`]): frames named from them must be
    /// resolved again.
    pub fn recheck_codes(&mut self) -> Vec<(u32, u64)> {
        let now = Instant::now();
        let mut changed = Vec::new();
        for (&pid, known) in &mut self.known {
            if let Known::Python(p) = known {
                changed.extend(p.recheck_codes(now).into_iter().map(|code| (pid, code)));
            }
        }
        changed
    }

    /// Refreshes the Python thread names of every Python process (rate-limited per process).
    pub fn refresh_thread_names(&mut self) {
        for known in self.known.values_mut() {
            if let Known::Python(p) = known {
                p.refresh_thread_names();
            }
        }
    }

    /// The kernel reported a new thread of process `pid`: its Python name is read soon.
    pub fn thread_started(&mut self, pid: u32, tid: u32) {
        if let Some(Known::Python(p)) = self.known.get_mut(&pid) {
            p.names_refresh.started(tid);
        }
    }

    /// Thread `tid` of process `pid` changed its OS name (on 3.14+ `threading` does so when
    /// a thread's name is set from the thread itself): its Python name is read again soon.
    pub fn thread_renamed(&mut self, pid: u32, tid: u32) {
        if let Some(Known::Python(p)) = self.known.get_mut(&pid) {
            p.names_refresh.renamed(tid);
        }
    }

    /// Thread `tid` of process `pid` exited (its name, if read, is kept for its samples).
    pub fn thread_exited(&mut self, pid: u32, tid: u32) {
        if let Some(Known::Python(p)) = self.known.get_mut(&pid) {
            p.names_refresh.exited(tid);
        }
    }

    /// `threading.Thread.name` of a thread, when it could be read.
    pub fn thread_name(&self, pid: u32, tid: u32) -> Option<&str> {
        match self.known.get(&pid) {
            Some(Known::Python(p)) => p.thread_name(tid),
            _ => None,
        }
    }

    /// The kernel could not find a thread's state in its short scan: search the whole list.
    pub fn thread_miss(&mut self, pid: u32, tid: u32, key_offset: u32, key: u64) {
        let Some(Known::Python(p)) = self.known.get(&pid) else { return };
        match p.thread_states(key_offset as u64).into_iter().find(|&(_, k)| k == key) {
            Some((tstate, _)) => self.pending_tstates.push((tid, tstate)),
            None => log::debug!("pid {pid} tid {tid}: no PyThreadState (not a Python thread yet)"),
        }
    }

    pub fn take_pending_tstates(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.pending_tstates)
    }

    /// GIL address ranges of Python processes found since the last call, as soon as each can
    /// be located; a process whose GIL cannot be located yet is tried again next time.
    pub fn take_gil_ranges(&mut self) -> Vec<(u32, (u64, u64))> {
        let mut found = Vec::new();
        let known = &self.known;
        self.gil_pending.retain(|&pid| match known.get(&pid) {
            Some(Known::Python(p)) => match p.gil_range() {
                Some(range) => {
                    found.push((pid, range));
                    false
                }
                None => true,
            },
            _ => false,
        });
        found
    }

    pub fn take_pending(&mut self) -> Vec<(u32, PyProcInfo)> {
        std::mem::take(&mut self.pending)
    }

    /// Processes looked at so far, and the Python ones among them.
    pub fn sizes(&self) -> (usize, usize) {
        (self.known.len(), self.known.values().filter(|k| matches!(k, Known::Python(_))).count())
    }

    /// Has process `pid` been looked at (sampled, or a target)?
    pub fn knows(&self, pid: u32) -> bool {
        self.known.contains_key(&pid)
    }

    /// Every process looked at so far.
    pub fn known_pids(&self) -> Vec<u32> {
        self.known.keys().copied().collect()
    }

    /// Process `pid` exited: drop what is known of it (long-running sessions stay bounded).
    pub fn forget(&mut self, pid: u32) {
        self.known.remove(&pid);
        self.gil_pending.remove(&pid);
        self.pending.retain(|(p, _)| *p != pid);
        let prefix = format!("pid {pid}: ");
        self.notes.retain(|n| !n.starts_with(&prefix));
    }
}

/// `NSpid:` of a process or thread status: its id in each pid namespace, outermost first.
fn nspids(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|ids| ids.split_whitespace().filter_map(|id| id.parse().ok()).collect())
        .unwrap_or_default()
}

/// Is the process in a pid namespace below ours (a container)? Its own tids then differ from
/// the ones the kernel program records.
fn in_child_pid_namespace(pid: u32) -> bool {
    let levels = |path: &str| std::fs::read_to_string(path).map(|s| nspids(&s).len()).unwrap_or(0);
    levels(&format!("/proc/{pid}/status")) > levels("/proc/self/status").max(1)
}

/// Thread id inside the process's innermost pid namespace → thread id as we see it.
fn host_tids(pid: u32) -> HashMap<u32, u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return HashMap::new() };
    tasks
        .flatten()
        .filter_map(|task| {
            let ids = nspids(&std::fs::read_to_string(task.path().join("status")).ok()?);
            Some((*ids.last()?, *ids.first()?))
        })
        .collect()
}

/// How long ago the process started, from /proc.
fn process_age(pid: u32) -> Option<Duration> {
    let stat = procfs::process::Process::new(pid as i32).ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    use procfs::Current as _;
    let uptime = procfs::Uptime::current().ok()?.uptime;
    let age = uptime - stat.starttime as f64 / ticks;
    Some(Duration::from_secs_f64(age.max(0.0)))
}
