//! The programs the integration tests hand pyebpf's outputs to, as a user would:
//! `go tool pprof` (Debian's golang-go), Debian's Chromium, tmux, Prometheus and bpftool, and from npm the speedscope app and
//! schema, ajv and playwright-core (tests/consumers/package-lock.json, installed into
//! target/test-deps). Each step checks first, so a second run costs milliseconds.
use std::{path::Path, process::Command, time::Instant};

use anyhow::Context as _;

use crate::{setup::apt_install, util::run};

/// Where tests/consumers' npm packages are installed (tests/src/consumers.rs looks there).
pub fn deps_dir(root: &Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(Into::into).unwrap_or_else(|| root.join("target")).join("test-deps")
}

pub fn ensure(root: &Path) -> anyhow::Result<()> {
    let mut packages = Vec::new();
    if !found("go", &["version"]) {
        packages.push("golang-go");
    }
    if !Path::new("/usr/bin/chromium").exists() {
        packages.push("chromium");
    }
    // `pyebpf top` in a terminal, a Prometheus scraping `pyebpf daemon`, and bpftool to see
    // that the daemon's programs are gone once it stops (tests/tests/host.rs).
    if !found("tmux", &["-V"]) {
        packages.push("tmux");
    }
    if !found("prometheus", &["--version"]) {
        packages.push("prometheus");
    }
    if !found("bpftool", &["version"]) && !found("/usr/sbin/bpftool", &["version"]) {
        packages.push("bpftool");
    }
    if !found("npm", &["--version"]) {
        // Debian's npm brings Debian's nodejs.
        packages.push("npm");
    }
    if !packages.is_empty() {
        let start = Instant::now();
        eprintln!("xtask: installing {} from Debian for the output-format tests", packages.join(" "));
        apt_install(&packages)?;
        eprintln!("xtask: installed in {:.0} s", start.elapsed().as_secs_f64());
    }
    ensure_npm_packages(root)
}

fn found(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

/// `npm ci` from the committed lock (exact versions, integrity-checked), redone only when the
/// lock changes: a copy of the lock installed last is kept as a stamp.
fn ensure_npm_packages(root: &Path) -> anyhow::Result<()> {
    let source = root.join("tests/consumers");
    let dir = deps_dir(root);
    let lock = std::fs::read(source.join("package-lock.json")).context("read tests/consumers/package-lock.json")?;
    let stamp = dir.join(".installed-lock");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) && dir.join("node_modules").is_dir() {
        return Ok(());
    }
    let start = Instant::now();
    eprintln!("xtask: installing the output-format tests' npm packages into {}", dir.display());
    std::fs::create_dir_all(&dir)?;
    for file in ["package.json", "package-lock.json", ".npmrc"] {
        std::fs::copy(source.join(file), dir.join(file)).with_context(|| format!("copy tests/consumers/{file}"))?;
    }
    run(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&dir))?;
    std::fs::write(&stamp, lock)?;
    eprintln!("xtask: npm packages installed in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}
