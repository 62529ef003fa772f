//! Maps and load-time globals shared by the programs. Names are listed in
//! `profiler_common::names`; userspace addresses them by those names.
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use profiler_common::{
    InFlight, OffCpuKey, OffCpuSum, PyProcInfo, ThreadTimes, TstateEntry, UnwindScratch,
    exit_gate::ExitGate,
    map_size,
    unwind::{Mapping, PageEntry, ProcMaps, RuleRec, TableInfo},
};

/// Events to userspace. Userspace resizes it at load time to fit the sampling rate.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(map_size::EVENTS_DEFAULT_BYTES, 0);

/// tgid → 1 for the processes being profiled, when not profiling the whole host.
#[map]
pub static TARGET_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(map_size::TARGET_PIDS, 0);

/// tgid → 1 for the targets whose children are profiled too: a child forked by one of them is
/// added here and to `TARGET_PIDS` before it first runs (see `lifecycle.rs`).
#[map]
pub static FOLLOWED: HashMap<u32, u8> = HashMap::with_max_entries(map_size::FOLLOWED, 0);

/// tgid → where that CPython process keeps its threads, and its version's offsets.
#[map]
pub static PY_PROCS: HashMap<u32, PyProcInfo> = HashMap::with_max_entries(map_size::PY_PROCS, 0);

/// tid → the thread's `PyThreadState` (0: none found, recheck after a while), so that the thread
/// list is only scanned for threads not seen before. LRU: threads come and go.
#[map]
pub static TSTATE_CACHE: LruHashMap<u32, TstateEntry> = LruHashMap::with_max_entries(map_size::TSTATE_CACHE, 0);

/// Exact off-CPU sums per (thread, state, syscall, first argument), read by userspace.
#[map]
pub static OFFCPU_SUMS: HashMap<OffCpuKey, OffCpuSum> = HashMap::with_max_entries(map_size::OFFCPU_SUMS, 0);

/// Per-thread scheduling timestamps and exact on-CPU time.
#[map]
pub static THREAD_TIMES: LruHashMap<u32, ThreadTimes> = LruHashMap::with_max_entries(map_size::THREAD_TIMES, 0);

/// The syscall each tracked thread is in. LRU: a thread killed mid-syscall never exits it.
#[map]
pub static IN_FLIGHT: LruHashMap<u32, InFlight> = LruHashMap::with_max_entries(map_size::IN_FLIGHT, 0);

/// Per CPU: which thread's `sys_exit` may have something to report, and where user registers
/// are on a kernel stack (see `profiler_common::exit_gate`).
#[map]
pub static EXIT_GATE: PerCpuArray<ExitGate> = PerCpuArray::with_max_entries(map_size::EXIT_GATE, 0);

/// Per-CPU counters, indexed by `profiler_common::stat`. Per-CPU because BPF has no cheap
/// 64-bit atomics on every kernel, and userspace sums them anyway.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(map_size::STATS, 0);

/// The native unwinder's tables (see `profiler_common::unwind`), written by userspace: rows,
/// page directories, the host-wide rule dictionary, where each binary's table is, and each
/// process's executable mappings. Rows and pages are written by userspace through a memory
/// mapping of the array (millions of rows would be as many syscalls).
#[map]
pub static UNWIND_ROWS: Array<u64> = Array::with_max_entries(map_size::UNWIND_ROW_PAIRS, BPF_F_MMAPABLE);
#[map]
pub static UNWIND_PAGES: Array<PageEntry> = Array::with_max_entries(map_size::UNWIND_PAGES, BPF_F_MMAPABLE);
#[map]
pub static UNWIND_RULES: Array<RuleRec> = Array::with_max_entries(map_size::UNWIND_RULES, 0);
#[map]
pub static UNWIND_TABLES: Array<TableInfo> = Array::with_max_entries(map_size::UNWIND_TABLES, 0);
#[map]
pub static UNWIND_MAPPINGS: Array<Mapping> = Array::with_max_entries(map_size::UNWIND_MAPPINGS, 0);
#[map]
pub static UNWIND_PROCS: HashMap<u32, ProcMaps> = HashMap::with_max_entries(map_size::UNWIND_PROCS, 0);

/// Where a sample is assembled while the unwinder's tail calls run (see `UnwindScratch`).
#[map]
pub static UNWIND_SCRATCH: PerCpuArray<UnwindScratch> = PerCpuArray::with_max_entries(map_size::UNWIND_SCRATCH, 0);

/// The unwinder programs, tail-called by the sampling programs (one array per program type).
#[map]
pub static UNWIND_PROGS_PERF: ProgramArray = ProgramArray::with_max_entries(map_size::UNWIND_PROGS, 0);
#[map]
pub static UNWIND_PROGS_RAW_TP: ProgramArray = ProgramArray::with_max_entries(map_size::UNWIND_PROGS, 0);

// Globals set by userspace before load (aya `EbpfLoader::set_global`). Read with read_volatile so
// the compiler does not constant-fold the zero initialiser.
#[unsafe(no_mangle)]
static TARGET_ALL: u8 = 0;
#[unsafe(no_mangle)]
static KERNEL_STACKS: u8 = 0;
#[unsafe(no_mangle)]
static SELF_PID: u32 = 0;
#[unsafe(no_mangle)]
static FSBASE_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static PY_MAX_DEPTH: u32 = 0;
#[unsafe(no_mangle)]
static OFFCPU: u8 = 0;
#[unsafe(no_mangle)]
static OFFCPU_THRESHOLD_NS: u64 = 0;
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_FLAGS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_STATE_OFFSET: u32 = 0;

#[unsafe(no_mangle)]
static OFFCPU_STACK_COST_NS: u64 = 0;
#[unsafe(no_mangle)]
static NATIVE: u8 = 0;
#[unsafe(no_mangle)]
static TASK_STACK_OFFSET: u32 = 0;

/// Is the DWARF unwinder on (`--native`)?
#[inline(always)]
pub fn native() -> bool {
    unsafe { core::ptr::read_volatile(&NATIVE) != 0 }
}

/// Offset of `stack` in `task_struct`, 0 if unknown.
#[inline(always)]
pub fn task_stack_offset() -> u32 {
    unsafe { core::ptr::read_volatile(&TASK_STACK_OFFSET) }
}

/// Stack budget one off-CPU stack costs (see `ThreadTimes::take_stack_credit`).
#[inline(always)]
pub fn offcpu_stack_cost_ns() -> u64 {
    unsafe { core::ptr::read_volatile(&OFFCPU_STACK_COST_NS) }
}

#[inline(always)]
pub fn offcpu_threshold_ns() -> u64 {
    unsafe { core::ptr::read_volatile(&OFFCPU_THRESHOLD_NS) }
}

/// Offsets of `pid` and `tgid` in `task_struct`.
#[inline(always)]
fn task_pid_offsets() -> (u32, u32) {
    unsafe { (core::ptr::read_volatile(&TASK_PID_OFFSET), core::ptr::read_volatile(&TASK_TGID_OFFSET)) }
}

/// (tid, tgid) of a task that is not the current one, read at the offsets from kernel BTF:
/// one read where `tgid` follows `pid` (every kernel's `task_struct` so far), two otherwise.
#[inline(always)]
pub fn task_ids(task: u64) -> Option<(u32, u32)> {
    let (pid_off, tgid_off) = task_pid_offsets();
    if pid_off == 0 {
        return None;
    }
    if tgid_off == pid_off + 4 {
        let both = unsafe { bpf_probe_read_kernel((task + pid_off as u64) as *const u64) }.ok()?;
        return Some((both as u32, (both >> 32) as u32));
    }
    let tid = unsafe { bpf_probe_read_kernel((task + pid_off as u64) as *const u32) }.ok()?;
    let tgid = unsafe { bpf_probe_read_kernel((task + tgid_off as u64) as *const u32) }.ok()?;
    Some((tid, tgid))
}

/// Offset of `flags` in `task_struct`, 0 if unknown.
#[inline(always)]
pub fn task_flags_offset() -> u32 {
    unsafe { core::ptr::read_volatile(&TASK_FLAGS_OFFSET) }
}

/// Offset of `__state` (or, before 5.14, `state`) in `task_struct`; 0 if unknown.
#[inline(always)]
pub fn task_state_offset() -> u32 {
    unsafe { core::ptr::read_volatile(&TASK_STATE_OFFSET) }
}

/// Is off-CPU time of this process tracked? Python processes, and explicit targets.
#[inline(always)]
pub fn is_offcpu_target(tgid: u32) -> bool {
    if unsafe { core::ptr::read_volatile(&OFFCPU) } == 0 || tgid == self_pid() {
        return false;
    }
    PY_PROCS.get_ptr(tgid).is_some() || (!target_all() && TARGET_PIDS.get_ptr(tgid).is_some())
}

#[inline(always)]
pub fn target_all() -> bool {
    unsafe { core::ptr::read_volatile(&TARGET_ALL) != 0 }
}

#[inline(always)]
pub fn kernel_stacks() -> bool {
    unsafe { core::ptr::read_volatile(&KERNEL_STACKS) != 0 }
}

#[inline(always)]
pub fn fsbase_offset() -> u32 {
    unsafe { core::ptr::read_volatile(&FSBASE_OFFSET) }
}

#[inline(always)]
pub fn py_max_depth() -> u32 {
    unsafe { core::ptr::read_volatile(&PY_MAX_DEPTH) }
}

#[inline(always)]
pub fn self_pid() -> u32 {
    unsafe { core::ptr::read_volatile(&SELF_PID) }
}

/// Is this process one we profile?
#[inline(always)]
pub fn is_target(tgid: u32) -> bool {
    if tgid == self_pid() {
        return false;
    }
    target_all() || TARGET_PIDS.get_ptr(tgid).is_some()
}

#[inline(always)]
pub fn bump(counter: u32) {
    if let Some(p) = STATS.get_ptr_mut(counter) {
        // Per-CPU slot, and perf-event programs do not nest on one CPU: no race.
        unsafe { *p += 1 };
    }
}

/// The Python unwinder's copy of a window of the walked thread's frame memory (see
/// `python::FrameWindow`), one per scratch slot: an on-CPU sample can interrupt a `sys_exit`
/// program walking on the same CPU. Too large for the 512-byte BPF stack.
#[map]
pub static PY_WINDOWS: PerCpuArray<crate::python::FrameWindow> =
    PerCpuArray::with_max_entries(profiler_common::scratch_slot::COUNT, 0);
