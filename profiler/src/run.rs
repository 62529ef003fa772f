//! `pyebpf profile`: load, sample until told to stop, then write outputs and the summary.
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::ProfileArgs,
    output, privileges,
    session::{DRAIN_INTERVAL, Session, SessionConfig},
    summary,
    target::TargetSpec,
};

pub async fn profile(args: ProfileArgs) -> anyhow::Result<()> {
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

    // Signals first: a Ctrl-C from now on ends profiling cleanly instead of killing us.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let mut session = Session::start(SessionConfig {
        target,
        frequency: args.frequency,
        kernel_stacks: args.kernel,
        max_depth: args.max_depth,
        off_cpu: !args.no_off_cpu,
        off_cpu_threshold_ns: args.off_cpu_threshold_us.saturating_mul(1000),
        off_cpu_stack_rate: args.off_cpu_stack_rate,
        bpf_stats: args.bpf_stats,
        mode,
    })?;
    // Loading takes a moment (the verifier); say when sampling has begun, as py-spy does. On
    // stderr, so the summary (stdout) stays clean.
    eprintln!(
        "pyebpf: sampling at {} Hz{}; Ctrl-C stops and writes the outputs",
        args.frequency,
        if args.no_off_cpu { "" } else { " with off-CPU tracking" }
    );
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);

    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop_reason = loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(reason) = session.tick() {
                    break reason;
                }
            }
            _ = sleep_until(deadline) => break "duration reached".to_string(),
            _ = sigint.recv() => break "interrupted".to_string(),
            _ = sigterm.recv() => break "terminated".to_string(),
            _ = sighup.recv() => break "hung up".to_string(),
        }
    };
    let profile = session.snapshot();
    session.stop();
    log::info!("profiling stopped: {stop_reason}");
    let mut notes = session.notes();
    notes.insert(0, format!("stopped: {stop_reason}"));
    drop(session);

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

pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The kernel caps perf sampling rates (kernel.perf_event_max_sample_rate); say so up front.
pub fn check_frequency(hz: u32) -> anyhow::Result<()> {
    use crate::error::{ExitCode, fatal};
    let max = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match max {
        Some(max) if hz as u64 > max => Err(fatal(
            ExitCode::Usage,
            format!(
                "--frequency {hz} is above the kernel's limit of {max} Hz (kernel.perf_event_max_sample_rate): use a lower rate"
            ),
        )),
        _ => Ok(()),
    }
}
