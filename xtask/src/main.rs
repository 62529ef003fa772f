//! Project tasks: `cargo xtask setup | setup-pythons | build | run | lint | test | test-kernels |
//! bench | fuzz | gen-python-offsets`.
//!
//! Everything the project needs on a fresh machine is installed from here, idempotently: each
//! step checks first and does nothing when already done.
mod bench;
mod bench_agent;
mod bench_native;
mod bench_offcpu;
mod bench_overhead;
mod bench_python;
mod bench_tasks;
mod bench_trees;
mod cpython_build;
mod fuzz;
mod kernels;
mod lint;
mod module_graph;
mod python_offsets;
mod pythons;
mod setup;
mod tcg;
mod test_tools;
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
    /// Install the toolchain pieces the eBPF build needs (nightly rust-src, LLVM 22, bpf-linker),
    /// and rustfmt and clippy for `lint`.
    Setup {
        /// Also install what the tests hand outputs to (go tool pprof, Chromium, speedscope...).
        #[arg(long)]
        tests: bool,
    },
    /// Make the interpreters the tests need beyond pyenv's: an OS root run through chroot (Debian
    /// sid with python3.14 and python3.15 in target/test-roots/sid; 3-5 minutes once), and
    /// free-threaded 3.13t, 3.14t and 3.15t built from Debian's source packages in
    /// target/pythons (minutes each, once). `cargo xtask test` does this too, and carries on
    /// without what cannot be made.
    SetupPythons {
        /// Also install CPython's headers and a C compiler in the root, for gen-python-offsets.
        #[arg(long)]
        dev: bool,
    },
    /// Set up, then build the release `pyebpf` binary (target/release/pyebpf).
    Build,
    /// Set up, build, and run `pyebpf` with the given arguments (as root, via sudo if needed).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check formatting (rustfmt), clippy with warnings as errors on every crate (the BPF
    /// programs with nightly for their target), and that the profiler crate's top-level
    /// modules import each other in no cycle (and only main and commands import cli).
    Lint,
    /// Set up (with the tests' tools), build once, and run every test (unit and integration, as
    /// root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels under qemu (downloaded once through apt into
    /// target/kernels, never installed) and run the BPF programs and a core subset of the
    /// integration tests in each; prints each kernel's time and results (as root).
    TestKernels {
        /// Only this series (repeatable): 5.10, 6.1, 6.12.
        #[arg(long = "kernel", value_name = "SERIES")]
        only: Vec<String>,
        /// Look for newer kernel packages than the cached ones.
        #[arg(long)]
        refresh: bool,
        /// Only check that the programs load and profile (`profile --all`), no tests.
        #[arg(long)]
        smoke: bool,
        /// Run this shell script in each guest instead of the tests (for debugging; `$R` is
        /// the results directory shared with the host, `$PYEBPF_BIN` the binary).
        #[arg(long, value_name = "FILE")]
        script: Option<PathBuf>,
        /// Guest CPUs.
        #[arg(long, default_value_t = 2)]
        smp: u32,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 3072)]
        memory: u32,
        /// TCG threading: `single` (one host thread for every vCPU) or `multi`. Default:
        /// `multi` on qemu 8.1 and newer, `single` before (stale translated code after kernel
        /// text patching; see xtask/src/tcg.rs).
        #[arg(long, value_enum)]
        tcg_thread: Option<tcg::Threading>,
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
    /// pyenv 3.8+ interpreter found, and of OS roots for the versions pyenv lacks (the test
    /// root when present; compiles an offsetof probe per version).
    GenPythonOffsets {
        /// An OS root (chroot) with CPython headers and a C compiler (repeatable).
        #[arg(long = "root")]
        roots: Vec<PathBuf>,
    },
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
        Task::Setup { tests } => {
            setup::ensure_all()?;
            setup::ensure_lint_components()?;
            if tests { test_tools::ensure(&root) } else { Ok(()) }
        }
        Task::Build => build(&root).map(|bin| println!("{}", bin.display())),
        Task::Run { args } => {
            let bin = build(&root)?;
            util::run_as_root(&bin, &args)
        }
        Task::Lint => lint::run(&root),
        Task::Test { args } => test(&root, &args),
        Task::TestKernels { only, refresh, smoke, script, smp, memory, tcg_thread } => {
            let bin = build(&root)?;
            let opts = kernels::Options {
                only,
                refresh,
                smoke_only: smoke || script.is_some(),
                script,
                smp,
                memory_mib: memory,
                tcg_thread,
            };
            kernels::run(&root, &bin, &opts)
        }
        Task::SetupPythons { dev } => pythons::ensure(&root, true, dev),
        Task::Fuzz { seconds, targets } => fuzz::run_all(&root, seconds, &targets),
        Task::GenPythonOffsets { roots } => {
            python_offsets::generate(&root, &root.join("profiler/src/python/offsets_generated.rs"), &roots)
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
    test_tools::ensure(root)?;
    // Interpreters in OS roots (3.14, 3.15) and free-threaded builds; without them the tests say
    // which versions are missing.
    pythons::ensure(root, false, false)?;
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
