//! The native unwinder: walks a thread's user stack from DWARF CFI tables userspace built
//! (`profiler_common::unwind` has the tables and the step, shared with userspace's tests).
//!
//! A sampling program fills the sample in its per-CPU scratch record, puts the thread's user
//! registers in the walk state and tail-calls the unwinder, which walks
//! `unwind::FRAMES_PER_RUN` frames per run and tail-calls itself for the next ones (5.10 has no
//! `bpf_loop`; the kernel allows 33 tail calls, 16 cover every frame the event holds). At the
//! end, or if a tail call fails, the unwinder copies the event to the ring buffer: a ring-buffer
//! reservation cannot be held across tail calls.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user, generated::bpf_get_current_task},
    macros::{perf_event, raw_tracepoint},
    maps::ProgramArray,
    programs::{PerfEventContext, RawTracePointContext},
};
use profiler_common::{
    MAX_NATIVE_FRAMES, UNWIND_PROG_INDEX, UnwindScratch, scratch_slot, stat,
    unwind::{
        FRAMES_PER_RUN, NO_TABLE, Regs, Step, UnwindState, UserMemory, end, find_mapping, find_row, frame_pointer_step,
        mapping_flags, row_of_pair, step,
    },
};

use crate::maps::{
    UNWIND_MAPPINGS, UNWIND_PAGES, UNWIND_PROCS, UNWIND_PROGS_PERF, UNWIND_PROGS_RAW_TP, UNWIND_ROWS, UNWIND_RULES,
    UNWIND_SCRATCH, UNWIND_TABLES, bump, native, task_stack_offset,
};

/// x86-64 `struct pt_regs` (uapi, stable): size and the offsets of the registers the walk needs.
const PT_REGS_SIZE: u64 = 168;
const PT_REGS_BP: u64 = 32;
const PT_REGS_IP: u64 = 128;
const PT_REGS_CS: u64 = 136;
const PT_REGS_SP: u64 = 152;
const PT_REGS_SS: u64 = 160;
/// User-mode code and stack segment selectors (`__USER_CS`, `__USER_DS`): pt_regs that hold
/// them are a user context.
const USER_CS: u64 = 0x33;
const USER_SS: u64 = 0x2b;

/// The user stack, through `bpf_probe_read_user`.
struct Stack;

impl UserMemory for Stack {
    #[inline(always)]
    fn words<const N: usize>(&self, addr: u64) -> Option<[u64; N]> {
        unsafe { bpf_probe_read_user(addr as *const [u64; N]) }.ok()
    }
}

#[inline(always)]
fn kernel_u64(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}

/// The user registers saved in `pt_regs` at `regs` (a kernel address).
#[inline(always)]
pub fn regs_at(regs: u64) -> Option<Regs> {
    Some(Regs {
        pc: kernel_u64(regs + PT_REGS_IP)?,
        sp: kernel_u64(regs + PT_REGS_SP)?,
        bp: kernel_u64(regs + PT_REGS_BP)?,
    })
}

/// The current task's user registers, saved at the top of its kernel stack when it entered
/// the kernel. Found from `task_struct.stack` (BTF) rather than `bpf_task_pt_regs` (5.15+):
/// the kernel stack is 16 KiB (32 KiB with KASAN) and the top may be padded by 16 bytes
/// (FRED), so each candidate is checked for user segment selectors.
#[inline(always)]
pub fn current_user_regs() -> Option<Regs> {
    let off = task_stack_offset();
    if off == 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    let stack = kernel_u64(task + off as u64)?;
    for top in [16u64 << 10, 32 << 10] {
        for pad in [0u64, 16] {
            let regs = stack + top - pad - PT_REGS_SIZE;
            if kernel_u64(regs + PT_REGS_CS) == Some(USER_CS) && kernel_u64(regs + PT_REGS_SS) == Some(USER_SS) {
                return regs_at(regs);
            }
        }
    }
    None
}

/// The user registers of a perf-event sample: the interrupted ones when it hit user mode,
/// else the task's saved user context.
#[inline(always)]
pub fn perf_user_regs(ctx: &PerfEventContext) -> Option<Regs> {
    // bpf_perf_event_data starts with the interrupted pt_regs; the verifier rewrites these
    // context loads.
    let regs = ctx.as_ptr() as *const u64;
    let word = |off: u64| unsafe { core::ptr::read_volatile(regs.add((off / 8) as usize)) };
    if word(PT_REGS_CS) & 3 == 3 {
        return Some(Regs { pc: word(PT_REGS_IP), sp: word(PT_REGS_SP), bp: word(PT_REGS_BP) });
    }
    current_user_regs()
}

/// Sets up the walk of process `tgid`'s stack from `regs` in the scratch record. False when the
/// unwinder does not apply (off, or the process's mappings are not known yet): the caller
/// then takes the frame-pointer stack.
#[inline(always)]
pub fn prepare(s: &mut UnwindScratch, tgid: u32, regs: impl FnOnce() -> Option<Regs>) -> bool {
    if !native() {
        return false;
    }
    let Some(maps) = (unsafe { UNWIND_PROCS.get(&tgid) }) else { return false };
    let Some(regs) = regs() else {
        s.ev.user_stack_len = 0;
        s.ev.user_end = end::NO_REGS;
        return false;
    };
    bump(stat::NATIVE_WALKS);
    s.state = UnwindState {
        pc: regs.pc,
        sp: regs.sp,
        bp: regs.bp,
        maps_base: maps.base,
        maps_count: maps.count,
        last_map: 0,
        exact: 1,
        runs: 0,
        search_lo: 0,
    };
    s.ev.user_sp = regs.sp;
    s.ev.user_stack_len = 0;
    true
}

/// Unwinds on-CPU samples (tail-called by `on_cpu_sample`).
#[perf_event]
pub fn unwind_native_on_cpu(ctx: PerfEventContext) -> u32 {
    run(&ctx, scratch_slot::ON_CPU, &UNWIND_PROGS_PERF, UNWIND_PROG_INDEX);
    0
}

/// Unwinds off-CPU stacks taken at `sys_exit`.
#[raw_tracepoint]
pub fn unwind_native_sys_exit(ctx: RawTracePointContext) -> i32 {
    run(&ctx, scratch_slot::SYS_EXIT, &UNWIND_PROGS_RAW_TP, scratch_slot::SYS_EXIT);
    0
}

/// Unwinds stacks of preempted threads taken at `sched_switch`.
#[raw_tracepoint]
pub fn unwind_native_sched_switch(ctx: RawTracePointContext) -> i32 {
    run(&ctx, scratch_slot::SCHED_SWITCH, &UNWIND_PROGS_RAW_TP, scratch_slot::SCHED_SWITCH);
    0
}

/// Starts the walk [`prepare`] set up: a tail call into the unwinder at `index` of `progs`.
/// Returns only if the call failed; the caller then sends what it has.
#[inline(always)]
pub fn start<C: EbpfContext>(ctx: &C, progs: &ProgramArray, index: u32) {
    unsafe { progs.tail_call(ctx, index) };
}

/// Sends the event in the scratch record (its filled part: `sample_out`).
#[inline(always)]
pub fn submit(s: &UnwindScratch) {
    if !crate::sample_out::send(&s.ev) {
        bump(stat::LOST);
    }
}

/// One run: up to `FRAMES_PER_RUN` frames, then a tail call to the next run, or the event out.
#[inline(always)]
fn run<C: EbpfContext>(ctx: &C, slot: u32, progs: &ProgramArray, index: u32) {
    let Some(s) = UNWIND_SCRATCH.get_ptr_mut(slot) else { return };
    let s = unsafe { &mut *s };
    bump(stat::NATIVE_RUNS);
    let st = s.state;
    let mut regs = Regs { pc: st.pc, sp: st.sp, bp: st.bp };
    let mut exact = st.exact != 0;
    let mut last = st.last_map;
    let mut n = s.ev.user_stack_len;
    let mut finished = false;
    for _ in 0..FRAMES_PER_RUN {
        if n as usize >= MAX_NATIVE_FRAMES {
            s.ev.user_end = end::TRUNCATED;
            finished = true;
            break;
        }
        let pc = regs.pc;
        let lookup = if exact { pc } else { pc.wrapping_sub(1) };
        let (maps_base, maps_count) = (st.maps_base, st.maps_count);
        let found = find_mapping(
            st.search_lo,
            maps_count,
            last,
            lookup,
            |i| UNWIND_MAPPINGS.get(maps_base.wrapping_add(i)).map(|m| m.start),
            |i| UNWIND_MAPPINGS.get(maps_base.wrapping_add(i)).copied(),
        );
        let result = match found {
            None => Step::Stop { cfa: 0, end: end::UNMAPPED },
            Some((i, m)) => {
                last = i;
                if m.table == NO_TABLE {
                    if m.flags & mapping_flags::FRAME_POINTERS != 0 {
                        frame_pointer_step(&mut regs, &mut exact, &Stack)
                    } else {
                        Step::Stop { cfa: 0, end: end::NO_INFO }
                    }
                } else {
                    let row = UNWIND_TABLES.get(m.table).and_then(|t| {
                        find_row(
                            t,
                            lookup.wrapping_sub(m.bias),
                            |p| UNWIND_PAGES.get(p).copied(),
                            |r| UNWIND_ROWS.get(r >> 1).map(|pair| row_of_pair(*pair, r)),
                        )
                    });
                    match row.and_then(|(r, diff)| UNWIND_RULES.get(r.rule as u32).map(|rule| (*rule, diff))) {
                        Some((rule, diff)) => step(&mut regs, &mut exact, &rule, diff, &Stack),
                        None => Step::Stop { cfa: 0, end: end::NO_INFO },
                    }
                }
            }
        };
        let (cfa, stop) = match result {
            Step::Next { cfa } => (cfa, None),
            Step::Stop { cfa, end } => (cfa, Some(end)),
        };
        let i = n as usize;
        if i < MAX_NATIVE_FRAMES {
            s.ev.user_stack[i] = pc;
            s.ev.user_cfa[i] = cfa;
        }
        n += 1;
        if let Some(reason) = stop {
            s.ev.user_end = reason;
            finished = true;
            break;
        }
    }
    s.ev.user_stack_len = n;
    if !finished {
        s.state.pc = regs.pc;
        s.state.sp = regs.sp;
        s.state.bp = regs.bp;
        s.state.exact = exact as u32;
        s.state.last_map = last;
        s.state.runs += 1;
        start(ctx, progs, index);
        // Out of tail calls: what was walked so far goes out as truncated.
        s.ev.user_end = end::TRUNCATED;
    }
    submit(s);
}
