//! pyebpf: a system-wide eBPF profiler for Python services.

use clap::Parser as _;

use profiler::{
    cli::Cli,
    commands,
    error::{ExitCode, Fatal},
};

fn main() -> std::process::ExitCode {
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
