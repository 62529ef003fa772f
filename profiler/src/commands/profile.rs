//! `pyebpf profile`: load, sample until told to stop, then write outputs and the summary.
use crate::{
    cli::ProfileArgs,
    commands::runner::{self, Stop},
    engine::{session::Session, target::TargetSpec},
    output::{self, summary},
};

pub async fn run(args: ProfileArgs) -> anyhow::Result<()> {
    let outputs = output::plan(&args.outputs, args.format)?;
    runner::preflight(&args.sampling)?;
    let target = TargetSpec::resolve(args.all, &args.pids, &args.containers, &args.command)?;
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
