//! `cargo xtask bench off-cpu`: what off-CPU tracking costs and how right it is, measured side
//! by side in one run: BPF cost per scheduler and syscall event, lost events at a high context
//! switch rate, the slowdown of a syscall-heavy Python program, and the error of each category
//! against a workload whose truth is known by construction. Prints; asserts nothing.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::bench_python::find_python;

const WORKLOAD: &str = include_str!("../bench/offcpu_workload.py");

pub fn run(root: &Path, bin: &Path, seconds: u64, rounds: usize) -> anyhow::Result<()> {
    let (python, label) = find_python()?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("offcpu_workload.py");
    std::fs::write(&script, WORKLOAD)?;
    println!("pyebpf off-CPU benchmark: {label}, {seconds} s per run, {rounds} rounds");

    // 1. Context switches: every pipe hand-off blocks a thread; threshold 0 makes every one an
    //    event with stacks, the worst case for the ring buffer.
    println!("\nPipe ping-pong (2 context switches per round trip), under pyebpf:");
    println!(
        "{:<34} {:>12} {:>14} {:>14} {:>10}",
        "configuration", "round trips/s", "switches/s", "off-CPU events", "lost/10k"
    );
    for threshold in ["0", "100"] {
        let (stats, profile) =
            profiled(bin, &python, &script, "pingpong", seconds, &["--off-cpu-threshold-us", threshold])?;
        let rate = stats["round_trips"].as_f64().unwrap_or(0.0) / stats["seconds"].as_f64().unwrap_or(1.0);
        let events = profile["off_cpu_events"].as_u64().unwrap_or(0);
        let lost = profile["lost_events"].as_u64().unwrap_or(0);
        println!(
            "{:<34} {:>12.0} {:>14.0} {:>14} {:>10.2}",
            format!("--off-cpu-threshold-us {threshold}"),
            rate,
            2.0 * rate,
            events,
            10_000.0 * lost as f64 / (events + lost).max(1) as f64
        );
        if threshold == "0" {
            println!("  BPF cost per run (this run):");
            for name in ["sched_switch", "sched_wakeup", "sys_exit", "on_cpu_sample"] {
                if let Some((runs, ns)) = program(&profile, name) {
                    println!("    {name:<14} {runs:>10} runs {:>8.0} ns/run", ns as f64 / runs.max(1) as f64);
                }
            }
        }
    }

    // 2. Slowdown of small TCP round trips, interleaved with baselines.
    println!("\nTCP echo round trips on loopback (round trips/s), interleaved:");
    let (mut base, mut with, mut without_off) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        base.push(rate(&unprofiled(&python, &script, "echo", seconds)?));
        with.push(rate(&profiled(bin, &python, &script, "echo", seconds, &[])?.0));
        without_off.push(rate(&profiled(bin, &python, &script, "echo", seconds, &["--no-off-cpu"])?.0));
    }
    let b = median(&base);
    for (name, xs) in
        [("no profiler", &base), ("pyebpf (on- and off-CPU)", &with), ("pyebpf --no-off-cpu", &without_off)]
    {
        let m = median(xs);
        println!(
            "  {name:<28} {m:>10.0}   ratio to baseline {:.3}   runs {:?}",
            m / b,
            xs.iter().map(|x| *x as u64).collect::<Vec<_>>()
        );
    }

    // 3. Accuracy against known truth (tests/workloads/offcpu.py).
    println!("\nAccuracy (tests/workloads/offcpu.py, truth by construction):");
    let known = root.join("tests/workloads/offcpu.py");
    let (_, profile) = profile_run(bin, &[], &python, &known, &["3"])?;
    let p = &profile["processes"][0];
    let pct = |name: &str, cats: &[&str]| -> Option<f64> {
        let t = p["threads"].as_array()?.iter().find(|t| t["python_name"] == name)?;
        let wall = t["wall_ns"].as_f64()?.max(1.0);
        Some(cats.iter().map(|c| t["totals_ns"][*c].as_f64().unwrap_or(0.0)).sum::<f64>() * 100.0 / wall)
    };
    for (thread, cats, truth) in [
        ("compute-sleep", &["sleep"][..], 60.0),
        ("compute-sleep", &["cpu", "gil", "runqueue"][..], 40.0),
        ("net-client", &["net"][..], 100.0),
        ("lock-waiter", &["lock"][..], 100.0),
    ] {
        match pct(thread, cats) {
            Some(v) => println!(
                "  {thread:<14} {:<22} measured {v:5.1}%  truth ~{truth:.0}%  error {:+.1} points",
                cats.join("+"),
                v - truth
            ),
            None => println!("  {thread:<14} not found"),
        }
    }
    println!("  (net-client and lock-waiter also compute a little between waits: their truth is just under 100%)");
    Ok(())
}

fn rate(stats: &Value) -> f64 {
    stats["round_trips"].as_f64().unwrap_or(0.0) / stats["seconds"].as_f64().unwrap_or(1.0)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// (runs, run time ns) of one BPF program from a profile's `bpf_stats`.
fn program(profile: &Value, name: &str) -> Option<(u64, u64)> {
    let s = profile["bpf_stats"].as_array()?.iter().find(|s| s["program"] == name)?;
    Some((s["run_count"].as_u64()?, s["run_time_ns"].as_u64()?))
}

fn unprofiled(python: &Path, script: &Path, mode: &str, seconds: u64) -> anyhow::Result<Value> {
    let out = Command::new(python).arg(script).args([mode, &seconds.to_string()]).stderr(Stdio::inherit()).output()?;
    last_json(&out.stdout)
}

/// Runs the workload under `pyebpf profile -- ...`; returns its own JSON stats and the profile.
fn profiled(
    bin: &Path,
    python: &Path,
    script: &Path,
    mode: &str,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<(Value, Value)> {
    let (stdout, profile) = profile_run(bin, extra, python, script, &[mode, &seconds.to_string()])?;
    Ok((last_json(&stdout)?, profile))
}

/// `pyebpf profile --bpf-stats [extra] -- PYTHON SCRIPT ARGS`: the command's stdout and the profile.
fn profile_run(
    bin: &Path,
    extra: &[&str],
    python: &Path,
    script: &Path,
    args: &[&str],
) -> anyhow::Result<(Vec<u8>, Value)> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("p.json");
    let out = Command::new(bin)
        .args(["profile", "--bpf-stats", "--no-summary", "-o"])
        .arg(&json)
        .args(extra)
        .arg("--")
        .arg(python)
        .arg(script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run pyebpf")?;
    if !out.status.success() {
        bail!("pyebpf failed: {}", out.status);
    }
    Ok((out.stdout, serde_json::from_slice(&std::fs::read(&json)?)?))
}

/// The workload's JSON line (pyebpf's summary is off; the workload prints one line last).
fn last_json(stdout: &[u8]) -> anyhow::Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).context("workload printed no JSON")?;
    Ok(serde_json::from_str(line)?)
}
