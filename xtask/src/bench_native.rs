//! `cargo xtask bench native`: what the DWARF unwinder (`--native`) costs.
//!
//! 1. Kernel time per sample (`--bpf-stats`) of a 30-frame native stack (C, -O2 without frame
//!    pointers) and of a ~30-frame mixed stack (Python calling a C extension calling back into
//!    Python and C again), at 99 and 999 Hz, beside the frame-pointer walk of the same targets.
//! 2. Unwind-table build time and size per binary (libc, libpython, a large library) from
//!    pyebpf's own log, and the tables of the whole host (`--all`).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// `rec` 26 deep under main, __libc_start_call_main, __libc_start_main and _start: 30 frames.
const DEEP_C: &str = r#"
#include <stdlib.h>
static volatile unsigned long sink;
__attribute__((noinline)) static void leaf(void) { for (unsigned long i = 0; i < 100000000UL; i++) sink += i; }
__attribute__((noinline)) static void rec(int n) { if (n == 0) leaf(); else rec(n - 1); sink++; }
int main(void) { for (;;) rec(25); }
"#;

/// Python 5 deep, then the test extension: Python -> C -> Python -> C (tests/workloads).
const MIXED_PY: &str = r#"
import sys, time
sys.path.insert(0, sys.argv[1])
import nativeext
def callback():
    nativeext.spin(3_000_000)
def outer():
    nativeext.call_through(callback)
def rec(n):
    if n == 0:
        while True:
            outer()
    rec(n - 1)
rec(4)
"#;

/// Loads the given libraries and sleeps (their tables are built when pyebpf registers it).
const LOADER_PY: &str = "import ctypes, sys, time\nfor p in sys.argv[1:]:\n    ctypes.CDLL(p)\ntime.sleep(3600)\n";

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(root: &Path, bin: &Path, seconds: u64) -> anyhow::Result<()> {
    let python = ["3.12.1", "3.13.0", "3.11.7"]
        .iter()
        .map(|v| PathBuf::from(format!("/root/.pyenv/versions/{v}/bin/python{}", &v[..v.rfind('.').unwrap()])))
        .find(|p| p.exists())
        .context("a pyenv CPython with a shared libpython (3.11-3.13) for the mixed stack")?;
    println!("pyebpf --native benchmark ({} s per run; {})", seconds, python.display());
    kernel_cost(root, bin, &python, seconds)?;
    tables(bin, &python)?;
    Ok(())
}

fn kernel_cost(root: &Path, bin: &Path, python: &Path, seconds: u64) -> anyhow::Result<()> {
    let _ = root;
    let deep = integration_tests::c_program_with("deep30", DEEP_C, &["-O2", "-fomit-frame-pointer"]);
    let ext = integration_tests::python::native_extension_abi3();
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("mixed.py");
    std::fs::write(&script, MIXED_PY)?;
    let ext_dir = ext.parent().unwrap().to_path_buf();

    let idle = Killed(Command::new("sleep").arg("3600").spawn()?);
    println!("\nKernel time of on_cpu_sample per sample of the target (the unwinder's tail calls included):");
    println!(
        "{:<34} {:>6} {:>8} {:>8} {:>11} {:>10} {:>12}",
        "target", "Hz", "unwinder", "samples", "ns/sample", "frames", "CPU share"
    );
    let mut reject = std::collections::HashMap::new();
    for hz in [99, 999] {
        let p = profile(bin, idle.0.id(), hz, seconds, &["--native"])?;
        let (runs, ns) = on_cpu_stats(&p);
        reject.insert(hz, if runs > 0 { ns as f64 / runs as f64 } else { 0.0 });
    }
    for (name, mut cmd) in [
        ("C, 30 native frames", {
            let mut c = Command::new(&deep);
            c.stdout(Stdio::null());
            c
        }),
        ("Python+C mixed", {
            let mut c = Command::new(python);
            c.arg(&script).arg(&ext_dir).stdout(Stdio::null());
            c
        }),
    ] {
        let target = Killed(cmd.spawn()?);
        std::thread::sleep(Duration::from_millis(300));
        for hz in [99, 999] {
            for (label, extra) in [("dwarf", &["--native"][..]), ("fp", &[][..])] {
                let p = profile(bin, target.0.id(), hz, seconds, extra)?;
                let (runs, ns) = on_cpu_stats(&p);
                let proc = process(&p, target.0.id()).context("target not in the profile")?;
                let samples = proc["samples"].as_u64().unwrap_or(0).max(1);
                let per_sample = (ns as f64 - runs.saturating_sub(samples) as f64 * reject[&hz]) / samples as f64;
                let frames = top_stack_len(bin, target.0.id(), extra)?;
                println!(
                    "{name:<34} {hz:>6} {label:>8} {samples:>8} {per_sample:>11.0} {frames:>10} {:>11.3}%",
                    per_sample * hz as f64 / 1e9 * 100.0
                );
            }
        }
    }
    println!(
        "ns/sample: BPF run time of the sampling program (with its tail calls) per sample of the target, after\n\
         taking out the runs that only rejected other processes (measured on a sleeping process).\n\
         frames: frames of the target's most frequent stack (--interpreter-frames: every native frame walked).\n\
         CPU share: ns/sample x rate, the share of a busy target's CPU the program takes."
    );
    Ok(())
}

/// Frames of the most frequent on-CPU stack of `pid`, every native frame shown.
fn top_stack_len(bin: &Path, pid: u32, extra: &[&str]) -> anyhow::Result<usize> {
    let mut args = extra.to_vec();
    if !extra.is_empty() {
        args.push("--interpreter-frames");
    }
    let p = profile(bin, pid, 99, 1, &args)?;
    let proc = process(&p, pid).context("target not in the profile")?;
    let top = proc["stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["category"] == "cpu")
        .max_by_key(|s| s["samples"].as_u64().unwrap_or(0))
        .context("no on-CPU stack")?;
    Ok(top["frames"].as_array().map_or(0, Vec::len))
}

fn profile(bin: &Path, pid: u32, hz: u32, seconds: u64, extra: &[&str]) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("p.json");
    let out = Command::new(bin)
        .args(["profile", "--bpf-stats", "--no-summary", "--mode", "cpu", "--no-off-cpu"])
        .args(["-F", &hz.to_string(), "-d", &seconds.to_string(), "--pid", &pid.to_string()])
        .args(extra)
        .arg("-o")
        .arg(&json)
        .stdout(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!("pyebpf failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&std::fs::read(&json)?)?)
}

fn process(profile: &Value, pid: u32) -> Option<&Value> {
    profile["processes"].as_array()?.iter().find(|p| p["pid"].as_u64() == Some(pid as u64))
}

fn on_cpu_stats(profile: &Value) -> (u64, u64) {
    let stats = profile["bpf_stats"].as_array().map(Vec::as_slice).unwrap_or_default();
    stats
        .iter()
        .find(|s| s["program"] == "on_cpu_sample")
        .map_or((0, 0), |s| (s["run_count"].as_u64().unwrap_or(0), s["run_time_ns"].as_u64().unwrap_or(0)))
}

/// One table as pyebpf logged it: (file, rows, pages, build ms).
fn logged_tables(stderr: &str) -> Vec<(String, u64, u64, f64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split("unwind table for ").nth(1)?;
            let (what, numbers) = rest.rsplit_once(": ")?;
            let path = what.split("path: \"").nth(1).and_then(|p| p.split('"').next()).unwrap_or(what).to_string();
            let mut it = numbers.split(", ");
            let rows = it.next()?.strip_suffix(" rows")?.parse().ok()?;
            let pages = it.next()?.strip_suffix(" pages")?.parse().ok()?;
            let ms = it.next()?.strip_suffix(" ms")?.parse().ok()?;
            Some((path, rows, pages, ms))
        })
        .collect()
}

fn run_logged(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "profiler::native=debug")
        .stdout(Stdio::null())
        .output()
        .context("cannot start pyebpf")?;
    if !out.status.success() {
        bail!("pyebpf failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tables(bin: &Path, python: &Path) -> anyhow::Result<()> {
    // A large library: LLVM as the toolchain installs it.
    let big = std::fs::read_dir("/usr/lib/llvm-22/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so.")));
    let mut loader = Command::new(python);
    loader.args(["-c", LOADER_PY]).args(big.iter()).stdout(Stdio::null());
    let target = Killed(loader.spawn()?);
    std::thread::sleep(Duration::from_millis(800));
    let pid = target.0.id().to_string();
    let log = run_logged(
        bin,
        &["profile", "--native", "--no-summary", "-d", "1", "--pid", &pid, "--format", "json", "-o", "/dev/null"],
    )?;
    println!("\nUnwind tables built for one process (CPython with libc, libpython and a large library loaded):");
    println!("{:<60} {:>10} {:>10} {:>8} {:>11} {:>9}", "binary", "file MB", "rows", "pages", "table KB", "build ms");
    for (path, rows, pages, ms) in logged_tables(&log) {
        let size = std::fs::metadata(&path).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
        let kb = (rows * 4 + pages * 8) as f64 / 1024.0;
        println!("{path:<60} {size:>10.1} {rows:>10} {pages:>8} {kb:>11.1} {ms:>9.1}");
    }
    drop(target);
    let log = run_logged(
        bin,
        &["profile", "--all", "--native", "--no-summary", "-d", "3", "--format", "json", "-o", "/dev/null"],
    )?;
    let all = logged_tables(&log);
    let bytes: u64 = all.iter().map(|(_, r, p, _)| r * 4 + p * 8).sum();
    let ms: f64 = all.iter().map(|t| t.3).sum();
    println!(
        "\nWhole host (`profile --all --native` for 3 s): {} tables, {:.2} MB of rows and pages, built in {:.0} ms in all",
        all.len(),
        bytes as f64 / 1e6,
        ms
    );
    Ok(())
}
