//! Builds the eBPF programs (profiler-ebpf, for the BPF target, with the nightly toolchain and
//! bpf-linker) so that the `pyebpf` binary can embed the object file.
//!
//! The inner build is the one `aya_build::build_ebpf` 0.2.0 runs (same command, flags, target
//! directory and artifact copy), invoked here so that its output reads well: aya-build forwards
//! every line of the inner cargo as a `cargo:warning`, and a first build printed ~80 lines of
//! `warning: profiler@0.1.0:    Compiling ...`. Here the inner cargo's progress is dropped
//! (cargo's own progress bar shows `profiler(build)` while it runs), its compiler warnings are
//! passed on in full as warnings, and when it fails everything it said is printed in full.
use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Artifact, CompilerMessage, Message, diagnostic::DiagnosticLevel};

/// The toolchain the BPF programs build with (`cargo xtask setup` installs it).
const TOOLCHAIN: &str = "nightly";
/// The BPF crate.
const PACKAGE: &str = "profiler-ebpf";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == PACKAGE)
        .ok_or_else(|| anyhow!("{PACKAGE} package not found"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("{PACKAGE} has no manifest directory"))?;
    // The build-dependency on profiler-ebpf reruns us when its library changes; this, when its
    // binary's sources do.
    println!("cargo:rerun-if-changed={root_dir}");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let target = match std::env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => "bpfel-unknown-none",
        Ok("big") => "bpfeb-unknown-none",
        other => bail!("unsupported target endianness {other:?}"),
    };
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let arch = if arch.starts_with("riscv64") { "riscv64".to_string() } else { arch };

    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo", "build", "--package", PACKAGE, "--bins", "--message-format=json"]).args([
        "--release",
        "--target",
        target,
        "-Z",
        "build-std=core",
        "--features",
        "",
    ]);
    // Separated by 0x1f, as CARGO_ENCODED_RUSTFLAGS wants.
    let rustflags = [format!("--cfg=bpf_target_arch=\"{arch}\""), "-Cdebuginfo=2".into(), "-Clink-arg=--btf".into()];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"));
    // Set by the cargo running us; they would pick its (stable) compiler.
    cmd.env_remove("RUSTC").env_remove("RUSTC_WORKSPACE_WRAPPER");
    // Not our target directory: cargo would wait on its own lock (rust-lang/cargo#6412).
    let target_dir = out_dir.join("aya-build").join("target").join(PACKAGE);
    cmd.arg("--target-dir").arg(&target_dir);

    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| {
        format!(
            "cannot run `rustup run {TOOLCHAIN} cargo` to build the eBPF programs (`cargo xtask setup` installs it)"
        )
    })?;
    // stderr on a thread of its own, so that neither pipe fills while the other is read.
    let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let stderr = std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<String>>());

    let mut executables = Vec::new();
    // Everything the inner build said besides progress, for a failure's report.
    let mut said = Vec::new();
    for message in Message::parse_stream(BufReader::new(child.stdout.take().expect("piped stdout"))) {
        match message.context("the eBPF build's cargo wrote invalid JSON")? {
            Message::CompilerArtifact(Artifact { executable: Some(exe), target, .. }) => {
                executables.push((target.name, exe.into_std_path_buf()));
            }
            Message::CompilerMessage(CompilerMessage { message, .. }) => {
                let text = message.rendered.unwrap_or(message.message);
                if matches!(message.level, DiagnosticLevel::Warning) {
                    warn(&text);
                }
                said.push(text);
            }
            Message::TextLine(line) => said.push(line),
            _ => {}
        }
    }
    let status = child.wait().context("waiting for the eBPF build")?;
    let stderr = stderr.join().map_err(|_| anyhow!("reading the eBPF build's stderr"))?;
    let rest: Vec<String> = stderr.into_iter().filter(|l| !is_progress(l)).collect();
    if !status.success() {
        // Shown by cargo under "failed to run custom build command", in full.
        for line in said.iter().chain(&rest) {
            eprintln!("{line}");
        }
        bail!("building the eBPF programs failed ({status}): {:?}", cmd_line(&cmd));
    }
    // Cargo's own warnings (manifest, lock file...), and its "generated N warnings" lines.
    if !rest.is_empty() {
        warn(&rest.join("\n"));
    }
    for (name, binary) in executables {
        let dst = out_dir.join(&name);
        std::fs::copy(&binary, &dst).with_context(|| format!("copy {} to {}", binary.display(), dst.display()))?;
    }
    Ok(())
}

/// Cargo's status lines (`   Compiling x`, `    Finished ...`): progress, not news.
fn is_progress(line: &str) -> bool {
    const STATUS: [&str; 12] = [
        "Compiling",
        "Checking",
        "Finished",
        "Fresh",
        "Blocking",
        "Updating",
        "Locking",
        "Adding",
        "Downloading",
        "Downloaded",
        "Building",
        "Running",
    ];
    line.split_whitespace().next().is_some_and(|w| STATUS.contains(&w))
}

/// A warning cargo shows the user, one `cargo:warning` per line (a warning ends at a newline).
fn warn(text: &str) {
    for line in text.trim_end().lines() {
        println!("cargo:warning={line}");
    }
}

fn cmd_line(cmd: &Command) -> OsString {
    let mut line = OsString::from(cmd.get_program());
    for arg in cmd.get_args() {
        line.push(" ");
        line.push(arg);
    }
    line
}
