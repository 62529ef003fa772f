//! pyebpf: a system-wide eBPF profiler for Python services.

use clap::Parser as _;

use profiler::{
    cli::Cli,
    commands,
    error::{ExitCode, Fatal},
};

fn main() -> std::process::ExitCode {
    // `RUST_BACKTRACE=1` (set in many shells and CI jobs) also turns on `Backtrace::capture` in
    // libraries: blazesym then unwinds our stack for every expected I/O error (a debug file
    // that is not installed, the maps of a process that just exited), a few per binary it
    // parses and per exited process under `--all`; our errors are printed without backtraces
    // anyway. Panics keep theirs (`RUST_BACKTRACE`); an explicit `RUST_LIB_BACKTRACE` is kept.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: nothing else runs yet: no thread has been started, no runtime built.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).format_target(false).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(ExitCode::Internal as u8);
        }
    };
    let result = runtime.block_on(commands::run(cli.command));
    match result {
        Ok(status) => std::process::ExitCode::from(status),
        Err(e) => {
            let code = match e.downcast_ref::<Fatal>() {
                Some(fatal) => {
                    eprintln!("error: {fatal}");
                    fatal.code
                }
                None => {
                    eprintln!("error: {e:#}");
                    ExitCode::Internal
                }
            };
            std::process::ExitCode::from(code as u8)
        }
    }
}
