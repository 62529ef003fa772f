//! One profiling pipeline for `profile`, `top` and `daemon`: load the BPF programs once, drain
//! the ring buffer periodically, keep symbols, Python layouts and wait classes up to date, and
//! turn what was collected since the last [`Session::rotate`] into a [`Profile`] of that window.
//!
//! Per-thread totals come from cumulative kernel maps (on-CPU time, off-CPU sums per wait); a
//! window's totals are their difference with the values seen when the window started. A thread
//! on a CPU right now counts its running interval so far, so a thread that is never switched
//! out still shows its CPU time in every window.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use profiler_common::{
    OffCpuKey, OffCpuSum, ThreadTimes, fork_flags,
    unwind::{Mapping, PageEntry, ProcMaps, RuleRec, TableInfo, UnwindRow},
};

use crate::{
    bpf::{Bpf, BpfConfig, UnwindMaps},
    engine::{
        aggregate::Aggregator,
        blocked::{BlockedStacks, Window},
        build::{self, Lookups, ProcessNames},
        events::{self, Event, comm_cow},
        exits::Exits,
        phase_cost::{Phase, PhaseCost},
        target::{CommandEnd, Running, TargetSpec},
        tasks::{self, TaskConfig, TaskSampler},
        totals::{ClassifiedWaits, ThreadTotals, thread_totals},
    },
    host::{
        clock::monotonic_ns,
        procinfo,
        symbols::{Symbols, UserSymbol},
    },
    model::{
        Frame, Marker, Mode, NativeFrame, Profile, ProgramStats,
        profile::{FORMAT_NAME, FORMAT_VERSION},
    },
    native::registry::{Registry, TableSink},
    offcpu::classify::Classifier,
    python::PythonRegistry,
};

/// How often the ring buffer is drained. The buffer holds ~0.5 s of samples, and the kernel is
/// asked not to wake us per event: polling is cheaper at these rates.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// How often (in drains) new addresses are symbolized and targets checked for exit.
const HOUSEKEEPING_EVERY: u32 = 5;

/// How often a rotating session drops the symbolizer's parsed files (see
/// [`Symbols::drop_file_caches`]).
/// A backstop only: files are released as the processes mapping them exit
/// ([`Symbols::forget`]); this drops what that misses (libraries unloaded by a live process).
const DROP_FILE_CACHES_EVERY: Duration = Duration::from_secs(600);

/// What to profile and how.
pub struct SessionConfig {
    pub target: TargetSpec,
    pub frequency: u32,
    pub kernel_stacks: bool,
    pub max_depth: u32,
    pub off_cpu: bool,
    pub off_cpu_threshold_ns: u64,
    /// Off-CPU stacks per second per thread at most (0: unlimited).
    pub off_cpu_stack_rate: u32,
    /// Native stacks by the DWARF unwinder (None: frame pointers).
    pub native: Option<NativeConfig>,
    pub bpf_stats: bool,
    pub mode: Mode,
    /// asyncio task snapshots (None: `--no-tasks`).
    pub tasks: Option<TaskConfig>,
}

/// The DWARF unwinder's settings.
#[derive(Clone, Copy, Debug)]
pub struct NativeConfig {
    /// Memory for unwind rows (page entries, rules, tables and mappings come on top: ~5.7 MiB).
    pub table_bytes: u64,
    /// Keep the interpreter's own frames in mixed Python stacks.
    pub interpreter_frames: bool,
}

/// Kernel counters as they were when the current window started.
#[derive(Default)]
struct Baseline {
    /// tid → (pid, on-CPU ns so far).
    oncpu: HashMap<u32, (u32, u64)>,
    sums: HashMap<OffCpuKey, OffCpuSum>,
    lost: u64,
    sampled_out: u64,
    decode_errors: u64,
}

pub struct Session {
    frequency: u32,
    mode: Mode,
    off_cpu: bool,
    off_cpu_threshold_ns: u64,
    bpf_stats: bool,
    bpf: Bpf,
    running: Running,
    agg: Aggregator,
    classifier: Classifier,
    symbols: Symbols,
    python: PythonRegistry,
    decode_errors: u64,
    /// Samples of the command we start count from its exec on (see Running::launched_pid).
    awaiting_exec: Option<u32>,
    ticks: u32,
    window_start: Instant,
    window_start_wall: SystemTime,
    base: Baseline,
    /// When the symbolizer's file caches were last dropped.
    files_cached_since: Instant,
    /// The native unwinder's tables (with `--native`).
    native: Option<NativeTables>,
    /// asyncio task snapshots.
    tasks: Option<TaskSampler>,
    /// Stacks of waits going on at a snapshot, and what they need.
    blocked: BlockedStacks,
    /// The window's start on CLOCK_MONOTONIC (the kernel's clock).
    window_start_ns: u64,
    max_depth: u32,
    /// Threads and processes that exited in the window.
    exits: Exits,
    /// The waits classified at housekeeping ticks, so each tick classifies only what changed.
    classified: ClassifiedWaits,
    /// The session's CPU per part of its work (with debug logging).
    cost: PhaseCost,
}

/// The native unwinder's side in userspace: which processes the kernel has mappings of, and
/// the pids seen in events since the last drain.
struct NativeTables {
    registry: Registry,
    interpreter_frames: bool,
    seen: HashSet<u32>,
    /// Processes that exec'd since the last drain (the kernel dropped their mappings).
    execed: Vec<u32>,
}

/// The kernel's maps as the registry's sink.
struct Sink<'a>(&'a mut UnwindMaps);

impl TableSink for Sink<'_> {
    fn set_rows(&mut self, first: u32, rows: &[UnwindRow]) -> anyhow::Result<()> {
        self.0.set_rows(first, rows)
    }
    fn set_pages(&mut self, first: u32, pages: &[PageEntry]) -> anyhow::Result<()> {
        self.0.set_pages(first, pages)
    }
    fn set_rule(&mut self, index: u32, rule: &RuleRec) -> anyhow::Result<()> {
        self.0.set_rule(index, rule)
    }
    fn set_table(&mut self, index: u32, table: &TableInfo) -> anyhow::Result<()> {
        self.0.set_table(index, table)
    }
    fn set_mapping(&mut self, index: u32, mapping: &Mapping) -> anyhow::Result<()> {
        self.0.set_mapping(index, mapping)
    }
    fn set_process(&mut self, pid: u32, maps: &ProcMaps) -> anyhow::Result<()> {
        self.0.set_process(pid, maps)
    }
    fn remove_process(&mut self, pid: u32) {
        self.0.remove_process(pid)
    }
}

impl Session {
    /// Loads and attaches the BPF programs and registers the targets (starting the command,
    /// if there is one).
    pub fn start(cfg: SessionConfig) -> anyhow::Result<Self> {
        let mut bpf = Bpf::load(&BpfConfig {
            target_all: matches!(cfg.target, TargetSpec::All),
            kernel_stacks: cfg.kernel_stacks,
            frequency: cfg.frequency,
            bpf_stats: cfg.bpf_stats,
            py_max_depth: cfg.max_depth,
            off_cpu: cfg.off_cpu,
            off_cpu_threshold_ns: cfg.off_cpu_threshold_ns,
            off_cpu_stack_rate: cfg.off_cpu_stack_rate,
            native_rows: cfg
                .native
                .map(|n| (n.table_bytes / size_of::<UnwindRow>() as u64).min(u32::MAX as u64) as u32),
            follow_children: cfg.target.follows_children(),
        })?;
        // A command is sampled from its first instruction (it starts gated, see target.rs);
        // other targets once the Python processes among them are registered, so that their
        // first samples already have Python frames.
        let command = matches!(cfg.target, TargetSpec::Command { .. });
        let explicit_pids = cfg.target.is_explicit();
        if command {
            bpf.start_sampling()?;
        }
        let window_start_wall = SystemTime::now();
        let window_start = Instant::now();
        let window_start_ns = monotonic_ns();
        // Explicit pids that run Python are registered before they become targets: the off-CPU
        // hooks follow a target from then on, and every stack they took before the kernel had
        // the process's layout came without Python frames (up to a tenth of a CPU-bound
        // program's off-CPU weight, on a loaded machine where inspecting takes a while).
        let mut python = PythonRegistry::default();
        let mut classifier = Classifier::default();
        if let TargetSpec::Pids { pids, .. } = &cfg.target {
            for &pid in pids {
                python.observe(pid);
            }
            register_python(&mut bpf, &mut python, &mut classifier);
        }
        let native = match (&cfg.native, &bpf.unwind) {
            (Some(n), Some(maps)) => Some(NativeTables {
                registry: Registry::new(maps.row_capacity()),
                interpreter_frames: n.interpreter_frames,
                seen: HashSet::new(),
                execed: Vec::new(),
            }),
            _ => None,
        };
        let running = cfg.target.start(&mut bpf)?;
        let mut session = Session {
            frequency: cfg.frequency,
            mode: cfg.mode,
            off_cpu: bpf.off_cpu(),
            off_cpu_threshold_ns: cfg.off_cpu_threshold_ns,
            bpf_stats: cfg.bpf_stats,
            awaiting_exec: running.launched_pid(),
            agg: Aggregator::new(cfg.frequency),
            classifier,
            symbols: Symbols::new(),
            python,
            decode_errors: 0,
            ticks: 0,
            window_start,
            window_start_wall,
            base: Baseline::default(),
            files_cached_since: Instant::now(),
            native,
            blocked: BlockedStacks::default(),
            window_start_ns,
            max_depth: cfg.max_depth,
            exits: Exits::default(),
            classified: ClassifiedWaits::default(),
            cost: PhaseCost::new(),
            bpf,
            running,
            tasks: cfg.tasks.map(TaskSampler::new),
        };
        session.agg.interpreter_frames = session.native.as_ref().is_some_and(|n| n.interpreter_frames);
        // Known targets are looked at before their first sample, so it already has Python frames
        // (and, with explicit pids, its native mappings).
        for pid in session.running.initial_pids() {
            session.python.observe(pid);
            if explicit_pids && let Some(n) = &mut session.native {
                n.seen.insert(pid);
            }
        }
        session.register_native();
        session.register_python();
        // Explicit --pid targets (and their descendants) that are not Python are tracked
        // off-CPU too (with --all only Python processes are, and they were seeded when
        // registered).
        if explicit_pids {
            for pid in session.running.initial_pids() {
                session.bpf.seed_sleeping_threads(pid);
            }
        }
        if !command {
            session.bpf.start_sampling()?;
        }
        Ok(session)
    }

    /// Call every [`DRAIN_INTERVAL`]: drains the ring buffer, and every few calls symbolizes,
    /// reads thread names and classifies new waits. `Some(reason)` once the targets are gone.
    pub fn tick(&mut self) -> Option<String> {
        let t = self.cost.start();
        self.drain();
        let t = self.cost.add(Phase::Drain, t);
        self.ticks += 1;
        if let Some(tasks) = &mut self.tasks {
            tasks.tick(&mut self.python);
        }
        let t = self.cost.add(Phase::Tasks, t);
        if self.ticks.is_multiple_of(HOUSEKEEPING_EVERY) {
            self.unmap_exited();
            if self.exits.rescan_due(Instant::now(), self.bpf.lost(), self.bpf.life_events) {
                // Followed children whose fork event was lost are looked at as new targets.
                for pid in self.rescan() {
                    self.python.observe(pid);
                }
            }
            let t = self.cost.add(Phase::Exits, t);
            self.symbols.resolve_pending();
            let t = self.cost.add(Phase::Symbols, t);
            self.python.refresh_thread_names();
            let t = self.cost.add(Phase::ThreadNames, t);
            let replaced = self.python.recheck_codes();
            self.agg.forget_codes(&replaced);
            let t = self.cost.add(Phase::Codes, t);
            let lost = self.bpf.life_events.then(|| self.bpf.lost());
            let bpf = &self.bpf;
            self.classified.classify(lost, || bpf.thread_times(), &bpf.offcpu_sums(), &mut self.classifier);
            let t = self.cost.add(Phase::Classify, t);
            let joined = self.running.discover(&mut self.bpf);
            for &pid in &joined {
                self.python.observe(pid);
                self.bpf.seed_sleeping_threads(pid);
            }
            if !joined.is_empty() {
                self.register_python();
            }
            self.cost.add(Phase::Discover, t);
            return self.running.finished();
        }
        None
    }

    /// Hands every waiting ring-buffer record to the aggregator.
    pub fn drain(&mut self) {
        let Session {
            bpf,
            agg,
            symbols,
            python,
            classifier,
            awaiting_exec,
            decode_errors,
            native,
            running,
            exits,
            classified,
            ..
        } = self;
        let mut seen_pids = HashSet::new();
        let mut seen = |pid: u32| {
            seen_pids.insert(pid);
        };
        let mut execed = Vec::new();
        let records = bpf.drain(|record| match events::decode(record) {
            Ok(Event::Sample(s)) if *awaiting_exec == Some(s.pid) => {}
            Ok(Event::Sample(s)) => {
                seen(s.pid);
                agg.add(s, symbols, python)
            }
            Ok(Event::OffCpu(rec)) => {
                seen(rec.head.pid);
                agg.add_off_cpu_record(&rec, symbols, python, classifier)
            }
            Ok(Event::WaitTarget(t)) => classifier.kernel_target(&t),
            Ok(Event::UnusedWaitTarget { tid }) => classifier.unused_kernel_target(tid),
            Ok(Event::Preempted(s)) if *awaiting_exec == Some(s.pid) => {}
            Ok(Event::Preempted(s)) => agg.preempted(s),
            Ok(Event::PreemptEnd { tid, since_ns, runq_ns, .. }) => {
                agg.preempt_end(tid, since_ns, runq_ns, symbols, python)
            }
            Ok(Event::ThreadMiss { pid, tid, key_offset, key }) => python.thread_miss(pid, tid, key_offset, key),
            Ok(Event::ThreadStart { pid, tid }) => {
                exits.started(tid);
                python.thread_started(pid, tid);
            }
            Ok(Event::Renamed { pid, tid, comm }) => {
                agg.thread_named(pid, tid, &comm_cow(&comm));
                python.thread_renamed(pid, tid);
            }
            // Every process on the host with `--all`: only those looked at so far matter.
            Ok(Event::Exit { pid, tid, .. }) if !python.knows(pid) => classified.thread_exited(tid),
            Ok(Event::Exit { pid, tid, comm, process, guessed }) => {
                classified.thread_exited(tid);
                let name = comm_cow(&comm);
                agg.thread_named(pid, tid, &name);
                python.thread_exited(pid, tid);
                // Threads with kernel state and exact totals: Python processes' and explicit
                // targets' (with `--all`, every exiting process's last thread comes too).
                if !running.is_host() || python.version(pid).is_some() {
                    exits.thread_exited(pid, tid, Some(name.into_owned()));
                }
                match (process, guessed) {
                    (true, false) => exits.process_exited(pid),
                    (true, true) => exits.leader_exited(pid),
                    _ => {}
                }
            }
            Ok(Event::Fork { pid, ppid, flags }) => {
                running.forked(pid, ppid);
                if flags & fork_flags::FOLLOWED != 0 {
                    python.forked(pid, ppid, flags & fork_flags::PYTHON_COPIED != 0);
                }
            }
            Ok(Event::Exec { pid }) if *awaiting_exec == Some(pid) => {
                classified.process_execed(pid);
                *awaiting_exec = None;
                running.exec(pid);
                // Its interpreter is mapped only now, by the dynamic loader: look at it for a
                // while from its exec, not from its fork, which was before the programs loaded
                // (a minute ago under emulation, seconds on a loaded host).
                python.exec(pid);
            }
            Ok(Event::Exec { pid }) => {
                classified.process_execed(pid);
                running.exec(pid);
                // A new program in the same pid: forget what we knew and look again.
                python.exec(pid);
                symbols.forget(pid);
                agg.exec(pid);
                execed.push(pid);
            }
            Err(e) => {
                log::debug!("undecodable record: {e:?}");
                *decode_errors += 1;
            }
        });
        self.cost.records += records as u64;
        if let Some(n) = native.as_mut() {
            n.seen.extend(seen_pids);
            n.execed.extend(execed);
        }
        self.register_python();
        self.register_native();
    }

    /// Hands the kernel the mappings of processes seen for the first time (their first
    /// samples were walked by frame pointers), and reads again those of processes whose walks
    /// met code in no known mapping.
    fn register_native(&mut self) {
        let (Some(n), Some(maps)) = (&mut self.native, &mut self.bpf.unwind) else { return };
        let mut sink = Sink(maps);
        for pid in n.execed.drain(..) {
            n.registry.forget(pid, &mut sink);
        }
        for pid in n.seen.drain() {
            if pid == std::process::id() || n.registry.is_registered(pid) {
                continue;
            }
            if let Err(e) = n.registry.register(pid, &mut sink) {
                log::warn!("pid {pid}: native unwinding: {e:#}");
            }
        }
        for pid in self.agg.unmapped_pids.drain() {
            if n.registry.is_registered(pid)
                && let Err(e) = n.registry.refresh(pid, &mut sink)
            {
                log::warn!("pid {pid}: native unwinding: {e:#}");
            }
        }
    }

    /// The profile of the current window (since the start or the last [`Session::rotate`]),
    /// with everything collected so far drained and symbolized.
    pub fn snapshot(&mut self) -> Profile {
        let t = self.cost.start();
        self.drain();
        let t = self.cost.add(Phase::Drain, t);
        // Waits going on now weigh their stacks up to now, in this profile only: the window
        // goes on after a snapshot (the daemon's), and their end will weigh them again.
        self.agg.begin_provisional();
        // One instant for the waits' stacks and the totals they must add up to.
        let now = monotonic_ns();
        if self.off_cpu {
            let window = Window {
                start_ns: self.window_start_ns,
                now_ns: now,
                threshold_ns: self.off_cpu_threshold_ns,
                max_depth: self.max_depth.min(profiler_common::MAX_PY_FRAMES as u32) as usize,
                exits: &self.exits,
            };
            let Session { blocked, bpf, agg, symbols, python, classifier, .. } = self;
            blocked.add(bpf, &window, agg, symbols, python, classifier);
        }
        let t = self.cost.add(Phase::Blocked, t);
        self.symbols.resolve_all();
        let t = self.cost.add(Phase::Symbols, t);
        self.python.refresh_thread_names();
        let t = self.cost.add(Phase::ThreadNames, t);
        let (times, sums) = (self.bpf.thread_times(), self.sums_so_far(now));
        let totals = self.window_totals(&times, &sums, now);
        self.agg.note_sampled_out(&times);
        let counters = self.bpf.counters();
        log::info!(
            "python samples: {} of which {} with frames; thread-list scans: {}; off-CPU events: {}, sums: {}, threads timed: {}",
            self.agg.python_samples,
            self.agg.python_samples_with_frames,
            counters.py_thread_scans,
            self.agg.off_cpu_events,
            sums.len(),
            times.len(),
        );
        let profile = Profile {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            duration_ns: self.window_start.elapsed().as_nanos() as u64,
            frequency_hz: self.frequency,
            cpus: self.bpf.cpus,
            lost_events: counters.lost.saturating_sub(self.base.lost) + self.decode_errors - self.base.decode_errors,
            samples: self.agg.samples,
            start_time_unix: self.window_start_wall.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            mode: self.mode,
            off_cpu: self.off_cpu,
            off_cpu_threshold_ns: self.off_cpu_threshold_ns,
            off_cpu_events: self.agg.off_cpu_events,
            off_cpu_stacks_sampled_out: counters.offcpu_sampled_out.saturating_sub(self.base.sampled_out),
            processes: tasks::attach(
                &mut self.tasks,
                build::build(
                    &self.agg,
                    &Live { symbols: &self.symbols, python: &self.python, running: &self.running, exits: &self.exits },
                    &totals,
                ),
            ),
            bpf_stats: self.bpf_stats.then(|| {
                self.bpf
                    .program_stats()
                    .into_iter()
                    .map(|p| ProgramStats { program: p.program, run_count: p.run_count, run_time_ns: p.run_time_ns })
                    .collect()
            }),
        };
        self.agg.retract_provisional();
        self.cost.add(Phase::Build, t);
        profile
    }

    /// Ends the current window: returns its profile and starts the next one. What is known of
    /// processes that have exited is dropped here, so a long-running session stays bounded.
    pub fn rotate(&mut self) -> Profile {
        let profile = self.snapshot();
        let t = self.cost.start();
        if let Some(tasks) = &mut self.tasks {
            tasks.clear_window();
        }
        self.agg = Aggregator::new(self.frequency);
        self.agg.interpreter_frames = self.native.as_ref().is_some_and(|n| n.interpreter_frames);
        self.window_start = Instant::now();
        self.window_start_wall = SystemTime::now();
        self.forget_exited();
        self.running.forget_exited();
        if self.files_cached_since.elapsed() >= DROP_FILE_CACHES_EVERY {
            self.symbols.drop_file_caches();
            self.files_cached_since = Instant::now();
        }
        let now = monotonic_ns();
        // The baseline's instant: waits going on count in the next window from here.
        self.window_start_ns = now;
        self.base = Baseline {
            oncpu: self.bpf.thread_times().into_iter().map(|(tid, t)| (tid, (t.pid, t.oncpu_ns_at(now)))).collect(),
            sums: self.sums_so_far(now).into_iter().collect(),
            lost: self.bpf.counters().lost,
            sampled_out: self.bpf.counters().offcpu_sampled_out,
            decode_errors: self.decode_errors,
        };
        // The old window's tables are gone: give their pages back (see host::heap).
        crate::host::heap::release_free_memory();
        // And the pages of other programs' files the symbolizer read (see host::mapped_files).
        let advised = crate::host::mapped_files::release_mapped_files();
        log::debug!("released the pages of {} MiB of symbolized files", advised >> 20);
        self.cost.add(Phase::Rotate, t);
        self.log_cost();
        profile
    }

    /// Logs the session's CPU per phase since the last call (debug level; see
    /// [`PhaseCost`]): once per window, and by `profile` once at its end.
    pub fn log_cost(&mut self) {
        if let Some(line) = self.cost.report() {
            log::debug!("{line}");
        }
    }

    /// Ends what is left of a command we started (or leaves it running, as configured); what
    /// became of it. `None` without a command.
    pub fn stop(&mut self) -> Option<CommandEnd> {
        self.running.stop()
    }

    /// The command we started was stopped for using the terminal.
    pub fn command_stopped_on_terminal(&self) -> bool {
        self.running.stopped_on_terminal()
    }

    /// Notes for the summary: targets that exited, processes that could not be unwound or
    /// followed.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = self.running.notes();
        notes.extend(self.python.notes.iter().cloned());
        let unfollowed = self.bpf.counters().follow_full;
        if unfollowed > 0 {
            notes.push(format!(
                "{unfollowed} child processes were not followed: the kernel's target map was full ({} processes)",
                profiler_common::map_size::TARGET_PIDS
            ));
        }
        notes
    }

    /// The kernel's off-CPU sums plus the waits still going on now (added by the kernel only
    /// when the thread runs again): a thread blocked for a whole window still shows, and the
    /// next window's deltas do not count that part twice (baselines include it too).
    fn sums_so_far(&self, now: u64) -> Vec<(OffCpuKey, OffCpuSum)> {
        let mut sums: HashMap<OffCpuKey, OffCpuSum> = self.bpf.offcpu_sums().into_iter().collect();
        let times = self.bpf.thread_times();
        let exits = &self.exits;
        for (key, part) in self.bpf.offcpu_in_progress_of(&times, now, |_, tid| !exits.thread_gone(tid)) {
            let s = sums.entry(key).or_default();
            s.blocked_ns += part.blocked_ns;
            s.runq_ns += part.runq_ns;
        }
        sums.into_iter().collect()
    }

    /// Each thread's time per category in this window: the kernel's cumulative counters minus
    /// the window's baseline.
    fn window_totals(
        &mut self,
        times: &[(u32, ThreadTimes)],
        sums: &[(OffCpuKey, OffCpuSum)],
        now: u64,
    ) -> ThreadTotals {
        let times: Vec<(u32, ThreadTimes)> = times
            .iter()
            .map(|&(tid, t)| {
                let base = match self.base.oncpu.get(&tid) {
                    Some(&(pid, ns)) if pid == t.pid => ns,
                    _ => 0,
                };
                (tid, ThreadTimes { oncpu_ns: t.oncpu_ns_at(now).saturating_sub(base), ..t })
            })
            .collect();
        let sums: Vec<(OffCpuKey, OffCpuSum)> = sums
            .iter()
            .map(|(k, s)| {
                let b = self.base.sums.get(k).copied().unwrap_or_default();
                let delta = OffCpuSum {
                    blocked_ns: s.blocked_ns.saturating_sub(b.blocked_ns),
                    runq_ns: s.runq_ns.saturating_sub(b.runq_ns),
                    count: s.count.saturating_sub(b.count),
                };
                (*k, delta)
            })
            .filter(|(_, s)| s.blocked_ns > 0 || s.runq_ns > 0)
            .collect();
        let mut totals = thread_totals(&times, &sums, &mut self.classifier);
        totals.retain(|_, t| !t.is_empty());
        totals
    }

    /// Drops exited processes from the kernel's target and layout maps as soon as their exit
    /// is known, so that a pid reused meanwhile is not profiled for them.
    fn unmap_exited(&mut self) {
        let host = self.running.is_host();
        for pid in self.exits.take_unmapped(procinfo::is_alive) {
            self.running.exited(pid);
            // With `--all` only Python processes have entries (the unwinder's mappings are
            // dropped with the rest when the window ends).
            if !host || self.python.version(pid).is_some() {
                self.bpf.forget_process(pid);
            }
        }
    }

    /// The safety net behind exit and fork events (see [`Exits`]): tracked threads and known
    /// processes that /proc no longer lists, followed processes that exited. Returns the
    /// followed children not known before (their fork event was lost).
    fn rescan(&mut self) -> Vec<u32> {
        for (tid, t) in self.bpf.thread_times() {
            if !self.exits.thread_gone(tid) && !std::path::Path::new(&format!("/proc/{}/task/{tid}", t.pid)).exists() {
                self.exits.thread_exited(t.pid, tid, None);
            }
        }
        for pid in self.python.known_pids() {
            if !procinfo::is_alive(pid) {
                self.exits.process_exited(pid);
            }
        }
        let added = self.running.sweep(&mut self.bpf);
        self.unmap_exited();
        added
    }

    /// Drops the processes and threads that exited in the window that just ended from every
    /// cache and kernel map.
    fn forget_exited(&mut self) {
        let (dead_tids, dead_pids) = self.exits.end_window();
        self.bpf.forget_threads(&dead_tids);
        for &pid in &dead_pids {
            if let (Some(n), Some(maps)) = (&mut self.native, &mut self.bpf.unwind) {
                n.registry.forget(pid, &mut Sink(maps));
            }
            // Its kernel target and layout entries went at its exit (`unmap_exited`). Every
            // process, Python or not: the classes of a `/bin/true`'s waits piled up under
            // `--all` before (issue 13); both are a few hash removals per process.
            if let Some(tasks) = &mut self.tasks {
                tasks.forget(pid);
            }
            self.classifier.forget(pid);
            self.python.forget(pid);
            self.symbols.forget(pid);
        }
        if !dead_pids.is_empty() || !dead_tids.is_empty() {
            log::debug!("forgot {} exited processes and {} exited threads", dead_pids.len(), dead_tids.len());
        }
        // What is kept across windows (issue 13: memory must stay flat with processes coming
        // and going).
        log::debug!(
            "kept: processes known {:?} (all, Python), symbols {:?} (user, maps, pending, given to blazesym, kernel), wait classes of {} processes",
            self.python.sizes(),
            self.symbols.sizes(),
            self.classifier.processes_cached(),
        );
    }

    /// Hands the kernel the layout of Python processes found since the last call.
    fn register_python(&mut self) {
        register_python(&mut self.bpf, &mut self.python, &mut self.classifier);
    }
}

/// Hands the kernel the layout of the Python processes `python` found since the last call,
/// and the classifier their GILs and lock kinds.
fn register_python(bpf: &mut Bpf, python: &mut PythonRegistry, classifier: &mut Classifier) {
    for (pid, range) in python.take_gil_ranges() {
        classifier.set_gil(pid, range);
    }
    for (pid, info) in python.take_pending() {
        if let Err(e) = bpf.set_python(pid, &info) {
            log::warn!("{e:#}");
        }
        // 3.13+ parks its own locks (PyMutex) on the waiter's stack.
        if python.version(pid).is_some_and(|v| (v.major, v.minor) >= (3, 13)) {
            classifier.set_parking_lot(pid);
        }
        // Tracked off-CPU from now on: threads already asleep start their wait now.
        bpf.seed_sleeping_threads(pid);
    }
    for (tid, tstate) in python.take_pending_tstates() {
        if let Err(e) = bpf.set_tstate(tid, tstate) {
            log::warn!("{e:#}");
        }
    }
}

/// What a profile is built with on a live system: symbols resolved so far, Python processes
/// known, and /proc for what was never sampled.
struct Live<'a> {
    symbols: &'a Symbols,
    python: &'a PythonRegistry,
    running: &'a Running,
    exits: &'a Exits,
}

impl Lookups for Live<'_> {
    fn user_frame(&self, pid: u32, addr: u64, index: usize) -> Frame {
        match self.symbols.user_symbol(pid, addr, index) {
            Some(UserSymbol::NotCode) => Frame::Marker(Marker::NotCode),
            Some(UserSymbol::Code(s)) => {
                Frame::Native(NativeFrame { symbol: s.name.clone(), module: s.module.clone(), offset: s.offset })
            }
            None => Frame::Native(NativeFrame { symbol: None, module: None, offset: None }),
        }
    }

    fn kernel_frame(&self, addr: u64, index: usize) -> Frame {
        Frame::Kernel(self.symbols.kernel_symbol(addr, index).map(str::to_string))
    }

    fn python_thread_name(&self, pid: u32, tid: u32) -> Option<String> {
        self.python.thread_name(pid, tid).map(str::to_string)
    }

    fn python_version(&self, pid: u32) -> Option<String> {
        self.python.version(pid).map(|v| v.to_string())
    }

    fn process_names(&self, pid: u32) -> ProcessNames {
        let stat = procinfo::stat(pid);
        ProcessNames {
            ppid: stat.as_ref().map(|s| s.ppid),
            // A followed child that has exited is named as it was last seen.
            comm: stat.map(|s| s.comm).or_else(|| self.running.comm(pid).map(str::to_string)),
            cmdline: procinfo::cmdline(pid),
        }
    }

    fn forked_by(&self, pid: u32) -> Option<u32> {
        self.running.ppid(pid)
    }

    fn cgroup(&self, pid: u32) -> Option<crate::host::cgroup::CgroupIdentity> {
        crate::host::cgroup::identity(pid)
    }

    fn thread_name(&self, pid: u32, tid: u32) -> Option<String> {
        // A thread that exited is named as it was at its exit.
        match self.exits.last_name(pid, tid) {
            Some(name) => Some(name.to_string()),
            None => procinfo::thread_comm(pid, tid),
        }
    }
}
