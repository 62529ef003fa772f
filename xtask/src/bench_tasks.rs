//! `cargo xtask bench tasks`: what asyncio task sampling costs a busy asyncio service. The
//! aiohttp app of tests/services with 1,000 live tasks (`--live-tasks`: long-poll-like waiters
//! on events and timers) serves short requests (`GET /health`) under a fixed wrk load, measured
//! in one run without a profiler, with `pyebpf profile --all`, and with `--all --no-tasks`
//! (the same without task snapshots, so the snapshots' own share shows). Rounds rotate the
//! order; medians over rounds, with ratios to the baseline, and pyebpf's own CPU. With
//! `--baseline BIN`, another pyebpf binary runs both profiled configurations in the same
//! rounds (before/after a change, side by side).
use std::{path::Path, process::Command, time::Instant};

use integration_tests::services::{Load, LoadReport, free_port, python_env, start_aiohttp};

use crate::bench_overhead::{Profiler, cpu_ticks, median, private_copies};

pub struct Options {
    pub seconds: u64,
    pub rounds: usize,
    pub live_tasks: u32,
    pub connections: u32,
    /// pyebpf's `--task-rate` (Hz); its `--task-budget` stays the default.
    pub task_rate: u32,
    /// Another pyebpf binary measured in the same rounds.
    pub baseline: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Baseline,
    Pyebpf,
    PyebpfNoTasks,
    /// The `--baseline` binary's `--all` and `--all --no-tasks`.
    OtherPyebpf,
    OtherPyebpfNoTasks,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Baseline => "no profiler",
            Config::Pyebpf => "pyebpf --all",
            Config::PyebpfNoTasks => "pyebpf --all --no-tasks",
            Config::OtherPyebpf => "baseline bin --all",
            Config::OtherPyebpfNoTasks => "baseline bin --all --no-tasks",
        }
    }
}

struct Run {
    report: LoadReport,
    /// pyebpf's CPU over the load, as a share of one CPU.
    profiler_cpu: Option<f64>,
    /// Task snapshots pyebpf took, and the milliseconds they took (from its log).
    snapshots: Option<(u64, f64)>,
    /// Tasks in the profile's heaviest snapshot-weighted process (a check that 1,000 were read).
    tasks_seen: Option<u64>,
}

pub fn run(bin: &Path, opts: Options) -> anyhow::Result<()> {
    let env = python_env();
    let dir = tempfile::tempdir()?;
    let (pyebpf, other) = private_copies(dir.path(), bin, opts.baseline.as_deref())?;
    if let Some(base) = &opts.baseline {
        println!("baseline bin: {}", base.display());
    }
    let port = free_port();
    let live = opts.live_tasks.to_string();
    let service = start_aiohttp(env, port, &["--role", "app", "--upstream-port", "9", "--live-tasks", &live]);
    let pid = service.pid();
    println!(
        "tasks: aiohttp (python {}) with {} live tasks, GET /health under wrk -c{} for {} s per run, {} rounds, \
         --task-rate {}",
        env.version, opts.live_tasks, opts.connections, opts.seconds, opts.rounds, opts.task_rate
    );
    println!("load average at the start: {}", load_average());
    let load = Load::new(port, &["/health"]).connections(opts.connections);
    // Warm-up: imports, the live tasks' first rounds, CPU frequency.
    load.clone().duration_secs(2).run();
    let mut configs = vec![Config::Baseline, Config::Pyebpf, Config::PyebpfNoTasks];
    if other.is_some() {
        configs.extend([Config::OtherPyebpf, Config::OtherPyebpfNoTasks]);
    }
    let mut runs: Vec<(Config, Run)> = Vec::new();
    // Per round, each configuration's requests/s over that round's baseline: drift between
    // rounds on a shared machine cancels out of these.
    let mut paired: Vec<(Config, f64)> = Vec::new();
    for round in 0..opts.rounds {
        let mut order = configs.to_vec();
        order.rotate_left(round % configs.len());
        for &config in &order {
            let bin = match config {
                Config::OtherPyebpf | Config::OtherPyebpfNoTasks => other.as_deref().unwrap_or(&pyebpf),
                _ => &pyebpf,
            };
            let run = measure(config, bin, pid, &load, &opts, dir.path())?;
            eprintln!(
                "  round {}: {:<26} {:>8.1} req/s, p99 {:>6.1} ms{}",
                round + 1,
                config.name(),
                run.report.requests_per_sec(),
                run.report.latency_p99.as_secs_f64() * 1e3,
                run.profiler_cpu.map(|c| format!(", pyebpf {:.1}% CPU", c * 100.0)).unwrap_or_default()
            );
            runs.push((config, run));
        }
        let this_round = &runs[runs.len() - configs.len()..];
        let base = this_round.iter().find(|(c, _)| *c == Config::Baseline).map(|(_, r)| r.report.requests_per_sec());
        for (c, r) in this_round {
            if let Some(base) = base.filter(|b| *b > 0.0) {
                paired.push((*c, r.report.requests_per_sec() / base));
            }
        }
    }
    report(&configs, &runs, &paired);
    println!("load average at the end: {}", load_average());
    Ok(())
}

fn measure(config: Config, pyebpf: &Path, pid: u32, load: &Load, opts: &Options, dir: &Path) -> anyhow::Result<Run> {
    let json = dir.join("profile.json");
    let mut profiler = match config {
        Config::Baseline => None,
        Config::Pyebpf | Config::PyebpfNoTasks | Config::OtherPyebpf | Config::OtherPyebpfNoTasks => {
            let mut cmd = Command::new(pyebpf);
            cmd.args(["profile", "--all", "--no-summary", "--task-rate", &opts.task_rate.to_string(), "-o"])
                .arg(&json)
                .env("RUST_LOG", "info");
            if matches!(config, Config::PyebpfNoTasks | Config::OtherPyebpfNoTasks) {
                cmd.arg("--no-tasks");
            }
            Some(Profiler::start(cmd, &format!("pid {pid}: CPython "))?)
        }
    };
    let cpu_before = profiler.as_ref().map(|p| cpu_ticks(p.child.id()));
    let started = Instant::now();
    let report = load.clone().duration_secs(opts.seconds).run();
    let elapsed = started.elapsed().as_secs_f64();
    let mut run = Run { report, profiler_cpu: None, snapshots: None, tasks_seen: None };
    if let Some(p) = profiler.as_mut() {
        let ticks = cpu_ticks(p.child.id()).saturating_sub(cpu_before.unwrap_or(0));
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        run.profiler_cpu = Some(ticks as f64 / hz / elapsed);
        let printed = p.stop()?;
        run.snapshots = snapshots(&printed);
        let profile: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
        run.tasks_seen = profile["processes"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["pid"] == pid))
            .and_then(|p| p["tasks"].as_array())
            .map(|ts| live_tasks_seen(ts));
    }
    Ok(run)
}

/// How many long-poll waiters a snapshot held on average: their summed task time over the
/// notifier's (one task, alive through every snapshot, so its time is the snapshots' span).
fn live_tasks_seen(tasks: &[serde_json::Value]) -> u64 {
    let waiting: f64 = tasks
        .iter()
        .filter(|t| t["python_frames"].as_array().is_some_and(|f| f.iter().any(|f| f["function"] == "long_poll")))
        .map(|t| t["weight_ns"].as_f64().unwrap_or(0.0))
        .sum();
    let notifier: f64 = tasks
        .iter()
        .filter(|t| t["python_frames"].as_array().is_some_and(|f| f.iter().any(|f| f["function"] == "notifier")))
        .map(|t| t["weight_ns"].as_f64().unwrap_or(0.0))
        .sum();
    if notifier > 0.0 { (waiting / notifier).round() as u64 } else { 0 }
}

/// pyebpf's closing log line: "asyncio task snapshots: N in X ms".
fn snapshots(printed: &str) -> Option<(u64, f64)> {
    let line = printed.lines().rev().find_map(|l| l.split("asyncio task snapshots: ").nth(1))?;
    let mut words = line.split_whitespace();
    let n = words.next()?.parse().ok()?;
    let ms = words.nth(1)?.parse().ok()?;
    Some((n, ms))
}

fn report(configs: &[Config], runs: &[(Config, Run)], paired: &[(Config, f64)]) {
    let of = |c: Config| runs.iter().filter(move |(k, _)| *k == c).map(|(_, r)| r);
    let base_rps = median(of(Config::Baseline).map(|r| r.report.requests_per_sec()).collect());
    let base_p99 = median(of(Config::Baseline).map(|r| r.report.latency_p99.as_secs_f64() * 1e3).collect());
    println!(
        "  {:<26} {:>8} {:>7} {:>16} {:>8} {:>7} {:>12} {:>22} {:>11} {:>22}",
        "configuration",
        "req/s",
        "ratio",
        "[min..max]",
        "p99 ms",
        "ratio",
        "pyebpf CPU",
        "task snapshots (ms)",
        "live tasks",
        "paired ratio"
    );
    for &c in configs {
        let rps: Vec<f64> = of(c).map(|r| r.report.requests_per_sec()).collect();
        let (lo, hi) = rps.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let rps = median(rps);
        let p99 = median(of(c).map(|r| r.report.latency_p99.as_secs_f64() * 1e3).collect());
        let cpu = median(of(c).filter_map(|r| r.profiler_cpu).collect());
        let snaps: Vec<(u64, f64)> = of(c).filter_map(|r| r.snapshots).collect();
        let seen = median(of(c).filter_map(|r| r.tasks_seen).map(|n| n as f64).collect());
        let errors: u64 = of(c).map(|r| r.report.errors()).sum();
        let pairs: Vec<f64> = paired.iter().filter(|(k, _)| *k == c).map(|&(_, x)| x).collect();
        let (plo, phi) = pairs.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let pair_text = format!("{:.3} [{plo:.2}..{phi:.2}]", median(pairs));
        println!(
            "  {:<26} {:>8.1} {:>7.3} {:>16} {:>8.2} {:>6.2}x {:>12} {:>22} {:>11} {:>22}{}",
            c.name(),
            rps,
            rps / base_rps,
            format!("[{lo:.0}..{hi:.0}]"),
            p99,
            p99 / base_p99,
            if cpu.is_nan() { "-".to_string() } else { format!("{:.1}%", cpu * 100.0) },
            if snaps.is_empty() {
                "-".to_string()
            } else {
                let n = median(snaps.iter().map(|s| s.0 as f64).collect());
                let ms = median(snaps.iter().map(|s| s.1).collect());
                format!("{n:.0} ({ms:.0})")
            },
            if seen.is_nan() { "-".to_string() } else { format!("{seen:.0}") },
            pair_text,
            if errors > 0 { format!("  ({errors} failed requests)") } else { String::new() },
        );
    }
    println!(
        "  (medians over rounds; pyebpf CPU = its user+system time over the load's wall time; task snapshots \
         per run and the milliseconds they took; live tasks = the long-poll waiters' time over the notifier's; paired ratio = median over rounds of \
         requests/s over the same round's baseline, [min..max])"
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
