//! What every profiling command (`profile`, `top`, `daemon`) does the same way: check the
//! privileges and the sampling rate before loading anything, catch signals from the first
//! moment, turn the sampling flags into a session's configuration, and drive the session until
//! its targets are gone, its time is up or a signal arrives.
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    cli::{SamplingArgs, SubprocessArgs},
    engine::{
        session::{DRAIN_INTERVAL, NativeConfig, Session, SessionConfig},
        target::TargetSpec,
        tasks::TaskConfig,
    },
    error::{ExitCode, fatal},
    host::privileges,
    model::Mode,
};

/// The checks that need no BPF: privileges, then the sampling rate against the kernel's cap.
pub fn preflight(sampling: &SamplingArgs) -> anyhow::Result<()> {
    privileges::check()?;
    check_frequency(sampling.frequency)
}

/// What `--mode` means with the sampling flags: `wall` needs off-CPU tracking; without an
/// explicit mode, wall when off-CPU time is tracked, else CPU.
pub fn mode(explicit: Option<Mode>, sampling: &SamplingArgs) -> anyhow::Result<Mode> {
    match (explicit, sampling.no_off_cpu) {
        (Some(Mode::Wall), true) => {
            Err(fatal(ExitCode::Usage, "--mode wall needs off-CPU tracking: drop --no-off-cpu"))
        }
        (Some(mode), _) => Ok(mode),
        (None, true) => Ok(Mode::Cpu),
        (None, false) => Ok(Mode::Wall),
    }
}

/// Whether to follow the targets' children, from `--subprocesses` / `--no-subprocesses`
/// (`None`: the target's default). They mean nothing with `--all`, which profiles every
/// process already, nor with `--container`, whose later processes are found by their cgroup:
/// say so rather than ignore them.
pub fn subprocesses(flags: &SubprocessArgs, all: bool, containers: bool) -> anyhow::Result<Option<bool>> {
    let choice = flags.choice();
    if (all || containers) && choice.is_some() {
        let flag = if flags.subprocesses { "--subprocesses" } else { "--no-subprocesses" };
        let why = if all {
            "with --all every process is profiled already"
        } else {
            "with --container every process of the container is profiled already, children included"
        };
        return Err(fatal(ExitCode::Usage, format!("{flag} is for --pid (and -- COMMAND) targets: {why}")));
    }
    Ok(choice)
}

/// A session's configuration from the shared sampling flags.
pub fn session_config(target: TargetSpec, sampling: &SamplingArgs, mode: Mode, bpf_stats: bool) -> SessionConfig {
    SessionConfig {
        target,
        frequency: sampling.frequency,
        kernel_stacks: sampling.kernel,
        max_depth: sampling.max_depth,
        off_cpu: !sampling.no_off_cpu,
        off_cpu_threshold_ns: sampling.off_cpu_threshold_us.saturating_mul(1000),
        off_cpu_stack_rate: sampling.off_cpu_stack_rate,
        native: sampling.native.then_some(NativeConfig {
            table_bytes: sampling.native_table_mib as u64 * (1 << 20),
            interpreter_frames: sampling.interpreter_frames,
        }),
        bpf_stats,
        mode,
        tasks: (!sampling.no_tasks)
            .then(|| TaskConfig { rate_hz: f64::from(sampling.task_rate), budget: sampling.task_budget / 100.0 }),
    }
}

/// The kernel caps perf sampling rates (kernel.perf_event_max_sample_rate); say so up front.
pub fn check_frequency(hz: u32) -> anyhow::Result<()> {
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

/// Why profiling ends from outside: SIGINT, SIGTERM, SIGHUP, or the duration running out.
pub struct Stop {
    sigint: Signal,
    sigterm: Signal,
    sighup: Signal,
    deadline: Option<tokio::time::Instant>,
}

impl Stop {
    /// Catches the signals from now on: a Ctrl-C during start-up (the verifier takes seconds on
    /// a loaded host) then ends cleanly instead of killing us with the outputs unwritten.
    pub fn catch_signals() -> anyhow::Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt())?,
            sigterm: signal(SignalKind::terminate())?,
            sighup: signal(SignalKind::hangup())?,
            deadline: None,
        })
    }

    /// Starts the clock of `--duration` (called once sampling has begun, so start-up does not
    /// eat into it).
    pub fn start_clock(&mut self, duration: Option<Duration>) {
        self.deadline = duration.map(|d| tokio::time::Instant::now() + d);
    }

    /// Waits for the first reason to stop.
    async fn reason(&mut self) -> String {
        let deadline = self.deadline;
        tokio::select! {
            _ = sleep_until(deadline) => "duration reached".to_string(),
            _ = self.sigint.recv() => "interrupted".to_string(),
            _ = self.sigterm.recv() => "terminated".to_string(),
            _ = self.sighup.recv() => "hung up".to_string(),
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Drives `session` every [`DRAIN_INTERVAL`] and calls `after_tick` after each drain (to
/// rotate windows, redraw, answer requests), until the session's targets are gone, `after_tick`
/// returns a reason to stop, or `stop` fires. Returns why it stopped.
pub async fn drive(
    session: &mut Session,
    stop: &mut Stop,
    mut after_tick: impl FnMut(&mut Session) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<String> {
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(reason) = session.tick() {
                    return Ok(reason);
                }
                if let Some(reason) = after_tick(session)? {
                    return Ok(reason);
                }
            }
            reason = stop.reason() => return Ok(reason),
        }
    }
}
