//! A native stack walked in userspace (`pyebpf dump --native`): the same tables the kernel's
//! unwinder uses (built by [`super::registry::Registry`] into arrays in our own memory instead
//! of the kernel's maps) and the same walk, frame by frame: `profiler_common::unwind`'s
//! [`find_mapping`], [`find_row`], [`step`] and [`frame_pointer_step`], with the process's
//! memory read by `process_vm_readv`. A thread blocked in the kernel cannot change its stack,
//! so reading it from outside, word by word, gives what the kernel would have read.
//!
//! Where the kernel's walk stops at file-backed code with no table or no usable row (a binary
//! without CFI), this one tries one frame-pointer step before giving up: the step only accepts a frame that looks like one
//! (rbp above sp, within [`profiler_common::unwind::MAX_FP_FRAME`]), and the kernel's budget
//! of instructions, which keeps it from doing so, does not apply here.
use std::collections::HashMap;

use profiler_common::unwind::{
    Mapping, NO_TABLE, PageEntry, ProcMaps, Regs, RuleRec, Step, TableInfo, UnwindRow, UserMemory, end, find_mapping,
    find_row, frame_pointer_step, step,
};

pub use profiler_common::unwind::Regs as StackRegs;

use super::registry::{Registry, TableSink};
use crate::host::memory::ReadMemory;

/// Frames walked at most: as many as a profile's native stack holds.
pub const MAX_FRAMES: usize = profiler_common::MAX_NATIVE_FRAMES;

/// Rows the in-memory arrays may hold at most (4 bytes each: 256 MiB, far above what any
/// process maps; the arrays only grow as far as the tables built need).
const MAX_ROWS: u64 = 1 << 26;

/// The kernel's arrays, in our memory: what [`Registry`] writes, what [`walk`] reads.
#[derive(Default)]
struct Arrays {
    rows: Vec<UnwindRow>,
    pages: Vec<PageEntry>,
    rules: Vec<RuleRec>,
    tables: Vec<TableInfo>,
    mappings: Vec<Mapping>,
    procs: HashMap<u32, ProcMaps>,
}

/// Writes `items` at `first` of `v`, growing it as needed.
fn put<T: Copy + Default>(v: &mut Vec<T>, first: u32, items: &[T]) {
    let (first, end) = (first as usize, first as usize + items.len());
    if v.len() < end {
        v.resize(end, T::default());
    }
    v[first..end].copy_from_slice(items);
}

impl TableSink for Arrays {
    fn set_rows(&mut self, first: u32, rows: &[UnwindRow]) -> anyhow::Result<()> {
        put(&mut self.rows, first, rows);
        Ok(())
    }
    fn set_pages(&mut self, first: u32, pages: &[PageEntry]) -> anyhow::Result<()> {
        put(&mut self.pages, first, pages);
        Ok(())
    }
    fn set_rule(&mut self, index: u32, rule: &RuleRec) -> anyhow::Result<()> {
        put(&mut self.rules, index, std::slice::from_ref(rule));
        Ok(())
    }
    fn set_table(&mut self, index: u32, table: &TableInfo) -> anyhow::Result<()> {
        put(&mut self.tables, index, std::slice::from_ref(table));
        Ok(())
    }
    fn set_mapping(&mut self, index: u32, mapping: &Mapping) -> anyhow::Result<()> {
        put(&mut self.mappings, index, std::slice::from_ref(mapping));
        Ok(())
    }
    fn set_process(&mut self, pid: u32, maps: &ProcMaps) -> anyhow::Result<()> {
        self.procs.insert(pid, *maps);
        Ok(())
    }
    fn remove_process(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }
}

/// Words of another process's memory, for the walk.
struct Words<'a, M: ReadMemory>(&'a M);

impl<M: ReadMemory> UserMemory for Words<'_, M> {
    fn words<const N: usize>(&self, addr: u64) -> Option<[u64; N]> {
        let mut buf = [[0u8; 8]; N];
        if !self.0.read(addr, buf.as_flattened_mut()) {
            return None;
        }
        Some(buf.map(u64::from_ne_bytes))
    }
}

/// One native frame, leaf first: its pc (the interrupted instruction for the leaf, else a
/// return address) and its CFA (the caller's sp; 0 when the walk could not tell).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NativeFrame {
    pub pc: u64,
    pub cfa: u64,
}

/// A walked stack: frames leaf first and how the walk ended (`profiler_common::unwind::end`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    pub frames: Vec<NativeFrame>,
    pub end: u32,
}

/// Unwind tables for the processes a dump walks, shared between them (one table per binary).
pub struct Unwinder {
    registry: Registry,
    arrays: Arrays,
}

impl Default for Unwinder {
    fn default() -> Self {
        Self { registry: Registry::new(MAX_ROWS), arrays: Arrays::default() }
    }
}

impl Unwinder {
    /// Reads `pid`'s mappings and builds the tables of binaries not seen yet. False if the
    /// process is gone or its mappings could not be placed.
    pub fn register(&mut self, pid: u32) -> bool {
        match self.registry.register(pid, &mut self.arrays) {
            Ok(ok) => ok,
            Err(e) => {
                log::warn!("pid {pid}: no native stacks: {e:#}");
                false
            }
        }
    }

    /// Walks `pid`'s stack from `regs` (the leaf's registers, `pc` exact), reading its memory
    /// through `mem`, at most `max` frames.
    pub fn walk(&self, pid: u32, regs: Regs, mem: &impl ReadMemory, max: usize) -> Walk {
        let Some(maps) = self.arrays.procs.get(&pid).copied() else {
            return Walk { frames: Vec::new(), end: end::NO_INFO };
        };
        walk(&self.arrays, maps, regs, &Words(mem), max)
    }
}

fn walk(a: &Arrays, maps: ProcMaps, mut regs: Regs, mem: &impl UserMemory, max: usize) -> Walk {
    let mut frames = Vec::new();
    let mut exact = true;
    let mut last = 0;
    let mapping = |i: u32| a.mappings.get(maps.base.wrapping_add(i) as usize).copied();
    loop {
        if frames.len() >= max {
            return Walk { frames, end: end::TRUNCATED };
        }
        let pc = regs.pc;
        let lookup = if exact { pc } else { pc.wrapping_sub(1) };
        let found = find_mapping(0, maps.count, last, lookup, |i| mapping(i).map(|m| m.start), mapping);
        let result = match found {
            None => Step::Stop { cfa: 0, end: end::UNMAPPED },
            Some((i, m)) => {
                last = i;
                let row = (m.table != NO_TABLE)
                    .then(|| a.tables.get(m.table as usize))
                    .flatten()
                    .and_then(|t| {
                        find_row(
                            t,
                            lookup.wrapping_sub(m.bias),
                            |p| a.pages.get(p as usize).copied(),
                            |r| a.rows.get(r as usize).copied(),
                        )
                    })
                    .and_then(|(r, diff)| Some((*a.rules.get(r.rule as usize)?, diff)));
                let result = match row {
                    Some((rule, diff)) => step(&mut regs, &mut exact, &rule, diff, mem),
                    None => Step::Stop { cfa: 0, end: end::NO_INFO },
                };
                // No table, no row for the address, or a rule the step cannot evaluate (it
                // then leaves the registers as they were): frame pointers, if the code kept
                // them (checked by the step), as the kernel does for anonymous code only.
                if result == (Step::Stop { cfa: 0, end: end::NO_INFO }) {
                    frame_pointer_step(&mut regs, &mut exact, mem)
                } else {
                    result
                }
            }
        };
        let (cfa, stop) = match result {
            Step::Next { cfa } => (cfa, None),
            Step::Stop { cfa, end } => (cfa, Some(end)),
        };
        frames.push(NativeFrame { pc, cfa });
        if let Some(end) = stop {
            return Walk { frames, end };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::Memory;

    /// This function's own stack, walked from inside it (its frame and its callers' stay as
    /// they are while it runs, as a blocked thread's do).
    #[inline(never)]
    fn walk_here(u: &Unwinder) -> Walk {
        let (pc, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers, touches nothing.
        unsafe {
            core::arch::asm!("lea {}, [rip]", "mov {}, rsp", "mov {}, rbp", out(reg) pc, out(reg) sp, out(reg) bp)
        };
        let pid = std::process::id();
        u.walk(pid, Regs { pc, sp, bp }, &Memory::new(pid), MAX_FRAMES)
    }

    #[inline(never)]
    fn h(u: &Unwinder, out: &mut Vec<Walk>) {
        out.push(walk_here(u));
        std::hint::black_box(&out);
    }

    #[inline(never)]
    fn g(u: &Unwinder, out: &mut Vec<Walk>) {
        h(u, out);
        std::hint::black_box(&out);
    }

    #[inline(never)]
    fn f(u: &Unwinder, out: &mut Vec<Walk>) {
        g(u, out);
        std::hint::black_box(&out);
    }

    /// The function among `fns` (start addresses) that `pc` is in: the nearest start below it.
    fn nearest(fns: &[(&'static str, u64)], pc: u64) -> Option<&'static str> {
        fns.iter().filter(|(_, a)| *a < pc).max_by_key(|(_, a)| *a).map(|(n, _)| *n)
    }

    #[test]
    fn walks_our_own_stack_through_its_callers_in_order() {
        let mut u = Unwinder::default();
        assert!(u.register(std::process::id()));
        let mut out = Vec::new();
        f(&u, &mut out);
        let w = &out[0];
        let fns = [
            ("walk_here", walk_here as *const () as u64),
            ("h", h as *const () as u64),
            ("g", g as *const () as u64),
            ("f", f as *const () as u64),
            ("test", walks_our_own_stack_through_its_callers_in_order as *const () as u64),
        ];
        // The return addresses, looked up at pc - 1, fall in h, g, f in that order (other
        // functions of the binary lie between them, so only the order of ours is checked).
        let ours: Vec<&str> = w.frames.iter().skip(1).filter_map(|fr| nearest(&fns, fr.pc - 1)).collect();
        let pos = |n: &str| ours.iter().position(|x| *x == n);
        assert_eq!(nearest(&fns, w.frames[0].pc), Some("walk_here"), "{w:?}");
        assert!(pos("h") < pos("g") && pos("g") < pos("f") && pos("h").is_some(), "{ours:?} {w:?}");
        // A test thread's stack ends at its start: the walk ends clean, or at the outermost
        // frame's missing info, never on a bad read or frame.
        assert!(w.frames.len() > 5, "{w:?}");
        assert!(w.frames.windows(2).all(|p| p[0].cfa < p[1].cfa || p[1].cfa == 0), "CFAs grow: {w:?}");
        assert!(![end::READ_FAILED, end::BAD_FRAME, end::TRUNCATED].contains(&w.end), "{w:?}");
    }

    #[test]
    fn a_bad_read_or_an_unmapped_pc_ends_the_walk_with_its_reason() {
        let mut u = Unwinder::default();
        let pid = std::process::id();
        assert!(u.register(pid));
        // A pc outside every mapping.
        let w = u.walk(pid, Regs { pc: 0x10, sp: 0x1000, bp: 0 }, &Memory::new(pid), MAX_FRAMES);
        assert_eq!((w.frames.len(), w.end), (1, end::UNMAPPED));
        // Our own code with a stack pointer that cannot be read.
        let pc = walks_our_own_stack_through_its_callers_in_order as *const () as u64 + 4;
        let w = u.walk(pid, Regs { pc, sp: 0x1000, bp: 0 }, &Memory::new(pid), MAX_FRAMES);
        assert_eq!(w.end, end::READ_FAILED, "{w:?}");
        // An unknown process.
        assert_eq!(u.walk(1 << 30, Regs::default(), &Memory::new(pid), 4).end, end::NO_INFO);
    }
}
