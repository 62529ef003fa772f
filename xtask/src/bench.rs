//! Benchmarks. Every figure is measured side by side in one run on this machine and printed;
//! nothing here asserts a time (machines are shared and noisy).
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::{bench_python, util};

#[derive(Clone, Subcommand)]
pub enum Which {
    /// The profiler's own CPU% and RSS sampling `--all`, idle and busy host, and the kernel
    /// cost per sample (BPF run-time stats).
    OnCpu {
        /// Seconds per scenario.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Off-CPU tracking: BPF cost per scheduler/syscall event, lost events at a high context
    /// switch rate, slowdown of small TCP round trips, and category error on known workloads.
    OffCpu {
        /// Seconds per run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Interleaved rounds of the slowdown measurement.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Slowdown of a CPU-bound Python workload (30-frame stack) under pyebpf and py-spy, the
    /// kernel cost per sample of that stack, and whether pyebpf's samples hold all of it.
    Python {
        /// Seconds of work per timed run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds; each runs every configuration once, interleaved with baselines.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Do not pin the workload to one CPU and the profilers to the others.
        #[arg(long)]
        no_pin: bool,
    },
    /// The DWARF unwinder (`--native`): kernel time per sample of a 30-frame native and a mixed
    /// Python/C stack at 99 and 999 Hz beside frame pointers, and unwind-table build time and
    /// size per binary and for the whole host.
    Native {
        /// Seconds per profile.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// A real web service under fixed load (Flask on gunicorn, wrk): requests/s and p99
    /// latency without a profiler, with pyebpf (on- and off-CPU), and with py-spy (default and
    /// --nonblocking) at the same rate; the profilers' CPU, RSS and lost samples.
    Overhead {
        /// Seconds of load per run.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        /// Rounds; each runs every configuration once, in rotating order.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Sampling rate of both profilers (Hz).
        #[arg(long, default_value_t = 99)]
        rate: u32,
        /// wrk connections (concurrent requests).
        #[arg(long, default_value_t = 16)]
        connections: u32,
        /// Threads of the gthread worker, one measurement per value (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [16, 64])]
        threads: Vec<u32>,
    },
    /// The profiler's own cost as a host agent in steady state: `daemon --all` beside 20
    /// Python processes of 4 threads waking 20x/s and a CPU-bound one (1), the web overhead
    /// benchmark (2), 500 Python processes (3), 1,000 short-lived processes a second (4); its
    /// CPU%, RSS and lost events.
    Agent {
        /// Seconds of the measured window (after the warm-up).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Seconds after the daemon serves before the window starts.
        #[arg(long, default_value_t = 10)]
        warmup: u64,
        /// Scenarios to run (comma-separated, 1-4).
        #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3, 4])]
        scenario: Vec<u32>,
        /// Scenario 1: Python processes.
        #[arg(long, default_value_t = 20)]
        processes: usize,
        /// Scenario 1: threads per process.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Scenario 1: wake-ups per second per thread.
        #[arg(long, default_value_t = 20)]
        wake_hz: u32,
        /// Scenario 3: Python processes.
        #[arg(long, default_value_t = 500)]
        many: usize,
        /// Scenario 4: short-lived processes started per second.
        #[arg(long, default_value_t = 1000)]
        spawn_rate: u32,
        /// Rounds per scenario (each binary once per round, in rotating order).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Another pyebpf binary measured side by side in the daemon scenarios and scenario 2
        /// (before/after).
        #[arg(long)]
        baseline: Option<std::path::PathBuf>,
    },
    /// asyncio task sampling: an aiohttp service with 1,000 live tasks under a fixed wrk load
    /// of short requests, without a profiler, with `profile --all`, and with `--all --no-tasks`:
    /// requests/s and p99 side by side, and pyebpf's CPU.
    Tasks {
        /// Seconds of load per run.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        /// Rounds; each runs every configuration once, in rotating order.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Live tasks in the service besides the requests'.
        #[arg(long, default_value_t = 1000)]
        live_tasks: u32,
        /// wrk connections (concurrent requests).
        #[arg(long, default_value_t = 8)]
        connections: u32,
        /// pyebpf's --task-rate.
        #[arg(long, default_value_t = 10)]
        task_rate: u32,
        /// Another pyebpf binary measured side by side in the same rounds (before/after).
        #[arg(long)]
        baseline: Option<std::path::PathBuf>,
    },
    /// Following process trees: a fork storm's rate alone, profiled with its children
    /// followed, without, and beside an unrelated followed target; pyebpf's CPU and the fork
    /// hook's kernel time per run.
    Trees {
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds; each runs every configuration once, in rotating order.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

impl Default for Which {
    fn default() -> Self {
        Self::OnCpu { seconds: 10 }
    }
}

pub fn run(root: &Path, bin: &Path, which: Which) -> anyhow::Result<()> {
    util::require_root("benchmarks load BPF programs")?;
    match which {
        Which::OnCpu { seconds } => on_cpu(bin, seconds),
        Which::OffCpu { seconds, rounds } => crate::bench_offcpu::run(root, bin, seconds, rounds),
        Which::Overhead { seconds, rounds, rate, connections, ref threads } => crate::bench_overhead::run(
            root,
            bin,
            crate::bench_overhead::Options {
                seconds,
                rounds,
                rate,
                connections,
                threads: threads.clone(),
                with_py_spy: true,
                baseline: None,
            },
        ),
        Which::Native { seconds } => crate::bench_native::run(root, bin, seconds),
        Which::Agent {
            seconds,
            warmup,
            ref scenario,
            processes,
            threads,
            wake_hz,
            many,
            spawn_rate,
            rounds,
            ref baseline,
        } => crate::bench_agent::run(
            root,
            bin,
            crate::bench_agent::Options {
                seconds,
                warmup,
                scenarios: scenario.clone(),
                processes,
                threads,
                wake_hz,
                many,
                spawn_rate,
                rounds,
                baseline: baseline.clone(),
            },
        ),
        Which::Tasks { seconds, rounds, live_tasks, connections, task_rate, ref baseline } => crate::bench_tasks::run(
            bin,
            crate::bench_tasks::Options {
                seconds,
                rounds,
                live_tasks,
                connections,
                task_rate,
                baseline: baseline.clone(),
            },
        ),
        Which::Trees { seconds, rounds } => crate::bench_trees::run(bin, seconds, rounds),
        Which::Python { seconds, rounds, no_pin } => {
            bench_python::run(root, bin, bench_python::Options { seconds, rounds, pin: !no_pin })
        }
    }
}

/// What one profiler run cost, from wait4's rusage and the profile's own statistics.
struct Measured {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: i64,
    samples: u64,
    lost: u64,
    bpf_runs: u64,
    bpf_ns: u64,
}

fn on_cpu(bin: &Path, seconds: u64) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("pyebpf on-CPU benchmark: `pyebpf profile --all` for {seconds} s per scenario, {cpus} CPUs");
    println!(
        "{:<28} {:>8} {:>6} {:>10} {:>9} {:>14}",
        "scenario", "samples", "lost", "pyebpf CPU", "max RSS", "kernel ns/run"
    );
    for (name, hz, busy) in
        [("idle host, 99 Hz", 99, false), ("busy host, 99 Hz", 99, true), ("busy host, 999 Hz", 999, true)]
    {
        let load = if busy { spin_all_cpus(cpus)? } else { Vec::new() };
        let m = measure(bin, hz, seconds);
        for mut child in load {
            let _ = child.kill();
            let _ = child.wait();
        }
        let m = m?;
        println!(
            "{:<28} {:>8} {:>6} {:>9.2}% {:>6.1} MiB {:>14.0}",
            name,
            m.samples,
            m.lost,
            100.0 * m.cpu.as_secs_f64() / m.wall.as_secs_f64(),
            m.max_rss_kib as f64 / 1024.0,
            if m.bpf_runs > 0 { m.bpf_ns as f64 / m.bpf_runs as f64 } else { 0.0 },
        );
    }
    println!(
        "(pyebpf CPU = user+system time of the profiler / wall time; kernel ns/run = BPF run time / runs of the sampling program)"
    );
    Ok(())
}

/// One CPU-bound Python loop per CPU.
fn spin_all_cpus(cpus: usize) -> anyhow::Result<Vec<Child>> {
    (0..cpus)
        .map(|_| {
            Command::new("python3")
                .args(["-c", "while True: pass"])
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start python3 for the busy scenario")
        })
        .collect()
}

fn measure(bin: &Path, hz: u32, seconds: u64) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("profile.json");
    let start = Instant::now();
    let child = Command::new(bin)
        .args([
            "profile",
            "--all",
            "--bpf-stats",
            "--no-summary",
            "-F",
            &hz.to_string(),
            "-d",
            &seconds.to_string(),
            "-o",
        ])
        .arg(&json)
        .spawn()
        .context("cannot start pyebpf")?;
    let (status, usage) = wait4(child.id() as i32)?;
    let wall = start.elapsed();
    if status != 0 {
        bail!("pyebpf exited with wait status {status}");
    }
    let profile: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let stats = profile["bpf_stats"].as_array().cloned().unwrap_or_default();
    let on_cpu = stats.iter().find(|s| s["program"] == "on_cpu_sample");
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Ok(Measured {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
        samples: profile["samples"].as_u64().unwrap_or(0),
        lost: profile["lost_events"].as_u64().unwrap_or(0),
        bpf_runs: on_cpu.and_then(|s| s["run_count"].as_u64()).unwrap_or(0),
        bpf_ns: on_cpu.and_then(|s| s["run_time_ns"].as_u64()).unwrap_or(0),
    })
}

/// Waits for a child and returns its wait status and resource usage (std's wait has no rusage).
fn wait4(pid: i32) -> anyhow::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err.into());
        }
    }
}
