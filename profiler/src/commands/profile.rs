//! `pyebpf profile`: load, sample until told to stop, then write outputs and the summary.
//!
//! With `-- COMMAND`, what became of the command is said on stderr (it exited, its processes
//! were ended, or left running with `--leave-running`), and pyebpf's exit status is the
//! command's when it exited on its own, as `time` and `strace` do: a script or CI job running
//! its tests under pyebpf still sees them fail.
use crate::{
    cli::ProfileArgs,
    commands::runner::{self, Stop},
    engine::{
        launch::{self, Ended, NamedPid},
        session::Session,
        target::{CommandEnd, TargetSpec},
    },
    error::{ExitCode, fatal},
    output::{self, summary},
};

/// Runs the profile; the exit status pyebpf should end with.
pub async fn run(args: ProfileArgs) -> anyhow::Result<u8> {
    let outputs = output::plan(&args.outputs, args.format)?;
    runner::preflight(&args.sampling)?;
    if args.leave_running && args.command.is_empty() {
        return Err(fatal(ExitCode::Usage, "--leave-running is for a command started with `-- COMMAND`"));
    }
    let children = runner::subprocesses(&args.subprocesses, args.all, !args.containers.is_empty())?;
    let target =
        TargetSpec::resolve(args.all, &args.pids, &args.containers, &args.command, children, args.leave_running)?;
    let mode = runner::mode(args.mode, &args.sampling)?;
    let mut stop = Stop::catch_signals()?;

    let mut session = Session::start(runner::session_config(target, &args.sampling, mode, args.bpf_stats))?;
    // Loading takes a moment (the verifier); say when sampling has begun, as py-spy does. On
    // stderr, so the summary (stdout) stays clean.
    eprintln!(
        "pyebpf: sampling at {} Hz{}; Ctrl-C stops and writes the outputs",
        args.sampling.frequency,
        if args.sampling.no_off_cpu { "" } else { " with off-CPU tracking" }
    );
    stop.start_clock(args.duration);
    let stop_reason = runner::drive(&mut session, &mut stop, |_| Ok(None)).await?;

    let profile = session.snapshot();
    session.log_cost();
    let command_end = session.stop();
    let stopped_on_terminal = session.command_stopped_on_terminal();
    log::info!("profiling stopped: {stop_reason}");
    let mut notes = session.notes();
    notes.insert(0, format!("stopped: {stop_reason}"));
    drop(session);
    if let Some(end) = &command_end {
        let said = describe_end(end);
        eprintln!("pyebpf: {said}");
        notes.push(said);
    }

    for spec in &outputs {
        output::write(&profile, spec)?;
        notes.push(format!("wrote {} ({})", spec.path.display(), spec.format.describe()));
    }
    if !args.no_summary {
        let stdout = std::io::stdout();
        // A closed stdout (e.g. piped into `head`) must not turn a finished profile into an error.
        let _ = summary::write(&profile, &notes, &mut stdout.lock());
    }
    if stopped_on_terminal {
        return Err(fatal(ExitCode::Target, stop_reason));
    }
    Ok(match command_end {
        Some(CommandEnd::Exited { status, .. }) => launch::shell_status(status),
        _ => 0,
    })
}

/// One line on what became of the command.
fn describe_end(end: &CommandEnd) -> String {
    match end {
        CommandEnd::Exited { status, left } if left.is_empty() => {
            format!("the command exited ({})", launch::describe_status(*status))
        }
        CommandEnd::Exited { status, left } => format!(
            "the command exited ({}) and left {} running, not ended by pyebpf: {}",
            launch::describe_status(*status),
            processes(left.len()),
            named(left)
        ),
        CommandEnd::Ended { ended, status } => {
            let mut line =
                format!("ended the command and what it started ({}): {}", named(&ended.processes), signals(ended));
            if let Some(status) = status {
                line.push_str(&format!("; the command: {}", launch::describe_status(*status)));
            }
            if !ended.survivors.is_empty() {
                line.push_str(&format!(
                    "; still running after SIGKILL (stuck in the kernel): {}",
                    named(&ended.survivors)
                ));
            }
            line
        }
        CommandEnd::LeftRunning { running } if running.is_empty() => {
            "--leave-running: nothing of the command was left running".to_string()
        }
        CommandEnd::LeftRunning { running } => {
            format!("--leave-running: left the command's {} running: {}", processes(running.len()), named(running))
        }
    }
}

fn processes(n: usize) -> String {
    if n == 1 { "1 process".to_string() } else { format!("{n} processes") }
}

/// "1234 python3, 1240 python3" (at most 8, then how many more).
fn named(pids: &[NamedPid]) -> String {
    const SHOWN: usize = 8;
    let mut parts: Vec<String> = pids.iter().take(SHOWN).map(|(pid, comm)| format!("{pid} {comm}")).collect();
    if pids.len() > SHOWN {
        parts.push(format!("{} more", pids.len() - SHOWN));
    }
    if parts.is_empty() { "none running".to_string() } else { parts.join(", ") }
}

/// "SIGINT, all gone in 0.31 s" / "SIGINT, SIGTERM, SIGKILL, in 4.02 s".
fn signals(ended: &Ended) -> String {
    if ended.signals.is_empty() {
        return "nothing left to signal".to_string();
    }
    let sent: Vec<&str> = ended.signals.iter().map(|&s| launch::signal_name(s)).collect();
    let outcome = if ended.survivors.is_empty() { "all gone" } else { "not all gone" };
    format!("{}, {outcome} in {:.2} s", sent.join(" then "), ended.took.as_secs_f64())
}
