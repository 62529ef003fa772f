//! `pyebpf profile`: load, sample until told to stop, then write outputs and the summary.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    aggregate::{Aggregator, thread_totals},
    bpf::{Bpf, BpfConfig},
    cli::ProfileArgs,
    events::{self, Event},
    offcpu::Classifier,
    output, privileges,
    profile::{FORMAT_NAME, FORMAT_VERSION, Profile},
    python::PythonRegistry,
    summary,
    symbols::Symbols,
    target::TargetSpec,
};

/// How often the ring buffer is drained. The buffer holds ~2 s of samples, and the kernel is
/// asked not to wake us per event: polling is cheaper at these rates.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// How often new addresses are symbolized and targets checked for exit.
const HOUSEKEEPING_EVERY: u32 = 5;

pub async fn profile(args: ProfileArgs) -> anyhow::Result<()> {
    // Signals first: a Ctrl-C from now on, even while the programs load, ends profiling cleanly
    // (outputs written) instead of killing us.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let outputs = output::plan(&args.outputs, args.format)?;
    privileges::check()?;
    let target = TargetSpec::resolve(args.all, &args.pids, &args.command)?;
    check_frequency(args.frequency)?;
    let mode = match (args.mode, args.no_off_cpu) {
        (Some(crate::cli::Mode::Wall), true) => {
            return Err(crate::error::fatal(
                crate::error::ExitCode::Usage,
                "--mode wall needs off-CPU tracking: drop --no-off-cpu",
            ));
        }
        (Some(mode), _) => mode,
        (None, true) => crate::cli::Mode::Cpu,
        (None, false) => crate::cli::Mode::Wall,
    };

    let mut bpf = Bpf::load(&BpfConfig {
        target_all: matches!(target, TargetSpec::All),
        kernel_stacks: args.kernel,
        frequency: args.frequency,
        bpf_stats: args.bpf_stats,
        py_max_depth: args.max_depth,
        off_cpu: !args.no_off_cpu,
        off_cpu_threshold_ns: args.off_cpu_threshold_us.saturating_mul(1000),
    })?;

    // A command is sampled from its first instruction (it starts gated, see target.rs); other
    // targets once the Python processes among them are registered, so that their first samples
    // already have Python frames.
    let command = matches!(target, TargetSpec::Command(_));
    if command {
        bpf.start_sampling()?;
    }
    let mut running = target.start(&mut bpf)?;

    let mut agg = Aggregator::new(args.frequency);
    let mut classifier = Classifier::default();
    let mut symbols = Symbols::new();
    let mut python = PythonRegistry::default();
    // Known targets are looked at before their first sample, so it already has Python frames.
    for pid in running.initial_pids() {
        python.observe(pid);
    }
    register_python(&mut bpf, &mut python, &mut classifier);
    if !command {
        bpf.start_sampling()?;
    }
    let start_wall = SystemTime::now();
    let start = Instant::now();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut decode_errors = 0u64;
    // Samples of the command we start count from its exec on (see Running::launched_pid).
    let mut awaiting_exec = running.launched_pid();
    let mut drain = |bpf: &mut Bpf,
                     agg: &mut Aggregator,
                     symbols: &mut Symbols,
                     python: &mut PythonRegistry,
                     classifier: &mut Classifier| {
        bpf.drain(|record| match events::decode(record) {
            Ok(Event::Sample(s)) if awaiting_exec == Some(s.pid) => {}
            Ok(Event::Sample(s)) => agg.add(s, symbols, python),
            Ok(Event::OffCpu(s)) => agg.add_off_cpu(s, symbols, python, classifier),
            Ok(Event::Preempted(s)) if awaiting_exec == Some(s.pid) => {}
            Ok(Event::Preempted(s)) => agg.preempted(s),
            Ok(Event::PreemptEnd { tid, since_ns, runq_ns, .. }) => agg.preempt_end(tid, since_ns, runq_ns, symbols, python),
            Ok(Event::ThreadMiss { pid, tid, key_offset, key }) => python.thread_miss(pid, tid, key_offset, key),
            Ok(Event::Exec { pid }) if awaiting_exec == Some(pid) => awaiting_exec = None,
            Ok(Event::Exec { pid }) => {
                // A new program in the same pid: forget what we knew and look again.
                python.exec(pid);
                symbols.forget(pid);
                agg.exec(pid);
            }
            Err(e) => {
                log::debug!("undecodable record: {e:?}");
                decode_errors += 1;
            }
        });
        register_python(bpf, python, classifier);
    };

    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    let stop_reason = loop {
        tokio::select! {
            _ = tick.tick() => {
                drain(&mut bpf, &mut agg, &mut symbols, &mut python, &mut classifier);
                ticks += 1;
                if ticks % HOUSEKEEPING_EVERY == 0 {
                    symbols.resolve_pending();
                    python.refresh_thread_names();
                    // Classify new waits while their fds are still open.
                    thread_totals(&bpf.thread_times(), &bpf.offcpu_sums(), &mut classifier);
                    if let Some(reason) = running.finished() {
                        break reason;
                    }
                }
            }
            _ = sleep_until(deadline) => break "duration reached".to_string(),
            _ = sigint.recv() => break "interrupted".to_string(),
            _ = sigterm.recv() => break "terminated".to_string(),
            _ = sighup.recv() => break "hung up".to_string(),
        }
    };
    let elapsed = start.elapsed();
    drain(&mut bpf, &mut agg, &mut symbols, &mut python, &mut classifier);
    symbols.resolve_pending();
    python.refresh_thread_names();
    running.stop();
    log::info!("profiling stopped: {stop_reason}");

    let counters = bpf.counters();
    let (sums, times) = (bpf.offcpu_sums(), bpf.thread_times());
    let (offcpu_sums, thread_times) = (sums.len(), times.len());
    let totals = thread_totals(&times, &sums, &mut classifier);
    let profile = Profile {
        format: FORMAT_NAME,
        version: FORMAT_VERSION,
        duration_ns: elapsed.as_nanos() as u64,
        frequency_hz: args.frequency,
        cpus: bpf.cpus,
        lost_events: counters.lost + decode_errors,
        samples: agg.samples,
        start_time_unix: start_wall.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        mode,
        off_cpu: !args.no_off_cpu,
        off_cpu_threshold_ns: args.off_cpu_threshold_us.saturating_mul(1000),
        off_cpu_events: agg.off_cpu_events,
        processes: agg.build(&symbols, &python, &totals),
        bpf_stats: args.bpf_stats.then(|| bpf.program_stats()),
    };
    drop(bpf);

    let mut notes = running.notes();
    notes.insert(0, format!("stopped: {stop_reason}"));
    notes.extend(python.notes.iter().cloned());
    log::info!(
        "python samples: {} of which {} with frames; thread-list scans: {}; off-CPU events: {}, sums: {}, threads timed: {}",
        agg.python_samples,
        agg.python_samples_with_frames,
        counters.py_thread_scans,
        agg.off_cpu_events,
        offcpu_sums,
        thread_times,
    );
    for spec in &outputs {
        output::write(&profile, spec)?;
        notes.push(format!("wrote {} ({})", spec.path.display(), spec.format.describe()));
    }
    if !args.no_summary {
        let stdout = std::io::stdout();
        // A closed stdout (e.g. piped into `head`) must not turn a finished profile into an error.
        let _ = summary::write(&profile, &notes, &mut stdout.lock());
    }
    Ok(())
}

/// Hands the kernel the layout of Python processes found since the last call.
fn register_python(bpf: &mut Bpf, python: &mut PythonRegistry, classifier: &mut Classifier) {
    for (pid, range) in python.take_gil_ranges() {
        classifier.set_gil(pid, range);
    }
    for (pid, info) in python.take_pending() {
        if let Err(e) = bpf.set_python(pid, &info) {
            log::warn!("{e:#}");
        }
    }
    for (tid, tstate) in python.take_pending_tstates() {
        if let Err(e) = bpf.set_tstate(tid, tstate) {
            log::warn!("{e:#}");
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The kernel caps perf sampling rates (kernel.perf_event_max_sample_rate); say so up front.
fn check_frequency(hz: u32) -> anyhow::Result<()> {
    use crate::error::{ExitCode, fatal};
    let max = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match max {
        Some(max) if hz as u64 > max => Err(fatal(
            ExitCode::Usage,
            format!("--frequency {hz} is above the kernel's limit of {max} Hz (kernel.perf_event_max_sample_rate): use a lower rate"),
        )),
        _ => Ok(()),
    }
}
