//! `cargo xtask lint`: formatting, clippy with warnings as errors on every crate, and the
//! profiler crate's module graph. Every step runs even when an earlier one fails, so one run
//! lists everything to fix.
use std::{path::Path, process::Command};

use anyhow::bail;

use crate::{
    module_graph, setup,
    util::{self, path_with_cargo_bin},
};

/// Where the BPF crate is checked: its own target directory, since it is built for another
/// target with `-Z build-std` by another toolchain (sharing `target/` would make the host
/// build and this one invalidate each other's artifacts).
const BPF_LINT_TARGET_DIR: &str = "target/lint-bpf";

pub fn run(root: &Path) -> anyhow::Result<()> {
    setup::ensure_all()?;
    setup::ensure_lint_components()?;
    let steps: [(&str, &dyn Fn() -> anyhow::Result<()>); 5] = [
        ("rustfmt", &|| util::cargo(root, &["fmt", "--all", "--check"])),
        // The fuzz targets are a workspace of their own (built on nightly by `cargo xtask fuzz`).
        ("rustfmt (fuzz)", &|| util::cargo(root, &["fmt", "--manifest-path", "fuzz/Cargo.toml", "--all", "--check"])),
        // profiler-ebpf is not a default member: it only builds for the BPF target (below).
        // --keep-going: every crate's warnings in one run, not only the first failing crate's.
        ("clippy", &|| {
            let args = ["clippy", "--keep-going", "--workspace", "--exclude", "profiler-ebpf", "--all-targets"];
            util::cargo(root, &[&args[..], &["--", "-D", "warnings"]].concat())
        }),
        ("clippy (BPF programs)", &|| bpf_clippy(root)),
        ("module graph", &|| module_graph::check(&root.join("profiler/src"))),
    ];
    let mut failed = Vec::new();
    for (name, step) in steps {
        eprintln!("xtask: lint: {name}");
        if let Err(e) = step() {
            eprintln!("xtask: lint: {name} failed: {e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    eprintln!("xtask: lint: all clean");
    Ok(())
}

/// Clippy on the eBPF programs as aya-build compiles them (profiler/build.rs): nightly, for
/// `bpfel-unknown-none`, with `core` built from source. Through `rustup run` rather than
/// `cargo +nightly`: the cargo running xtask is a toolchain's own binary, not rustup's proxy.
fn bpf_clippy(root: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root)
        .args(["run", setup::NIGHTLY, "cargo", "clippy", "--package", "profiler-ebpf", "--target"])
        .args(["bpfel-unknown-none", "-Z", "build-std=core", "--release", "--target-dir", BPF_LINT_TARGET_DIR])
        .args(["--", "-D", "warnings"])
        .env("PATH", path_with_cargo_bin())
        // Set by the stable cargo that runs xtask; they would pick its compiler.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    util::run(&mut cmd)
}
