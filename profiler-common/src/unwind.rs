//! Native unwinding from DWARF CFI: the compact tables userspace builds (`profiler::native`) and
//! the kernel walks, and the walk itself, defined once for both sides.
//!
//! A binary's table is a sorted list of 4-byte [`UnwindRow`]s (the low 16 bits of an address and
//! the index of a [`RuleRec`] in one host-wide dictionary of rules), with a directory of one
//! [`PageEntry`] per 64 KiB of the binary's text, so that finding the row of an address is one
//! directory lookup and a binary search of at most [`MAX_SEARCH_STEPS`] within a page, whatever
//! the binary's size. Rows live in one shared flat array, two to an 8-byte element (see
//! [`row_of_pair`]); a [`TableInfo`] says where a binary's rows and pages are. Each process has its executable
//! mappings sorted by address ([`Mapping`], a contiguous range given by [`ProcMaps`]).
//!
//! [`find_mapping`], [`find_row`] and [`step`] take the map lookups and user-memory reads as
//! closures or a trait: the kernel passes BPF map lookups and `bpf_probe_read_user`, userspace
//! passes its own arrays and `/proc/PID/mem`, and the unit tests check the two agree with a
//! plain search over the uncompressed rows. Every loop has a constant bound, as the verifier
//! requires.

/// A page of text covered by one [`PageEntry`]: 64 KiB.
pub const PAGE_BITS: u32 = 16;
/// Binary-search steps within a page: a page holds fewer than 2^16 rows (one per byte at most).
pub const MAX_SEARCH_STEPS: u32 = 16;
/// Executable mappings of one process at most; the kernel's search over them takes
/// [`MAPPING_SEARCH_STEPS`].
pub const MAX_PROC_MAPPINGS: u32 = 2048;
pub const MAPPING_SEARCH_STEPS: u32 = 12;
/// Native frames walked per run of the kernel's unwinder program; it tail-calls itself for the
/// next ones (5.10 has no `bpf_loop`, and one program walking 127 frames would be too much for
/// the verifier). The verifier's work grows faster than the frames: 1 frame 5K instructions,
/// 4 frames 280K, 5 frames 324K, 8 frames 902K of its 1M limit (kernel 6.18). 127 frames take
/// 26 runs, within the kernel's 33 tail calls.
pub const FRAMES_PER_RUN: u32 = 5;
/// [`Mapping::table`] of a mapping with no table (yet).
pub const NO_TABLE: u32 = u32::MAX;
/// Largest frame the walk accepts: a frame-pointer step to a frame further than this above the
/// stack pointer is taken for garbage.
pub const MAX_FP_FRAME: u64 = 8 << 20;

/// [`RuleRec::kind`]: the low nibble says how to find the CFA (the caller's stack pointer; the
/// return address is at CFA - 8 on x86-64), the high nibble where the caller's rbp is.
pub mod kind {
    /// No usable unwind info for the address (a gap between FDEs, an unsupported rule).
    pub const INVALID: u8 = 0;
    /// The return address is undefined: the outermost frame (`_start`, a thread's start).
    pub const END: u8 = 1;
    /// CFA = rsp + cfa_off.
    pub const RSP: u8 = 2;
    /// CFA = rbp + cfa_off.
    pub const RBP: u8 = 3;
    /// CFA = *(rsp + pre) + post, with `cfa_off` = pre | post / 8 (GCC's stack realignment).
    pub const DEREF_RSP: u8 = 4;
    /// CFA = *(rbp + pre) + post.
    pub const DEREF_RBP: u8 = 5;
    /// The PLT's one expression: CFA = rsp + 8 + ((pc & 15) >= cfa_off ? 8 : 0).
    pub const PLT: u8 = 6;
    /// A signal trampoline (`__restore_rt`): the interrupted registers are in the `ucontext`
    /// the kernel pushed.
    pub const SIGNAL: u8 = 7;
    /// Mask of the CFA kind.
    pub const CFA_MASK: u8 = 0x0f;
    /// The caller's rbp is this frame's rbp.
    pub const RBP_SAME: u8 = 0 << 4;
    /// Saved at CFA + rbp_off.
    pub const RBP_AT_CFA: u8 = 1 << 4;
    /// Saved at rbp + rbp_off (GCC's DRAP prologues).
    pub const RBP_AT_RBP: u8 = 2 << 4;
    /// Not recoverable: the caller's rbp is unknown (0).
    pub const RBP_LOST: u8 = 3 << 4;
    /// Mask of the rbp kind.
    pub const RBP_MASK: u8 = 0xf0;
    /// [`super::RuleRec::fold`] flag: the folded row has CFA - 8 (a pop), else CFA + 8 (a push).
    pub const FOLD_NEGATIVE: u8 = 0x80;
}

/// [`Mapping::flags`].
pub mod mapping_flags {
    /// No table: walk this code by frame pointers (anonymous executable memory: JIT code,
    /// generated trampolines), accepting only frames that look like stack frames.
    pub const FRAME_POINTERS: u32 = 1;
}

/// How a native walk ended ([`super::SampleEvent::user_end`]).
pub mod end {
    /// Not walked by the DWARF unwinder: `user_stack` is `bpf_get_stack`'s frame-pointer walk.
    pub const FRAME_POINTERS: u32 = 0;
    /// Reached the outermost frame (`_start`, a thread's start) or a zero return address.
    pub const CLEAN: u32 = 1;
    /// The last frame's code has no unwind info (no CFI, a gap, an unsupported rule, or its
    /// binary's table is not built yet).
    pub const NO_INFO: u32 = 2;
    /// A read of the stack failed.
    pub const READ_FAILED: u32 = 3;
    /// The last frame's address is in no executable mapping userspace told the kernel of.
    pub const UNMAPPED: u32 = 4;
    /// The frame limit was reached.
    pub const TRUNCATED: u32 = 5;
    /// A frame did not look like one (its CFA at or below its stack pointer: garbage, a loop).
    pub const BAD_FRAME: u32 = 6;
    /// The thread's user registers could not be found.
    pub const NO_REGS: u32 = 7;
}

/// One table row: the low 16 bits of the address where `rule` starts to hold (the page
/// directory supplies the rest) and its index in the rule dictionary. 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub addr_lo: u16,
    pub rule: u16,
}

/// Row `index` of the rows array, from the 8-byte element holding it (`index / 2`): rows are
/// stored two to an element, in memory order (the kernel rounds an array's value size up to 8
/// bytes, so single rows would cost twice the memory). Picking the half by a shift, not by an
/// offset into the element, keeps the verifier from tracking the index exactly, which would
/// stop it from pruning the binary search's states (a million instructions for one frame).
#[inline(always)]
pub fn row_of_pair(pair: u64, index: u32) -> UnwindRow {
    let v = (pair >> ((index & 1) * 32)) as u32;
    UnwindRow { addr_lo: v as u16, rule: (v >> 16) as u16 }
}

/// The rows of one 64 KiB page of a binary: `first .. first + count`, relative to its table's
/// first row. A page with no row of its own points where its rows would be, so that the row
/// before `first` (the previous page's last) is the one that covers it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageEntry {
    pub first: u32,
    pub count: u16,
    pub _pad: u16,
}

/// One unwind rule, as the dictionary holds it: 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleRec {
    /// [`kind`]: CFA kind in the low nibble, rbp kind in the high one.
    pub kind: u8,
    /// 0, or: from `fold & 3` bytes past the row's address on, the CFA offset is 8 more (8 less
    /// with [`kind::FOLD_NEGATIVE`]). Folds a push or pop's row into the one before it.
    pub fold: u8,
    pub rbp_off: i16,
    /// See [`kind`].
    pub cfa_off: i32,
}

impl RuleRec {
    /// The CFA offset `diff` bytes past the row's address (the fold applied).
    #[inline(always)]
    pub fn cfa_off_at(&self, diff: u32) -> i32 {
        let at = (self.fold & 3) as u32;
        if at != 0 && diff >= at {
            if self.fold & kind::FOLD_NEGATIVE != 0 { self.cfa_off - 8 } else { self.cfa_off + 8 }
        } else {
            self.cfa_off
        }
    }
}

/// Where one binary's table is in the shared arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableInfo {
    /// Page number (ELF virtual address >> 16) of the first page entry.
    pub first_page: u32,
    pub n_pages: u32,
    /// Index of the first page entry in the pages array.
    pub page_base: u32,
    /// Index of the first row in the rows array (block × 1024 + row).
    pub row_base: u32,
}

/// One executable mapping of a process. Sorted by `start` within the process's range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `pc - bias` is the address in the binary's own (ELF virtual) address space.
    pub bias: u64,
    /// Index in the tables array, or [`NO_TABLE`].
    pub table: u32,
    /// [`mapping_flags`].
    pub flags: u32,
}

/// A process's mappings: `MAPPINGS[base .. base + count]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcMaps {
    pub base: u32,
    pub count: u32,
}

/// The registers a walk needs, of the frame being unwound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
}

/// The walk's state between runs of the kernel's unwinder program (per CPU, in the scratch
/// map), and what userspace's model of the walk keeps the same way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindState {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
    /// The process's mappings.
    pub maps_base: u32,
    pub maps_count: u32,
    /// The mapping the last frame was in (relative to `maps_base`): consecutive frames are
    /// usually in the same binary, so it is tried first.
    pub last_map: u32,
    /// 1 when `pc` is an exact instruction address (the sampled one, or one a signal
    /// interrupted), 0 for a return address (looked up at pc - 1: a call that ends a function
    /// belongs to that function).
    pub exact: u32,
    /// Runs of the unwinder program so far for this sample.
    pub runs: u32,
    /// Always 0: the lower bound the mapping search starts from, read from the map so that
    /// the verifier does not know it. With a constant 0 there, it could not merge the search's
    /// states (one frame took a million instructions to verify, instead of 5 000).
    pub search_lo: u32,
}

/// Reads of the unwound thread's memory.
pub trait UserMemory {
    /// `N` words at `addr`; `None` if any byte cannot be read.
    fn words<const N: usize>(&self, addr: u64) -> Option<[u64; N]>;
}

/// The mapping `pc` is in, by binary search over a process's sorted mappings (`count` of them,
/// `get(i)` the i-th, `start(i)` where it starts; `search_lo` is 0, see
/// [`UnwindState::search_lo`]), trying `hint` first. Returns its index and
/// itself. (The search reads only starts: copying whole mappings at each step multiplies the
/// states the verifier has to explore.)
#[inline(always)]
pub fn find_mapping(
    search_lo: u32,
    count: u32,
    hint: u32,
    pc: u64,
    start: impl Fn(u32) -> Option<u64>,
    get: impl Fn(u32) -> Option<Mapping>,
) -> Option<(u32, Mapping)> {
    let mut at = hint;
    if hint >= count || start(hint).is_none_or(|s| s > pc) || get(hint).is_none_or(|m| pc >= m.end) {
        let (mut lo, mut hi) = (search_lo, count.min(MAX_PROC_MAPPINGS));
        // First mapping starting after pc.
        for _ in 0..MAPPING_SEARCH_STEPS {
            if lo >= hi {
                break;
            }
            let mid = (lo + hi) >> 1;
            if start(mid)? <= pc {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return None;
        }
        at = lo - 1;
    }
    let m = get(at)?;
    (m.start <= pc && pc < m.end).then_some((at, m))
}

/// The row covering address `addr` (an ELF virtual address) of the binary whose table is
/// `table`, and how many bytes past the row's address `addr` is (exact within 64 KiB; for a
/// row further back, some distance of at least 64 KiB: all [`RuleRec::cfa_off_at`] needs).
/// `page(i)` and `row(i)` are the i-th entries of the shared pages and rows arrays.
#[inline(always)]
pub fn find_row(
    table: &TableInfo,
    addr: u64,
    page: impl Fn(u32) -> Option<PageEntry>,
    row: impl Fn(u32) -> Option<UnwindRow>,
) -> Option<(UnwindRow, u32)> {
    let rel = ((addr >> PAGE_BITS) as u32).wrapping_sub(table.first_page);
    if (addr >> PAGE_BITS) > u32::MAX as u64 || rel >= table.n_pages {
        return None;
    }
    let pe = page(table.page_base.wrapping_add(rel))?;
    let target = (addr & ((1 << PAGE_BITS) - 1)) as u16;
    let (mut lo, mut hi) = (pe.first, pe.first.wrapping_add(pe.count as u32));
    // First row of the page above the target.
    for _ in 0..MAX_SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = (lo + hi) >> 1;
        if row(table.row_base.wrapping_add(mid))?.addr_lo <= target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return None;
    }
    // The row before it covers the target; below `first` it is an earlier page's last row.
    let r = row(table.row_base.wrapping_add(lo - 1))?;
    let mut diff = target as i32 - r.addr_lo as i32;
    if lo - 1 < pe.first || diff < 0 {
        diff += 1 << PAGE_BITS;
    }
    Some((r, diff as u32))
}

/// What one step of the walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The frame's CFA; `regs` now hold the caller's registers.
    Next { cfa: u64 },
    /// The walk ends at this frame ([`end`] reason); `cfa` is 0 when it is not known.
    Stop { cfa: u64, end: u32 },
}

/// `struct rt_sigframe` on x86-64: `uc_mcontext` (a `struct sigcontext`) starts 40 bytes above
/// the stack pointer a signal handler returns to `__restore_rt` with; rbp, rsp and rip are its
/// words 10, 15 and 16.
const SIGFRAME_MCONTEXT: u64 = 40;
const MCONTEXT_RBP: usize = 10;
const MCONTEXT_RSP: usize = 15;
const MCONTEXT_RIP: usize = 16;

/// Unwinds one frame with `rule` (found `diff` bytes past its row): the caller's registers go
/// to `regs`; `exact` says whether the caller's pc is an exact address (after a signal frame)
/// rather than a return address.
#[inline(always)]
pub fn step(regs: &mut Regs, exact: &mut bool, rule: &RuleRec, diff: u32, mem: &impl UserMemory) -> Step {
    let off = rule.cfa_off_at(diff) as i64;
    let cfa = match rule.kind & kind::CFA_MASK {
        kind::RSP => regs.sp.wrapping_add_signed(off),
        kind::RBP => regs.bp.wrapping_add_signed(off),
        kind::DEREF_RSP | kind::DEREF_RBP => {
            let base = if rule.kind & kind::CFA_MASK == kind::DEREF_RSP { regs.sp } else { regs.bp };
            let Some([v]) = mem.words::<1>(base.wrapping_add_signed((rule.cfa_off & !7) as i64)) else {
                return Step::Stop { cfa: 0, end: end::READ_FAILED };
            };
            v.wrapping_add(((rule.cfa_off & 7) * 8) as u64)
        }
        kind::PLT => regs.sp.wrapping_add(if (regs.pc & 15) >= rule.cfa_off as u64 { 16 } else { 8 }),
        kind::SIGNAL => {
            let Some(mc) = mem.words::<{ MCONTEXT_RIP + 1 }>(regs.sp.wrapping_add(SIGFRAME_MCONTEXT)) else {
                return Step::Stop { cfa: 0, end: end::READ_FAILED };
            };
            let cfa = regs.sp;
            *regs = Regs { pc: mc[MCONTEXT_RIP], sp: mc[MCONTEXT_RSP], bp: mc[MCONTEXT_RBP] };
            // The interrupted instruction itself, not a return address.
            *exact = true;
            return if regs.pc == 0 { Step::Stop { cfa, end: end::CLEAN } } else { Step::Next { cfa } };
        }
        kind::END => return Step::Stop { cfa: 0, end: end::CLEAN },
        _ => return Step::Stop { cfa: 0, end: end::NO_INFO },
    };
    // Stacks grow down: a caller's frame is above its callee's.
    if cfa <= regs.sp {
        return Step::Stop { cfa, end: end::BAD_FRAME };
    }
    let rbp_off = rule.rbp_off as i64;
    let (ra, bp) = match rule.kind & kind::RBP_MASK {
        // The common prologue (`push rbp` first): the saved rbp sits just below the return
        // address, so one read gets both.
        kind::RBP_AT_CFA if rbp_off == -16 => match mem.words::<2>(cfa.wrapping_sub(16)) {
            Some([bp, ra]) => (ra, bp),
            None => return Step::Stop { cfa, end: end::READ_FAILED },
        },
        k => {
            let Some([ra]) = mem.words::<1>(cfa.wrapping_sub(8)) else {
                return Step::Stop { cfa, end: end::READ_FAILED };
            };
            let bp = match k {
                kind::RBP_SAME => regs.bp,
                kind::RBP_LOST => 0,
                _ => {
                    let at = if k == kind::RBP_AT_CFA { cfa } else { regs.bp };
                    match mem.words::<1>(at.wrapping_add_signed(rbp_off)) {
                        Some([bp]) => bp,
                        None => return Step::Stop { cfa, end: end::READ_FAILED },
                    }
                }
            };
            (ra, bp)
        }
    };
    *regs = Regs { pc: ra, sp: cfa, bp };
    *exact = false;
    if ra == 0 { Step::Stop { cfa, end: end::CLEAN } } else { Step::Next { cfa } }
}

/// Unwinds one frame of code that has no table but keeps frame pointers (JIT code, generated
/// trampolines): the saved rbp at rbp, the return address above it. Accepted only if rbp
/// points into the stack above the stack pointer, as a frame would; otherwise the walk stops.
#[inline(always)]
pub fn frame_pointer_step(regs: &mut Regs, exact: &mut bool, mem: &impl UserMemory) -> Step {
    let bp = regs.bp;
    if bp < regs.sp || bp - regs.sp > MAX_FP_FRAME || bp & 7 != 0 {
        return Step::Stop { cfa: 0, end: end::NO_INFO };
    }
    let Some([saved_bp, ra]) = mem.words::<2>(bp) else {
        return Step::Stop { cfa: 0, end: end::READ_FAILED };
    };
    let cfa = bp + 16;
    *regs = Regs { pc: ra, sp: cfa, bp: saved_bp };
    *exact = false;
    if ra == 0 { Step::Stop { cfa, end: end::CLEAN } } else { Step::Next { cfa } }
}
