//! `pyebpf dump --native`: each blocked thread's user native stack, walked from userspace
//! (`native::stack`, the profile's tables and step) from the registers the thread entered the
//! kernel with, symbolized, and merged with its Python frames as `profile --native` merges a
//! sample's (`native::merge`: Python frames in place of the eval-loop frames that ran them,
//! the interpreter's own frames left out).
//!
//! Registers: the task iterator's (`bpf_task_pt_regs`, 5.15+: ip, sp, bp), else
//! `/proc/PID/task/TID/syscall`'s sp and pc (no bp: frames whose CFA is rbp-based before any
//! frame restored rbp stop the walk, marked). A thread on a CPU has no stable registers: it is
//! reported as running, with its Python frames only; a runnable one (preempted, or woken and
//! not yet run) is off the CPU and walked as a blocked one, from the iterator's registers
//! (/proc has none for it). A thread that ran
//! between the registers and the end of its walk (its schedstat switch count moved) may have
//! changed its stack under the walk: its native frames are dropped, said so.
use std::collections::HashMap;

use profiler_common::{
    PY_FRAME_IS_ENTRY, PY_OWNER_ENTRY_MIN, PyFrameRecord,
    task_iter::{TASK_HAS_ON_CPU, TASK_HAS_REGS, TaskRecord},
    unwind::{Regs, end},
};

use crate::{
    host::{
        memory::Memory,
        procinfo,
        symbols::{Symbols, UserSymbol},
    },
    model::{
        Marker,
        dump::{DumpFrame, DumpStackFrame},
    },
    native::{
        merge::{Grouping, NativeIn, Piece, PyIn, merge},
        procmaps::{self, Backing, ExecMapping},
        stack::{MAX_FRAMES, Unwinder, Walk},
    },
    python::PythonProcess,
};

/// What a thread is reported as when it has no stable registers.
pub const RUNNING: &str = "running, no native stack";
/// ... when it ran while its stack was read.
pub const RAN: &str = "ran during the dump: native stack dropped";
/// ... when no registers could be found (not in the kernel, no /proc syscall file).
pub const NO_REGS: &str = "no user registers";

/// The walks of one dump: tables shared across its processes, symbols, each thread's
/// context-switch count taken before its registers were, and its walk.
pub struct NativeDump {
    pids: Vec<u32>,
    unwinder: Unwinder,
    symbols: Symbols,
    /// pid → its executable mappings (for library names and offsets).
    maps: HashMap<u32, Vec<ExecMapping>>,
    /// tid → times it had been switched in, before the registers were read.
    switches: HashMap<u32, u64>,
    /// tid → its stack as walked right after the registers were read.
    walks: HashMap<u32, Captured>,
}

/// A thread's native stack as captured.
enum Captured {
    /// On a CPU (or runnable where the kernel cannot tell): no stable registers.
    Running,
    NoRegs,
    /// It ran between its registers and the end of its walk.
    Ran,
    /// Walked from a leaf stack pointer.
    Walked(u64, Walk),
}

/// How many times a thread has been switched in (`pcount`, the third field of its schedstat).
fn switches(pid: u32, tid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().nth(2)?.parse().ok()
}

fn task_ids(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// `end` of a walk as the marker a profile shows, if the walk stopped short.
fn stop_marker(end: u32) -> Option<Marker> {
    match end {
        end::NO_INFO | end::NO_REGS => Some(Marker::UnwindNoInfo),
        end::READ_FAILED => Some(Marker::UnwindUnreadable),
        end::UNMAPPED => Some(Marker::UnwindUnmapped),
        end::BAD_FRAME => Some(Marker::UnwindBadFrame),
        end::TRUNCATED => Some(Marker::UnwindTruncated),
        _ => None,
    }
}

/// A Python frame as the dump shows it: None for frames not shown (hidden by the resolver).
pub type PyFrame = (PyFrameRecord, Option<DumpFrame>);

impl NativeDump {
    /// Builds the tables of every binary `pids` map.
    pub fn prepare(pids: &[u32]) -> Self {
        let mut d = NativeDump {
            pids: pids.to_vec(),
            unwinder: Unwinder::default(),
            symbols: Symbols::new(),
            maps: HashMap::new(),
            switches: HashMap::new(),
            walks: HashMap::new(),
        };
        for &pid in pids {
            if d.unwinder.register(pid) {
                d.maps.insert(pid, procmaps::exec_mappings(pid).unwrap_or_default());
            }
        }
        d
    }

    /// Notes every thread's switch count: call just before the registers are read (the task
    /// iterator's run), and [`NativeDump::capture`] just after, so that the window in which a
    /// thread waking up spoils its stack is as short as it can be.
    pub fn note_switches(&mut self) {
        for &pid in &self.pids {
            for tid in task_ids(pid) {
                if let Some(n) = switches(pid, tid) {
                    self.switches.insert(tid, n);
                }
            }
        }
    }

    /// Walks every thread's stack from its registers (the iterator's `tasks`, else /proc),
    /// keeping only walks of threads that did not run meanwhile. Symbols come later.
    pub fn capture(&mut self, tasks: &HashMap<u32, TaskRecord>) {
        for &pid in &self.pids {
            let mem = Memory::new(pid);
            for tid in task_ids(pid) {
                let task = tasks.get(&tid);
                // On a CPU, or in state 0 where the kernel cannot say whether it is on one.
                let running = |r: &TaskRecord| r.state == 0 && (r.flags & TASK_HAS_ON_CPU == 0 || r.on_cpu != 0);
                let regs = match task {
                    Some(r) if running(r) => None,
                    // Off the CPU (blocked, or runnable: preempted or woken, not yet run): the
                    // registers it entered the kernel with hold still until it runs.
                    Some(r) if r.flags & TASK_HAS_REGS != 0 && r.ip != 0 => Some(Regs { pc: r.ip, sp: r.sp, bp: r.bp }),
                    // Runnable without the iterator's registers: /proc says "running", no sp.
                    Some(r) if r.state == 0 => None,
                    _ => procinfo::thread_user_sp_pc(pid, tid).map(|(sp, pc)| Regs { pc, sp, bp: 0 }),
                };
                let captured = match regs {
                    None if task.is_some_and(running) => Captured::Running,
                    None => Captured::NoRegs,
                    Some(regs) => {
                        let walk = self.unwinder.walk(pid, regs, &mem, MAX_FRAMES);
                        let before = self.switches.get(&tid).copied();
                        if before.is_none() || switches(pid, tid) != before {
                            Captured::Ran
                        } else {
                            Captured::Walked(regs.sp, walk)
                        }
                    }
                };
                self.walks.insert(tid, captured);
            }
        }
    }

    /// One thread's mixed stack, innermost first, and a note when it is missing or cut short.
    /// `running`: /proc (read after the capture) shows it running, or runnable where the
    /// kernel cannot tell; `py`: its Python frames innermost first.
    pub fn thread(
        &mut self,
        pid: u32,
        tid: u32,
        running: bool,
        py: &[PyFrame],
        proc: Option<&PythonProcess>,
    ) -> (Vec<DumpStackFrame>, Option<String>) {
        let python_only = || py.iter().filter_map(|(_, f)| f.clone().map(DumpStackFrame::Python)).collect();
        let (leaf_sp, walk) = match self.walks.remove(&tid) {
            _ if running => return (python_only(), Some(RUNNING.into())),
            Some(Captured::Walked(sp, walk)) => (sp, walk),
            Some(Captured::Running) => return (python_only(), Some(RUNNING.into())),
            Some(Captured::Ran) => return (python_only(), Some(RAN.into())),
            // A thread that appeared since the capture ran since.
            None => return (python_only(), Some(RAN.into())),
            Some(Captured::NoRegs) => return (python_only(), Some(NO_REGS.into())),
        };
        for (i, f) in walk.frames.iter().enumerate() {
            self.symbols.note_user(pid, f.pc, i == 0);
        }
        self.symbols.resolve_all();
        let native_frame = |i: usize| self.native_frame(pid, walk.frames[i].pc, i);
        let lookup = |i: usize, pc: u64| if i == 0 { pc } else { pc.wrapping_sub(1) };
        let mut out = Vec::new();
        let marker = stop_marker(walk.end);
        let Some(proc) = proc.filter(|_| !py.is_empty()) else {
            // No Python frames: the native stack as it is.
            out.extend((0..walk.frames.len()).map(native_frame));
            return (out, marker.map(|m| m.text().to_string()));
        };
        let grouping = match proc.version().minor {
            ..=10 => Grouping::PerFrame,
            11 => Grouping::IsEntry,
            _ => Grouping::EntryFrame,
        };
        let py_in: Vec<PyIn> = py
            .iter()
            .map(|(r, _)| PyIn {
                entry: r.owner & PY_FRAME_IS_ENTRY != 0,
                anchor: (grouping == Grouping::EntryFrame && (r.owner & 0xff) >= PY_OWNER_ENTRY_MIN).then_some(r.instr),
            })
            .collect();
        let mut sp = leaf_sp;
        let native: Vec<NativeIn> = walk
            .frames
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let n = NativeIn { sp, cfa: f.cfa, eval: proc.in_eval(lookup(i, f.pc)) };
                sp = f.cfa;
                n
            })
            .collect();
        let merged = merge(&native, leaf_sp, walk.end == end::CLEAN, &py_in, grouping);
        // Native frames root-ward of the outermost Python frame are the thread's start-up:
        // interpreter internals, left out as in profiles.
        let outermost_python = merged.pieces.iter().rposition(|p| matches!(p, Piece::Python(_)));
        for (k, piece) in merged.pieces.iter().enumerate() {
            match *piece {
                Piece::Python(j) => out.extend(py[j].1.clone().map(DumpStackFrame::Python)),
                Piece::Native(i) => {
                    let pc = walk.frames[i].pc;
                    let internal = proc.in_interpreter(lookup(i, pc)) || outermost_python.is_some_and(|o| k > o);
                    if !internal {
                        out.push(native_frame(i));
                    }
                }
            }
        }
        // Python frames no eval frame took (the walk stopped short) go root-ward, after it.
        out.extend(merged.unplaced.iter().filter_map(|&j| py[j].1.clone().map(DumpStackFrame::Python)));
        (out, marker.map(|m| m.text().to_string()))
    }

    /// The `i`-th frame (0 the leaf) at `pc`, symbolized, with its library and file offset.
    fn native_frame(&self, pid: u32, pc: u64, i: usize) -> DumpStackFrame {
        let function = match self.symbols.user_symbol(pid, pc, i) {
            Some(UserSymbol::Code(s)) => s.name.clone(),
            _ => None,
        };
        let at = if i == 0 { pc } else { pc.wrapping_sub(1) };
        let mapping = self.maps.get(&pid).and_then(|ms| ms.iter().find(|m| m.start <= at && at < m.end));
        let (library, offset) = match mapping.map(|m| (m, &m.backing)) {
            Some((m, Backing::File { path, .. })) => {
                let name = path.rsplit('/').next().unwrap_or(path).trim_end_matches(" (deleted)").to_string();
                (Some(name), Some(pc - m.start + m.offset))
            }
            Some((_, Backing::Vdso)) => (Some("[vdso]".to_string()), None),
            _ => (None, None),
        };
        DumpStackFrame::Native { function, library, address: pc, offset }
    }
}
