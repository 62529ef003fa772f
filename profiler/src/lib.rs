//! pyebpf as a library: the binary in main.rs is a thin shell over [`commands`].
//!
//! The folders are the pipeline, and dependencies point one way (the lint task checks that no
//! two top-level modules import each other, directly or through others):
//!
//! ```text
//! main → cli, commands → engine, output → model
//!                         engine → bpf, python, offcpu, native, host
//! ```
//!
//! - [`cli`]: the command line (clap types only); read by `main` and [`commands`] alone.
//! - [`commands`]: one module per subcommand, and the set-up and loop they share.
//! - [`engine`]: a profiling session: ring-buffer events in, per-window [`model::Profile`]s out.
//! - [`bpf`]: loading, configuring and reading the kernel programs.
//! - [`python`]: CPython processes: discovery, layouts, code objects, thread names, event loops.
//! - [`offcpu`]: what a wait was: syscall classes, descriptor targets, categories.
//! - [`native`]: native stacks from DWARF CFI: unwind tables for the kernel, mixed stacks.
//! - [`host`]: the machine: /proc, native symbols, process memory, clocks, privileges.
//! - [`model`]: the finished profile, typed; what every output is made from.
//! - [`output`]: files and the terminal summary rendered from the model.
//! - [`error`]: errors a user can act on, with their exit statuses.
pub mod bpf;
pub mod cli;
pub mod commands;
pub mod engine;
pub mod error;
pub mod host;
pub mod model;
pub mod native;
pub mod offcpu;
pub mod output;
pub mod python;
