//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs every cargo-fuzz target in `fuzz/` for a
//! bounded time each and fails on any crash, printing a table of executions per target.
//!
//! Installs what it needs first (nightly, cargo-fuzz, the eBPF toolchain the profiler crate's
//! build script uses), writes seed inputs (small ELF files compiled here, this machine's own
//! /proc/net tables), checks that the harness builds valid CPython object graphs (the fuzz
//! crate's unit tests), then fuzzes. Crashes are left in fuzz/artifacts/TARGET/.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    setup,
    util::{output, path_with_cargo_bin, run},
};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
pub const TARGETS: [&str; 10] = [
    "linetable",
    "code_object",
    "thread_names",
    "elf_discovery",
    "kernel_btf",
    "proc_net",
    "frame_walk",
    "wait_target",
    "asyncio_tasks",
    "native_walk",
];

pub fn run_all(root: &Path, seconds: u32, only: &[String]) -> anyhow::Result<()> {
    for name in only {
        if !TARGETS.contains(&name.as_str()) {
            bail!("no fuzz target '{name}': the targets are {}", TARGETS.join(", "));
        }
    }
    let targets: Vec<&str> =
        TARGETS.iter().copied().filter(|t| only.is_empty() || only.iter().any(|o| o == t)).collect();
    setup::ensure_all()?;
    ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("fuzz");
    write_seeds(&fuzz_dir)?;

    let started = Instant::now();
    eprintln!("xtask: checking the fuzz harness (its images must read back as valid objects)");
    run(nightly_cargo(&fuzz_dir).args(["test", "--lib", "--quiet"]))?;
    eprintln!("xtask: building the fuzz targets (nightly, address sanitizer)");
    run(nightly_cargo(&fuzz_dir).args(["fuzz", "build"]))?;
    let build_secs = started.elapsed().as_secs_f64();

    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for target in &targets {
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let t0 = Instant::now();
        let out = nightly_cargo(&fuzz_dir)
            .args(["fuzz", "run", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
                "-timeout=10",
                "-rss_limit_mb=2048",
            ])
            .output()
            .with_context(|| format!("cannot run cargo fuzz for {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        let stat = |name: &str| -> u64 {
            log.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let corpus_len = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
        let ok = out.status.success();
        rows.push(format!(
            "{target:<14} {:>6.1} s {:>11} runs {:>8} exec/s {:>6} corpus  {}",
            t0.elapsed().as_secs_f64(),
            stat("number_of_executed_units"),
            stat("average_exec_per_sec"),
            corpus_len,
            if ok { "ok" } else { "CRASH" }
        ));
        if !ok {
            let tail: Vec<&str> = log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("{}", tail.join("\n"));
            failed.push(target.to_string());
        }
    }
    println!("fuzzing: {} targets, {seconds} s each (harness check and build {build_secs:.0} s)", targets.len());
    for row in &rows {
        println!("  {row}");
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets crashed: {} (inputs in fuzz/artifacts/; replay with `cargo +nightly fuzz run TARGET ARTIFACT` in fuzz/)",
            failed.join(", ")
        );
    }
    Ok(())
}

fn nightly_cargo(dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir).arg("+nightly").env("PATH", path_with_cargo_bin());
    // The xtask alias runs us under the stable toolchain: do not pass it on.
    cmd.env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO");
    cmd
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if output("cargo", &["fuzz", "--version"]).is_some_and(|v| v.contains(CARGO_FUZZ_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .args(["install", "--locked", &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}")])
        .env("PATH", path_with_cargo_bin()))
}

/// Seed inputs, rewritten on every run (the corpus keeps what the fuzzer found besides).
fn write_seeds(fuzz_dir: &Path) -> anyhow::Result<()> {
    let corpus = |t: &str| -> anyhow::Result<PathBuf> {
        let dir = fuzz_dir.join("corpus").join(t);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    };
    // /proc/net tables and readlink texts as this machine has them.
    let proc_net = corpus("proc_net")?;
    for table in ["tcp", "tcp6", "udp", "udp6", "unix"] {
        if let Ok(text) = std::fs::read(format!("/proc/net/{table}")) {
            // Header and a few lines: libFuzzer prefers small inputs.
            let text = String::from_utf8_lossy(&text);
            let head: Vec<&str> = text.lines().take(6).collect();
            std::fs::write(proc_net.join(format!("seed-{table}")), head.join("\n"))?;
        }
    }
    let mut links = Vec::new();
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                links.push(link.to_string_lossy().into_owned());
            }
        }
    }
    links.extend(
        ["socket:[12345]", "pipe:[678]", "anon_inode:[eventpoll]", "anon_inode:inotify", "/var/lib/x (deleted)"]
            .map(String::from),
    );
    std::fs::write(proc_net.join("seed-links"), links.join("\n"))?;

    // A wait-target record (profiler_common::wait_target::WaitTargetEvent, 864 bytes): a
    // regular file with a complete three-part path, and the same bytes as a TCP socket.
    let wait_target = corpus("wait_target")?;
    let mut record = vec![0u8; 864];
    record[0..4].copy_from_slice(&8u32.to_le_bytes());
    record[12..16].copy_from_slice(&3u32.to_le_bytes());
    record[44..48].copy_from_slice(&0o100644u32.to_le_bytes());
    record[60..64].copy_from_slice(&3u32.to_le_bytes());
    for (i, part) in ["a.dat", "app", "tmp"].iter().enumerate() {
        record[96 + 48 * i..96 + 48 * i + part.len()].copy_from_slice(part.as_bytes());
    }
    std::fs::write(wait_target.join("seed-file"), &record)?;
    record[12..16].copy_from_slice(&5u32.to_le_bytes());
    record[44..48].copy_from_slice(&0o140777u32.to_le_bytes());
    record[48..50].copy_from_slice(&2u16.to_le_bytes());
    record[50..52].copy_from_slice(&6u16.to_le_bytes());
    record[64..68].copy_from_slice(&[127, 0, 0, 1]);
    std::fs::write(wait_target.join("seed-tcp"), &record)?;
    // An on-CPU sample as the kernel packs it (profiler_common::sample_record): the 112-byte
    // head, then 1 kernel address, 3 user addresses and their 3 CFAs (`user_end` 1: walked by
    // the DWARF unwinder), 2 Python frames of 24 bytes.
    let mut sample = vec![0u8; 112 + 7 * 8 + 2 * 24];
    sample[0..4].copy_from_slice(&1u32.to_le_bytes());
    for (at, len) in [(24, 1u32), (28, 3), (32, 2)] {
        sample[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    sample[104..108].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(wait_target.join("seed-sample"), &sample)?;

    // Small shared objects shaped like libpython: _PyRuntime (starting with 3.13's debug
    // cookie, or not) and Py_Version (3.11+), or neither.
    let elf = corpus("elf_discovery")?;
    let tmp = tempfile_dir()?;
    for (name, source) in [
        (
            "seed-py313.so",
            "struct { char cookie[8]; unsigned long version; unsigned long free_threaded; char rest[64]; } _PyRuntime = {\"xdebugpy\", 0x030d00f0, 0, {0}};\nconst unsigned int Py_Version = 0x030d00f0;\n",
        ),
        ("seed-py311.so", "char _PyRuntime[256] = {1};\nconst unsigned int Py_Version = 0x030b07f0;\n"),
        ("seed-py38.so", "char _PyRuntime[256] = {1};\nint other_symbol;\n"),
    ] {
        let out = elf.join(name);
        if out.exists() {
            continue;
        }
        let src = tmp.join(format!("{name}.c"));
        std::fs::write(&src, source)?;
        let built = tmp.join(name);
        run(Command::new("cc").args(["-shared", "-nostdlib", "-Os", "-fPIC", "-o"]).arg(&built).arg(&src))
            .context("cc (gcc) builds the ELF seeds")?;
        std::fs::copy(&built, &out)?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pyebpf-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
