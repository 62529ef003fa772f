//! Installs what the eBPF build needs, checking each piece first so a second run is instant.
//! The recipe is the one proven on these machines (see docs/DESIGN.md, "Toolchain").
use std::process::Command;

use anyhow::Context as _;

use crate::util::{self, output, path_with_cargo_bin, run};

pub const NIGHTLY: &str = "nightly";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGE: &str = "llvm-22-dev";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn ensure_all() -> anyhow::Result<()> {
    ensure_nightly_rust_src()?;
    ensure_llvm()?;
    ensure_bpf_linker()?;
    Ok(())
}

/// The BPF target is built with `-Z build-std=core`, which needs the nightly toolchain's sources.
fn ensure_nightly_rust_src() -> anyhow::Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"]).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        eprintln!("xtask: installing the nightly Rust toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        return Ok(());
    }
    let installed = output("rustup", &["component", "list", "--installed", "--toolchain", NIGHTLY]).unwrap_or_default();
    if !installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    Ok(())
}

/// rustfmt and clippy for `cargo xtask lint`: on the toolchain that builds the workspace (the
/// active one), and clippy on nightly too for the BPF crate. rustfmt is added to nightly as
/// well, so `cargo +nightly fmt` in fuzz/ agrees with the stable run.
pub fn ensure_lint_components() -> anyhow::Result<()> {
    for toolchain in [None, Some(NIGHTLY)] {
        let mut list = vec!["component", "list", "--installed"];
        list.extend(toolchain.iter().flat_map(|t| ["--toolchain", t]));
        let installed = output("rustup", &list).unwrap_or_default();
        let missing: Vec<&str> =
            ["rustfmt", "clippy"].into_iter().filter(|c| !installed.lines().any(|l| l.trim().starts_with(c))).collect();
        if missing.is_empty() {
            continue;
        }
        eprintln!("xtask: adding {} to the {} toolchain", missing.join(" and "), toolchain.unwrap_or("active"));
        let mut add = Command::new("rustup");
        add.args(["component", "add"]).args(&missing);
        if let Some(t) = toolchain {
            add.args(["--toolchain", t]);
        }
        run(&mut add)?;
    }
    Ok(())
}

/// bpf-linker links against LLVM; Debian's llvm-22-dev matches nightly's LLVM 22.
fn ensure_llvm() -> anyhow::Result<()> {
    if std::path::Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        return Ok(());
    }
    eprintln!("xtask: installing {LLVM_PACKAGE} from Debian");
    apt_install(&[LLVM_PACKAGE])
}

/// Installs Debian packages, as root (through sudo when needed).
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let sudo = |args: &[&str]| {
        let mut cmd = if util::is_root() {
            Command::new(args[0])
        } else {
            let mut c = Command::new("sudo");
            c.arg(args[0]);
            c
        };
        cmd.args(&args[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(&mut sudo(&["apt-get", "update", "-qq"])).context("apt-get update")?;
    let mut args = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(&mut sudo(&args)).with_context(|| format!("apt-get install {}", packages.join(" ")))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if output("bpf-linker", &["--version"]).is_some_and(|version| version.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .args([
            "install",
            "--locked",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("PATH", path_with_cargo_bin()))
}
