//! Project tasks: `cargo xtask setup | build | run | test | bench | fuzz | gen-python-offsets`.
//!
//! Everything the project needs on a fresh machine is installed from here, idempotently: each
//! step checks first and does nothing when already done.
mod bench;
mod bench_offcpu;
mod bench_python;
mod fuzz;
mod python_offsets;
mod setup;
mod util;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "pyebpf's build, set-up, test and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces the eBPF build needs (nightly rust-src, LLVM 22, bpf-linker).
    Setup,
    /// Set up, then build the release `pyebpf` binary (target/release/pyebpf).
    Build,
    /// Set up, build, and run `pyebpf` with the given arguments (as root, via sudo if needed).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build once, and run every test (unit and integration, as root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure the profiler's cost; prints ratios measured side by side in one run.
    Bench {
        #[command(subcommand)]
        which: Option<bench::Which>,
    },
    /// Fuzz every parser of untrusted bytes (cargo fuzz targets in fuzz/, nightly) for a bounded
    /// time each; fails on any crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 20)]
        seconds: u32,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Regenerate profiler/src/python/offsets_generated.rs from the CPython headers of every
    /// pyenv 3.8+ interpreter found (compiles an offsetof probe per version).
    GenPythonOffsets,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = util::workspace_root();
    match cli.task {
        Task::Setup => setup::ensure_all(),
        Task::Build => build(&root).map(|bin| println!("{}", bin.display())),
        Task::Run { args } => {
            let bin = build(&root)?;
            util::run_as_root(&bin, &args)
        }
        Task::Test { args } => test(&root, &args),
        Task::Fuzz { seconds, targets } => fuzz::run_all(&root, seconds, &targets),
        Task::GenPythonOffsets => {
            python_offsets::generate(&root.join("profiler/src/python/offsets_generated.rs"))
        }
        Task::Bench { which } => {
            let bin = build(&root)?;
            bench::run(&root, &bin, which.unwrap_or_default())
        }
    }
}

/// One release build shared by running, testing and benchmarking.
fn build(root: &std::path::Path) -> anyhow::Result<PathBuf> {
    setup::ensure_all()?;
    util::cargo(root, &["build", "--release", "--package", "profiler", "--bin", "pyebpf"])?;
    Ok(root.join("target/release/pyebpf"))
}

fn test(root: &std::path::Path, extra: &[String]) -> anyhow::Result<()> {
    let bin = build(root)?;
    util::require_root("the integration tests load BPF programs and profile real processes")?;
    let mut args = vec!["test", "--release", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    // One test at a time: they burn CPU on purpose and check sample shares, which two cores
    // shared between concurrent workloads would make flaky.
    if !extra.iter().any(|a| a == "--") {
        args.push("--");
    }
    args.push("--test-threads=1");
    util::cargo_with_env(root, &args, &[("PYEBPF_BIN", bin.as_os_str())])
}
