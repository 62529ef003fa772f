//! Loads the embedded eBPF object, configures it and attaches it; reads its maps.
mod batch;
#[cfg(test)]
mod contract;
mod event_reader;
pub mod kernel_btf;
pub mod task_iter;
mod wait_target_offsets;

use std::os::fd::OwnedFd;

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        PerfEvent, RawTracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use profiler_common::{
    MAX_NATIVE_FRAMES, OffCpuKey, OffCpuSum, PyProcInfo, SampleEvent, ThreadTimes, TstateEntry, UNWIND_PROG_INDEX,
    map_size, names, split_off_interval, stat,
    unwind::{Mapping, PageEntry, ProcMaps, RuleRec, TableInfo, UnwindRow},
};

use crate::{
    error::{ExitCode, fatal},
    host::memory::ReadMemory as _,
};

/// The eBPF object built by build.rs from the profiler-ebpf crate.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

#[derive(Clone, Copy)]
pub struct BpfConfig {
    /// Sample every process (true) or only pids added with [`Bpf::add_target`].
    pub target_all: bool,
    pub kernel_stacks: bool,
    /// Samples per second per CPU.
    pub frequency: u32,
    /// Turn on the kernel's per-program run time accounting while we run.
    pub bpf_stats: bool,
    /// Python frames walked at most per sample.
    pub py_max_depth: u32,
    /// Track off-CPU time (scheduler and syscall hooks).
    pub off_cpu: bool,
    /// Blocked syscalls at least this long are reported with their stacks.
    pub off_cpu_threshold_ns: u64,
    /// Off-CPU stacks per second per thread at most (0: unlimited).
    pub off_cpu_stack_rate: u32,
    /// Walk native stacks with the DWARF unwinder, with room for this many unwind rows (None:
    /// frame pointers only).
    pub native_rows: Option<u32>,
    /// Follow the children of processes added with [`Bpf::follow`]: the fork hook is attached.
    pub follow_children: bool,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub lost: u64,
    pub py_thread_scans: u64,
    /// Off-CPU stacks not taken: their thread's stack budget was spent.
    pub offcpu_sampled_out: u64,
    /// Children of followed processes that could not be followed (a map was full).
    pub follow_full: u64,
    /// Stacks the DWARF unwinder walked, and the runs of its program that took.
    pub native_walks: u64,
    pub native_runs: u64,
}

/// The native unwinder's tables in the kernel (see `profiler_common::unwind`); userspace
/// decides what goes where (`crate::native`), this writes it.
pub struct UnwindMaps {
    /// Rows, two per element, written through a memory mapping of the array.
    rows: MappedArray,
    pages: MappedArray,
    rules: Array<MapData, RuleRec>,
    tables: Array<MapData, TableInfo>,
    mappings: Array<MapData, Mapping>,
    procs: HashMap<MapData, u32, ProcMaps>,
    /// Held for as long as the programs run: the kernel empties a program array when the last
    /// userspace descriptor of it is closed.
    _progs: Vec<ProgramArray<MapData>>,
}

/// A `BPF_F_MMAPABLE` array's values, mapped into our memory: what we write there the kernel
/// reads at once, with no syscall per element.
struct MappedArray {
    ptr: std::ptr::NonNull<u8>,
    bytes: usize,
    _map: MapData,
}

// SAFETY: the mapping is owned by this value alone and only written through `&mut self`.
unsafe impl Send for MappedArray {}

impl MappedArray {
    fn new(map: aya::maps::Map, value_size: usize) -> anyhow::Result<Self> {
        use std::os::fd::AsFd as _;
        let aya::maps::Map::Array(data) = map else { anyhow::bail!("not an array map") };
        let info = data.info()?;
        let bytes = info.max_entries() as usize * value_size.next_multiple_of(8);
        let fd = data.fd().as_fd();
        // SAFETY: a shared mapping of the array's values, which the kernel sized for exactly
        // this (the array was created with BPF_F_MMAPABLE); unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("cannot map an unwind table array");
        }
        let ptr = std::ptr::NonNull::new(ptr.cast()).context("mmap returned null")?;
        Ok(Self { ptr, bytes, _map: data })
    }

    /// Copies `src` (plain integers) to byte offset `at`, if it fits.
    fn write<T: Copy>(&mut self, at: usize, src: &[T]) -> bool {
        let len = size_of_val(src);
        if at.checked_add(len).is_none_or(|end| end > self.bytes) {
            return false;
        }
        // SAFETY: in bounds (checked above) of a mapping we own; T is plain data.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().cast::<u8>(), self.ptr.as_ptr().add(at), len) };
        true
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

impl UnwindMaps {
    /// Rows the array holds.
    pub fn row_capacity(&self) -> u64 {
        (self.rows.bytes / size_of::<UnwindRow>()) as u64
    }

    /// Writes rows from index `first` on.
    pub fn set_rows(&mut self, first: u32, rows: &[UnwindRow]) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rows.write(first as usize * size_of::<UnwindRow>(), rows),
            "unwind rows {first}+{} beyond the array",
            rows.len()
        );
        Ok(())
    }

    /// Writes page entries from index `first` on.
    pub fn set_pages(&mut self, first: u32, pages: &[PageEntry]) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.pages.write(first as usize * size_of::<PageEntry>(), pages),
            "unwind pages {first}+{} beyond the array",
            pages.len()
        );
        Ok(())
    }
    pub fn set_rule(&mut self, index: u32, rule: &RuleRec) -> anyhow::Result<()> {
        self.rules.set(index, rule, 0).with_context(|| format!("cannot write unwind rule {index}"))
    }
    pub fn set_table(&mut self, index: u32, table: &TableInfo) -> anyhow::Result<()> {
        self.tables.set(index, table, 0).with_context(|| format!("cannot write unwind table {index}"))
    }
    pub fn set_mapping(&mut self, index: u32, mapping: &Mapping) -> anyhow::Result<()> {
        self.mappings.set(index, mapping, 0).with_context(|| format!("cannot write mapping {index}"))
    }
    pub fn set_process(&mut self, pid: u32, maps: &ProcMaps) -> anyhow::Result<()> {
        self.procs.insert(pid, maps, 0).with_context(|| format!("cannot register pid {pid}'s mappings"))
    }
    pub fn remove_process(&mut self, pid: u32) {
        let _ = self.procs.remove(&pid);
    }
}

/// The first argument the kernel records for syscall `nr` at its first switch-out (see
/// `profiler_common::poll_arg` and `futex_arg`), worked out for a thread found already in the
/// call, from its arguments and stack pointer and its process's memory.
pub fn recorded_arg0(memory: &crate::host::memory::Memory, nr: i64, args: &[u64; 6], sp: u64) -> u64 {
    let arg0 = profiler_common::poll_arg::encode(nr, args[0], args[1], |addr| {
        let mut word = [0u8; 8];
        memory.read(addr, &mut word).then(|| u64::from_ne_bytes(word))
    });
    let arg0 = profiler_common::child_wait::encode(nr, arg0);
    profiler_common::futex_arg::encode(nr, arg0, sp)
}

/// Run count and time of one of our programs, from the kernel's BPF stats.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgramStats {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

pub struct Bpf {
    ebpf: Ebpf,
    /// The `EVENTS` ring buffer, read by a thread of its own (see `event_reader`).
    events: event_reader::EventReader,
    stats: PerCpuArray<MapData, u64>,
    targets: HashMap<MapData, u32, u8>,
    followed: HashMap<MapData, u32, u8>,
    py_procs: HashMap<MapData, u32, PyProcInfo>,
    tstate_cache: HashMap<MapData, u32, TstateEntry>,
    offcpu_sums: HashMap<MapData, OffCpuKey, OffCpuSum>,
    thread_times: HashMap<MapData, u32, ThreadTimes>,
    in_flight: HashMap<MapData, u32, profiler_common::InFlight>,
    /// The native unwinder's tables (with `--native`).
    pub unwind: Option<UnwindMaps>,
    /// The task iterator: loaded on first use (None: not yet; Some(None): the kernel
    /// refused it), so that profiles without blocked threads do not wait for its verifier.
    task_iter: Option<Option<task_iter::TaskIter>>,
    /// Keeps BPF run-time accounting on for as long as we hold it.
    _stats_fd: Option<OwnedFd>,
    pub cpus: usize,
    /// Off-CPU tracking is on.
    off_cpu: bool,
    /// The exit and rename hooks are attached: thread and process life come as events (else
    /// the session rescans /proc at every window).
    pub life_events: bool,
    /// What one off-CPU stack costs of a thread's budget (see the kernel's `take_stack_budget`).
    stack_cost_ns: u64,
    cpu_list: Vec<u32>,
    period_ns: u64,
}

/// How many ring buffers' worth of records may wait in userspace for the session (see
/// `event_reader`): 8, so 64 MiB with off-CPU tracking at most, and only while the session is stalled.
const READER_QUEUE_BUFFERS: usize = 8;

/// Ring buffer for half a second of samples at the configured rate: it is drained every 50 ms,
/// so that is a 10x margin, and its pages count in our RSS once touched. A power of two of at
/// least 1 MiB, as the kernel requires.
/// Off-CPU events (one per long blocking syscall) come in bursts that no rate bounds, so with
/// off-CPU tracking the buffer holds at least 8 MiB (about 1600 events per 50 ms drain).
fn ring_buffer_bytes(frequency: u32, cpus: usize, off_cpu: bool) -> u32 {
    let per_second = frequency as u64 * cpus as u64 * (size_of::<SampleEvent>() as u64 + 8);
    let floor = if off_cpu { 8 << 20 } else { 1 << 20 };
    (per_second / 2).clamp(floor, 256 << 20).next_power_of_two() as u32
}

impl Bpf {
    pub fn load(cfg: &BpfConfig) -> anyhow::Result<Self> {
        let cpu_list = online_cpus()
            .map_err(|(path, e)| fatal(ExitCode::Kernel, format!("cannot read the online CPUs from {path}: {e}")))?;
        let stats_fd = if cfg.bpf_stats {
            Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| {
                fatal(ExitCode::Kernel, format!("cannot enable BPF run-time statistics (needs Linux 5.8+): {e}"))
            })?)
        } else {
            None
        };

        let ring_bytes = ring_buffer_bytes(cfg.frequency, cpu_list.len(), cfg.off_cpu);
        let target_all = cfg.target_all as u8;
        let kernel_stacks = cfg.kernel_stacks as u8;
        let self_pid = std::process::id();
        // Only CPython 3.8–3.10 need it (their thread states hold a pthread_t, not a tid).
        let fsbase_offset = kernel_btf::fsbase_offset().unwrap_or_else(|| {
            log::warn!("no task_struct.thread.fsbase in the kernel's BTF: CPython 3.8-3.10 threads cannot be matched");
            0
        });
        let py_max_depth = cfg.py_max_depth.min(profiler_common::MAX_PY_FRAMES as u32);
        let btf = kernel_btf::KernelBtf::load();
        let task_pid = btf.as_ref().and_then(|b| b.offset_of("task_struct", &["pid"])).unwrap_or(0);
        let task_tgid = btf.as_ref().and_then(|b| b.offset_of("task_struct", &["tgid"])).unwrap_or(0);
        // Without it, kernel threads' samples stay `[no user stack]` unless --kernel is given.
        let task_flags = btf.as_ref().and_then(|b| b.offset_of("task_struct", &["flags"])).unwrap_or(0);
        // Without them the scheduler hooks cannot tell whose switch they see: on-CPU sampling
        // goes on without them (a kernel built without CONFIG_DEBUG_INFO_BTF).
        let task_ids_known = task_pid != 0 && task_tgid != 0;
        if cfg.off_cpu && !task_ids_known {
            log::warn!(
                "{}: off-CPU tracking is off (on-CPU sampling goes on)",
                if btf.is_none() {
                    "this kernel has no BTF (/sys/kernel/btf/vmlinux)"
                } else {
                    "the kernel's BTF has no task_struct.pid/tgid"
                }
            );
        }
        // The fork hook reads the child's tgid at the same offsets: without them, the children
        // running at start are still found from /proc, later ones are not.
        if cfg.follow_children && !task_ids_known {
            log::warn!(
                "{}: child processes started from now on are not followed (those running now are)",
                if btf.is_none() {
                    "this kernel has no BTF (/sys/kernel/btf/vmlinux)"
                } else {
                    "the kernel's BTF has no task_struct.pid/tgid"
                }
            );
        }
        let cfg = &BpfConfig {
            off_cpu: cfg.off_cpu && task_ids_known,
            follow_children: cfg.follow_children && task_ids_known,
            ..*cfg
        };
        let task_state = match btf.as_ref().and_then(|b| b.offset_of_any("task_struct", kernel_btf::TASK_STATE_PATHS)) {
            Some((off, _)) => off,
            None => {
                if cfg.off_cpu {
                    log::warn!(
                        "no task_struct.__state or .state in the kernel's BTF: off-CPU waits in uninterruptible sleep (D) count as sleep, not disk"
                    );
                }
                0
            }
        };
        let off_cpu = cfg.off_cpu as u8;
        let wait_targets = wait_target_offsets::wait_target_offsets(btf.as_ref());
        let task_sched = task_iter::sched_offsets(btf.as_ref());
        if cfg.off_cpu && wait_targets.enabled == 0 {
            log::warn!(
                "the kernel's BTF lacks the fd table or file members: wait targets are looked up in /proc after the fact"
            );
        }
        let lifecycle = profiler_common::lifecycle::LifecycleOffsets {
            task_signal: btf.as_ref().and_then(|b| b.offset_of("task_struct", &["signal"])).unwrap_or(0),
            signal_live: btf.as_ref().and_then(|b| b.offset_of("signal_struct", &["live"])).unwrap_or(0),
        };
        if lifecycle.task_signal == 0 || lifecycle.signal_live == 0 {
            log::warn!(
                "no task_struct.signal or signal_struct.live in the kernel's BTF: a process whose main thread exits before its other threads is noticed by the periodic rescan only"
            );
        }
        let native = cfg.native_rows.is_some() as u8;
        let task_stack = btf.as_ref().and_then(|b| b.offset_of("task_struct", &["stack"])).unwrap_or(0);
        if native != 0 && task_stack == 0 {
            log::warn!(
                "no task_struct.stack in the kernel's BTF: native stacks of samples taken in the kernel use frame pointers"
            );
        }
        // The tables' arrays are allocated in full when loaded: without --native, one entry each.
        let unwind_sizes: [(&str, u32); 5] = match cfg.native_rows {
            Some(rows) => [
                (names::MAP_UNWIND_ROWS, rows.div_ceil(2).max(1)),
                (names::MAP_UNWIND_PAGES, map_size::UNWIND_PAGES),
                (names::MAP_UNWIND_RULES, map_size::UNWIND_RULES),
                (names::MAP_UNWIND_TABLES, map_size::UNWIND_TABLES),
                (names::MAP_UNWIND_MAPPINGS, map_size::UNWIND_MAPPINGS),
            ],
            None => [
                (names::MAP_UNWIND_ROWS, 1),
                (names::MAP_UNWIND_PAGES, 1),
                (names::MAP_UNWIND_RULES, 1),
                (names::MAP_UNWIND_TABLES, 1),
                (names::MAP_UNWIND_MAPPINGS, 1),
            ],
        };
        let stack_cost_ns: u64 =
            if cfg.off_cpu_stack_rate == 0 { 0 } else { 1_000_000_000 / cfg.off_cpu_stack_rate as u64 };
        let mut loader = EbpfLoader::new();
        for (map, entries) in unwind_sizes {
            loader.map_max_entries(map, entries);
        }
        let mut ebpf = loader
            .override_global(names::GLOBAL_TARGET_ALL, &target_all, true)
            .override_global(names::GLOBAL_KERNEL_STACKS, &kernel_stacks, true)
            .override_global(names::GLOBAL_SELF_PID, &self_pid, true)
            .override_global(names::GLOBAL_FSBASE_OFFSET, &fsbase_offset, true)
            .override_global(names::GLOBAL_PY_MAX_DEPTH, &py_max_depth, true)
            .override_global(names::GLOBAL_OFFCPU, &off_cpu, true)
            .override_global(names::GLOBAL_OFFCPU_THRESHOLD_NS, &cfg.off_cpu_threshold_ns, true)
            .override_global(names::GLOBAL_OFFCPU_STACK_COST_NS, &stack_cost_ns, true)
            .override_global(names::GLOBAL_TASK_PID_OFFSET, &task_pid, true)
            .override_global(names::GLOBAL_TASK_TGID_OFFSET, &task_tgid, true)
            .override_global(names::GLOBAL_TASK_FLAGS_OFFSET, &task_flags, true)
            .override_global(names::GLOBAL_NATIVE, &native, true)
            .override_global(names::GLOBAL_TASK_STACK_OFFSET, &task_stack, true)
            .override_global(names::GLOBAL_TASK_STATE_OFFSET, &task_state, true)
            .override_global(names::GLOBAL_WAIT_TARGET_OFFSETS, &wait_targets, true)
            .override_global(names::GLOBAL_LIFECYCLE_OFFSETS, &lifecycle, true)
            .override_global(profiler_common::task_iter::GLOBAL_TASK_SCHED_OFFSETS, &task_sched, true)
            .map_max_entries(names::MAP_EVENTS, ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                fatal(
                    ExitCode::Kernel,
                    format!(
                        "the kernel refused pyebpf's eBPF programs ({}); pyebpf needs Linux 5.8+ with BPF, BTF and ring buffers",
                        error_chain(&e)
                    ),
                )
            })?;

        let program: &mut PerfEvent =
            ebpf.program_mut(names::PROG_ON_CPU).context("on-CPU program missing from the eBPF object")?.try_into()?;
        program.load().map_err(|e| {
            fatal(ExitCode::Kernel, format!("the kernel refused the on-CPU sampling program: {}", error_chain(&e)))
        })?;
        // Attached by `start_sampling`, once the caller has registered what it knows of.

        // The exec and exit hooks always; the fork hook (children followed, new Python
        // threads announced) and the rename hook when the task's ids can be read; the
        // scheduler and syscall hooks only for off-CPU tracking.
        let mut life_events = task_ids_known;
        for (prog, tracepoint) in names::RAW_TRACEPOINTS {
            let wanted = match prog {
                names::PROG_EXEC | names::PROG_EXIT => true,
                names::PROG_FORK | names::PROG_RENAME => task_ids_known,
                _ => cfg.off_cpu,
            };
            if !wanted {
                continue;
            }
            // Thread and process life are known from /proc without them (a slower rescan).
            if matches!(prog, names::PROG_EXIT | names::PROG_RENAME) {
                if let Err(e) = attach_raw_tracepoint(&mut ebpf, prog, tracepoint) {
                    log::warn!("{e:#}: thread exits and renames are found by rescanning /proc");
                    life_events = false;
                }
                continue;
            }
            attach_raw_tracepoint(&mut ebpf, prog, tracepoint)?;
        }

        let unwind = match cfg.native_rows {
            Some(_) => Some(load_unwinder(&mut ebpf, cfg.off_cpu)?),
            None => None,
        };

        let events = RingBuf::try_from(ebpf.take_map(names::MAP_EVENTS).context("EVENTS map missing")?)?;
        // Records wait in userspace for up to 8 buffers' worth while the session is busy.
        let events =
            event_reader::EventReader::start(events, ring_bytes as usize, ring_bytes as usize * READER_QUEUE_BUFFERS)
                .context("cannot start the ring buffer's reader thread")?;
        let stats = PerCpuArray::try_from(ebpf.take_map(names::MAP_STATS).context("STATS map missing")?)?;
        let targets = HashMap::try_from(ebpf.take_map(names::MAP_TARGET_PIDS).context("TARGET_PIDS map missing")?)?;
        let followed = HashMap::try_from(ebpf.take_map(names::MAP_FOLLOWED).context("FOLLOWED map missing")?)?;
        let py_procs = HashMap::try_from(ebpf.take_map(names::MAP_PY_PROCS).context("PY_PROCS map missing")?)?;
        let tstate_cache =
            HashMap::try_from(ebpf.take_map(names::MAP_TSTATE_CACHE).context("TSTATE_CACHE map missing")?)?;
        let offcpu_sums = HashMap::try_from(ebpf.take_map(names::MAP_OFFCPU_SUMS).context("OFFCPU_SUMS map missing")?)?;
        let thread_times =
            HashMap::try_from(ebpf.take_map(names::MAP_THREAD_TIMES).context("THREAD_TIMES map missing")?)?;
        let in_flight = HashMap::try_from(ebpf.take_map(names::MAP_IN_FLIGHT).context("IN_FLIGHT map missing")?)?;
        Ok(Self {
            ebpf,
            events,
            stats,
            targets,
            followed,
            py_procs,
            tstate_cache,
            offcpu_sums,
            thread_times,
            in_flight,
            unwind,
            task_iter: None,
            _stats_fd: stats_fd,
            cpus: cpu_list.len(),
            off_cpu: cfg.off_cpu,
            life_events,
            stack_cost_ns,
            // A fixed period, not a frequency: each sample then stands for exactly 1/F s of CPU.
            period_ns: (1_000_000_000u64 / cfg.frequency as u64).max(1),
            cpu_list,
        })
    }

    /// Starts sampling: a cpu-clock perf event on every online CPU runs the on-CPU program.
    /// Separate from `load` so that Python processes already known are registered first: samples
    /// taken before that would have no Python frames (seconds of them on a loaded host).
    pub fn start_sampling(&mut self) -> anyhow::Result<()> {
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut(names::PROG_ON_CPU)
            .context("on-CPU program missing from the eBPF object")?
            .try_into()?;
        for &cpu in &self.cpu_list {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Period(self.period_ns),
                    false,
                )
                .map_err(|e| {
                    fatal(
                        ExitCode::Kernel,
                        format!("cannot open a cpu-clock perf event on CPU {cpu}: {}", error_chain(&e)),
                    )
                })?;
        }
        Ok(())
    }

    /// Starts sampling process `pid` (all its threads).
    pub fn add_target(&mut self, pid: u32) -> anyhow::Result<()> {
        self.targets.insert(pid, 1, 0).with_context(|| format!("cannot add pid {pid} to the BPF target map"))
    }

    /// Samples process `pid` and follows it: every child it forks from now on is a target
    /// (and followed) before it first runs (`process_fork` in the kernel).
    pub fn follow(&mut self, pid: u32) -> anyhow::Result<()> {
        self.add_target(pid)?;
        self.followed.insert(pid, 1, 0).with_context(|| format!("cannot add pid {pid} to the BPF followed map"))
    }

    /// Every process the kernel follows now (those [`Bpf::follow`] added and the children it
    /// added itself).
    pub fn followed(&self) -> Vec<u32> {
        self.followed.keys().filter_map(Result::ok).collect()
    }

    /// Starts the off-CPU intervals of `pid`'s threads that are asleep now. The kernel opens an
    /// interval when a thread switches out; one already asleep when tracking starts (an idle
    /// worker, a thread waiting on a lock) would show no time until it runs again, or at all.
    /// Entries the kernel made meanwhile are left alone.
    pub fn seed_sleeping_threads(&mut self, pid: u32) {
        use profiler_common::{InFlight, off_state};
        if !self.off_cpu {
            return;
        }
        let now = crate::host::clock::monotonic_ns();
        let memory = crate::host::memory::Memory::new(pid);
        for t in crate::host::procinfo::sleeping_threads(pid) {
            // As the kernel makes a thread's entry when it first sees it.
            let times = ThreadTimes {
                off_since_ns: now,
                off_state: if t.state == 'D' { off_state::UNINTERRUPTIBLE } else { off_state::SLEEPING },
                ..ThreadTimes::new(pid, self.stack_cost_ns, now)
            };
            // BPF_NOEXIST: the kernel's own entry, if any, is newer than what /proc said.
            if self.thread_times.insert(t.tid, times, 1).is_err() {
                continue;
            }
            if let Some((nr, args)) = t.syscall {
                let arg0 = recorded_arg0(&memory, nr, &args, t.sp);
                let call = InFlight { syscall_nr: nr, arg0, entry_ns: now, ..Default::default() };
                let _ = self.in_flight.insert(t.tid, call, 1);
            }
        }
    }

    /// Every thread of the registered processes now, from the task iterator (empty without
    /// one): state, fs base, kernel stack and, on 5.15+, the syscall it is in.
    pub fn tasks(&mut self) -> Vec<profiler_common::task_iter::TaskRecord> {
        let it = self.task_iter.get_or_insert_with(|| task_iter::TaskIter::load(&mut self.ebpf));
        let Some(it) = it else { return Vec::new() };
        it.run(&mut self.ebpf).unwrap_or_else(|e| {
            log::debug!("task iterator: {e:#}");
            Vec::new()
        })
    }

    /// Tells the unwinder where process `pid` keeps its Python threads and frames.
    pub fn set_python(&mut self, pid: u32, info: &PyProcInfo) -> anyhow::Result<()> {
        self.py_procs
            .insert(pid, *info, 0)
            .with_context(|| format!("cannot add pid {pid} to the BPF Python process map"))
    }

    /// Tells the unwinder which `PyThreadState` belongs to thread `tid`.
    pub fn set_tstate(&mut self, tid: u32, tstate: u64) -> anyhow::Result<()> {
        // checked_ns is only read for negative entries.
        let entry = TstateEntry { tstate, checked_ns: 0 };
        self.tstate_cache.insert(tid, entry, 0).with_context(|| format!("cannot cache thread {tid}'s state"))
    }

    /// Off-CPU tracking is on: asked for, and the kernel has what it needs.
    pub fn off_cpu(&self) -> bool {
        self.off_cpu
    }

    /// Hands every record the kernel has written since the last drain to `f`, oldest first;
    /// returns how many there were.
    pub fn drain(&mut self, f: impl FnMut(&[u8])) -> usize {
        self.events.drain(f)
    }

    /// Every thread's exact off-CPU sums, per (state, syscall, first argument).
    pub fn offcpu_sums(&self) -> Vec<(OffCpuKey, OffCpuSum)> {
        batch::read_all(&self.offcpu_sums).unwrap_or_else(|| self.offcpu_sums.iter().filter_map(Result::ok).collect())
    }

    /// Every tracked thread's scheduling times.
    pub fn thread_times(&self) -> Vec<(u32, ThreadTimes)> {
        batch::read_all(&self.thread_times).unwrap_or_else(|| self.thread_times.iter().filter_map(Result::ok).collect())
    }

    /// Off-CPU intervals still going on at `now` (CLOCK_MONOTONIC ns, the kernel's clock), as
    /// sums keyed like the kernel's: a thread blocked when profiling ends (or a window is
    /// cut) has waited all that time, though the kernel adds it only when the thread runs.
    pub fn offcpu_in_progress(&self, times: &[(u32, ThreadTimes)], now: u64) -> Vec<(OffCpuKey, OffCpuSum)> {
        self.offcpu_in_progress_of(times, now, crate::host::procinfo::thread_alive)
    }

    /// [`Bpf::offcpu_in_progress`], with `alive(pid, tid)` telling a thread that has not
    /// exited (the session knows from exit events, without reading /proc per thread).
    pub fn offcpu_in_progress_of(
        &self,
        times: &[(u32, ThreadTimes)],
        now: u64,
        alive: impl Fn(u32, u32) -> bool,
    ) -> Vec<(OffCpuKey, OffCpuSum)> {
        // The calls in flight, read once in batches: two look-ups per sleeping thread of the
        // host were hundreds of syscalls per window.
        let in_flight: std::collections::HashMap<u32, profiler_common::InFlight> = batch::read_all(&self.in_flight)
            .unwrap_or_else(|| self.in_flight.iter().filter_map(Result::ok).collect())
            .into_iter()
            .collect();
        times
            .iter()
            .filter(|(_, t)| t.off_since_ns != 0 && t.off_since_ns < now)
            // A thread's last switch-out is its exit: it is not waiting, it is gone.
            .filter(|(tid, t)| {
                let exiting = in_flight
                    .get(tid)
                    .is_some_and(|c| c.syscall_nr == libc::SYS_exit || c.syscall_nr == libc::SYS_exit_group);
                !exiting && alive(t.pid, *tid)
            })
            .map(|&(tid, t)| {
                // As the kernel will split it when the thread runs again.
                let (blocked_ns, runq_ns) = split_off_interval(t.off_state, t.off_since_ns, t.wake_ns, now);
                let call = in_flight.get(&tid).copied();
                let key = OffCpuKey {
                    tid,
                    state: t.off_state,
                    syscall_nr: call.map_or(-1, |c| c.syscall_nr),
                    arg0: call.map_or(0, |c| c.arg0),
                };
                (key, OffCpuSum { blocked_ns, runq_ns, count: 0 })
            })
            .collect()
    }

    /// Drops the per-thread times and off-CPU sums of threads that have exited (a long-running
    /// session would otherwise fill the maps).
    pub fn forget_threads(&mut self, tids: &[u32]) {
        if tids.is_empty() {
            return;
        }
        for tid in tids {
            let _ = self.thread_times.remove(tid);
            let _ = self.in_flight.remove(tid);
        }
        // The keys from a batch read (aya's `keys()` is one syscall per entry of the map).
        let tids: std::collections::HashSet<u32> = tids.iter().copied().collect();
        let keys: Vec<OffCpuKey> = match batch::read_all(&self.offcpu_sums) {
            Some(all) => all.into_iter().map(|(k, _)| k).filter(|k| tids.contains(&k.tid)).collect(),
            None => self.offcpu_sums.keys().filter_map(Result::ok).filter(|k| tids.contains(&k.tid)).collect(),
        };
        for k in keys {
            let _ = self.offcpu_sums.remove(&k);
        }
    }

    /// Drops an exited process's Python layout, target entry and mappings.
    pub fn forget_process(&mut self, pid: u32) {
        let _ = self.py_procs.remove(&pid);
        let _ = self.targets.remove(&pid);
        let _ = self.followed.remove(&pid);
        if let Some(u) = &mut self.unwind {
            u.remove_process(pid);
        }
    }

    /// Events lost so far (the kernel's ring buffer full, or the reader's queue): one map
    /// read, where [`Bpf::counters`] reads every counter.
    pub fn lost(&self) -> u64 {
        self.stats.get(&stat::LOST, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0) + self.events.dropped()
    }

    pub fn counters(&self) -> Counters {
        let read = |idx: u32| -> u64 { self.stats.get(&idx, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0) };
        Counters {
            lost: read(stat::LOST) + self.events.dropped(),
            py_thread_scans: read(stat::PY_THREAD_SCANS),
            offcpu_sampled_out: read(stat::OFFCPU_SAMPLED_OUT),
            follow_full: read(stat::FOLLOW_FULL),
            native_walks: read(stat::NATIVE_WALKS),
            native_runs: read(stat::NATIVE_RUNS),
        }
    }

    /// Run counts and times of our programs (meaningful with `bpf_stats`).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                log::debug!("{name}: {:?} verified instructions", info.verified_instruction_count());
                Some(ProgramStats {
                    program: name.to_string(),
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }
}

/// Loads the native unwinder's programs, puts them where the sampling programs tail-call them,
/// and takes the table maps. The off-CPU programs' unwinders only with off-CPU tracking: each
/// costs the verifier about a second on a loaded machine.
fn load_unwinder(ebpf: &mut Ebpf, off_cpu: bool) -> anyhow::Result<UnwindMaps> {
    let refused = |prog: &str, e: &dyn std::error::Error| {
        fatal(ExitCode::Kernel, format!("the kernel refused the native unwinder ({prog}): {}", error_chain(e)))
    };
    let mut progs = Vec::new();
    {
        let prog: &mut PerfEvent =
            ebpf.program_mut(names::PROG_UNWIND_PERF).context("unwinder missing from the eBPF object")?.try_into()?;
        prog.load().map_err(|e| refused(names::PROG_UNWIND_PERF, &e))?;
        let fd = prog.fd()?.try_clone()?;
        let mut array = ProgramArray::try_from(
            ebpf.take_map(names::MAP_UNWIND_PROGS_PERF).context("UNWIND_PROGS_PERF map missing")?,
        )?;
        array.set(UNWIND_PROG_INDEX, &fd, 0).context("cannot install the unwinder")?;
        progs.push(array);
    }
    let mut raw_tp = ProgramArray::try_from(
        ebpf.take_map(names::MAP_UNWIND_PROGS_RAW_TP).context("UNWIND_PROGS_RAW_TP map missing")?,
    )?;
    for (name, slot) in names::RAW_TP_UNWINDERS.into_iter().filter(|_| off_cpu) {
        let prog: &mut RawTracePoint =
            ebpf.program_mut(name).with_context(|| format!("{name} missing from the eBPF object"))?.try_into()?;
        prog.load().map_err(|e| refused(name, &e))?;
        raw_tp.set(slot, prog.fd()?, 0).context("cannot install the unwinder")?;
    }
    progs.push(raw_tp);
    let take = |ebpf: &mut Ebpf, name: &str| ebpf.take_map(name).with_context(|| format!("{name} map missing"));
    Ok(UnwindMaps {
        rows: MappedArray::new(take(ebpf, names::MAP_UNWIND_ROWS)?, size_of::<u64>())?,
        pages: MappedArray::new(take(ebpf, names::MAP_UNWIND_PAGES)?, size_of::<PageEntry>())?,
        rules: Array::try_from(take(ebpf, names::MAP_UNWIND_RULES)?)?,
        tables: Array::try_from(take(ebpf, names::MAP_UNWIND_TABLES)?)?,
        mappings: Array::try_from(take(ebpf, names::MAP_UNWIND_MAPPINGS)?)?,
        procs: HashMap::try_from(take(ebpf, names::MAP_UNWIND_PROCS)?)?,
        _progs: progs,
    })
}

fn attach_raw_tracepoint(ebpf: &mut Ebpf, prog: &str, tracepoint: &str) -> anyhow::Result<()> {
    let program: &mut RawTracePoint =
        ebpf.program_mut(prog).with_context(|| format!("{prog} missing from the eBPF object"))?.try_into()?;
    program
        .load()
        .map_err(|e| fatal(ExitCode::Kernel, format!("the kernel refused the {prog} program: {}", error_chain(&e))))?;
    program.attach(tracepoint).map_err(|e| {
        fatal(ExitCode::Kernel, format!("cannot attach to the {tracepoint} raw tracepoint: {}", error_chain(&e)))
    })?;
    Ok(())
}

/// "outer: inner: innermost" for an error and its sources; verifier logs are kept whole.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

const _: () = assert!(MAX_NATIVE_FRAMES <= 127, "bpf_get_stack cannot return more than perf_event_max_stack");
