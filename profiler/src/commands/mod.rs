//! One module per subcommand. Each turns its parsed arguments into a configured pipeline
//! ([`crate::engine`]) and outputs ([`crate::output`]); nothing below this layer reads the
//! command line. [`runner`] is the set-up and loop the profiling commands share.
pub mod daemon;
pub mod diff;
pub mod dump;
pub mod profile;
pub mod runner;
pub mod top;

use crate::cli::Command;

/// Runs one subcommand to its end; the exit status to end with (0, or the status of the
/// command `profile` started, see [`profile`]).
pub async fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Profile(args) => profile::run(args).await,
        Command::Diff(args) => diff::run(args).map(|()| 0),
        Command::Top(args) => top::run(args).await.map(|()| 0),
        Command::Daemon(args) => daemon::run(args).await.map(|()| 0),
        Command::Dump(args) => dump::run(args).map(|()| 0),
    }
}
