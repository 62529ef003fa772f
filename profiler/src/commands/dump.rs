//! `pyebpf dump`: every thread of the target processes now, as text or JSON on stdout.
use std::io::Write as _;

use crate::{
    cli::DumpArgs,
    engine::{
        dump::{DumpTarget, dump},
        target::TargetSpec,
    },
    error::{ExitCode, fatal},
    host::privileges,
    model::dump::Dump,
    output,
};

pub fn run(args: DumpArgs) -> anyhow::Result<()> {
    privileges::check()?;
    let target = if args.all {
        DumpTarget::AllPython
    } else {
        // The same checks and messages as `profile --pid`.
        match TargetSpec::resolve(false, &args.pids, &[], &[], None, false)? {
            TargetSpec::Pids { pids, .. } => DumpTarget::Pids(pids),
            _ => return Err(fatal(ExitCode::Usage, "give --pid PID or --all")),
        }
    };
    let processes = dump(&target, args.kernel, args.native);
    if let DumpTarget::Pids(pids) = &target
        && let Some(gone) = pids.iter().find(|p| !processes.iter().any(|d| d.pid == **p))
    {
        return Err(fatal(ExitCode::Target, format!("no process with pid {gone}: it exited")));
    }
    let text = if args.json {
        let doc = Dump { format: "pyebpf-dump", version: 1, processes };
        serde_json::to_string_pretty(&doc)? + "\n"
    } else {
        output::dump::text(&processes)
    };
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error.
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
    Ok(())
}
