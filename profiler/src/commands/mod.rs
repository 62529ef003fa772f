//! One module per subcommand. Each turns its parsed arguments into a configured pipeline
//! ([`crate::engine`]) and outputs ([`crate::output`]); nothing below this layer reads the
//! command line. [`runner`] is the set-up and loop the profiling commands share.
pub mod daemon;
pub mod diff;
pub mod profile;
pub mod runner;
pub mod top;

use crate::cli::Command;

/// Runs one subcommand to its end.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Profile(args) => profile::run(args).await,
        Command::Diff(args) => diff::run(args),
        Command::Top(args) => top::run(args).await,
        Command::Daemon(args) => daemon::run(args).await,
    }
}
