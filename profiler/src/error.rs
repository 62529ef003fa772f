//! Errors a user can act on, each with its own exit status.
//!
//! Anything that is the user's or the host's problem (bad arguments, missing privileges, a pid
//! that does not exist, an output that cannot be written, a kernel without BPF) becomes a
//! [`Fatal`] with a one-line message that names the problem and what to do. Everything else is an
//! internal error (exit 1) printed with its cause chain.
use std::fmt;

/// Exit statuses, stable for scripts. clap uses 2 for usage errors itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Internal = 1,
    Usage = 2,
    Permission = 3,
    Target = 4,
    Output = 5,
    Kernel = 6,
    /// An input profile (`pyebpf diff`) cannot be read or is not a profile.
    Input = 7,
}

#[derive(Debug)]
pub struct Fatal {
    pub code: ExitCode,
    pub message: String,
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fatal {}

/// A user-facing error with the given exit status.
pub fn fatal(code: ExitCode, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Fatal { code, message: message.into() })
}
