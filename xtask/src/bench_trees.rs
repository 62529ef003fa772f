//! `cargo xtask bench trees`: what following process trees costs. A fork storm (bash starting
//! `/bin/true` as fast as it can) run four ways, in interleaved rounds:
//!
//! - alone (the baseline fork rate);
//! - as `pyebpf profile -- bash ...`: every child followed and profiled (the default);
//! - as `pyebpf profile --no-subprocesses -- bash ...`: bash only;
//! - beside `pyebpf profile --subprocesses --pid SLEEPER`: not in the followed tree, so the
//!   kernel's fork hook runs for every fork and returns after one map lookup.
//!
//! Reported per configuration (medians over rounds): forks per second and their ratio to the
//! baseline, pyebpf's own CPU (user+system over its whole run, start-up included, read from
//! /proc every 50 ms: the last 50 ms are missed, and wait4's figure would include the storm it
//! reaps), the fork hook's kernel time per run (BPF stats), processes in the profile and lost
//! events.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    Alone,
    Followed,
    NotFollowed,
    Unrelated,
}

impl Config {
    const ALL: [Config; 4] = [Config::Alone, Config::Followed, Config::NotFollowed, Config::Unrelated];

    fn name(self) -> &'static str {
        match self {
            Config::Alone => "storm alone",
            Config::Followed => "profile -- storm (followed)",
            Config::NotFollowed => "profile --no-subprocesses -- storm",
            Config::Unrelated => "storm beside profile --pid --subprocesses",
        }
    }
}

/// One run's figures.
#[derive(Default, Clone, Copy)]
struct Row {
    forks_per_sec: f64,
    pyebpf_cpu_pct: f64,
    fork_hook_ns: f64,
    fork_hook_runs: u64,
    processes: u64,
    lost: u64,
}

pub fn run(bin: &Path, seconds: u64, rounds: usize) -> anyhow::Result<()> {
    println!("pyebpf process-tree benchmark: a fork storm (bash running /bin/true) for {seconds} s, {rounds} rounds");
    let mut rows: Vec<(Config, Vec<Row>)> = Config::ALL.iter().map(|&c| (c, Vec::new())).collect();
    for round in 0..rounds {
        // Rotate the order so no configuration always runs first (after a quiet spell).
        for i in 0..Config::ALL.len() {
            let config = Config::ALL[(i + round) % Config::ALL.len()];
            let row = measure(bin, config, seconds).with_context(|| format!("{} (round {round})", config.name()))?;
            rows.iter_mut().find(|(c, _)| *c == config).unwrap().1.push(row);
        }
    }
    let baseline = median(rows[0].1.iter().map(|r| r.forks_per_sec));
    println!(
        "{:<42} {:>9} {:>6} {:>11} {:>14} {:>10} {:>6}",
        "configuration", "forks/s", "ratio", "pyebpf CPU", "fork hook ns", "processes", "lost"
    );
    for (config, runs) in &rows {
        let forks = median(runs.iter().map(|r| r.forks_per_sec));
        let (lo, hi) = range(runs.iter().map(|r| r.forks_per_sec));
        let profiled = *config != Config::Alone;
        let dash = |v: String| if profiled { v } else { "-".to_string() };
        println!(
            "{:<42} {:>9.0} {:>6.3} {:>11} {:>14} {:>10} {:>6}   (forks/s {lo:.0}..{hi:.0})",
            config.name(),
            forks,
            forks / baseline.max(1e-9),
            dash(format!("{:.1}%", median(runs.iter().map(|r| r.pyebpf_cpu_pct)))),
            dash(format!(
                "{:.0} ({} runs)",
                median(runs.iter().map(|r| r.fork_hook_ns)),
                median(runs.iter().map(|r| r.fork_hook_runs as f64)) as u64
            )),
            dash(format!("{:.0}", median(runs.iter().map(|r| r.processes as f64)))),
            dash(format!("{:.0}", median(runs.iter().map(|r| r.lost as f64)))),
        );
    }
    println!("(medians over rounds; pyebpf CPU = its user+system time / its wall time, start-up included)");
    Ok(())
}

/// The storm: counts the processes it started into `count_file`.
fn storm(seconds: u64, count_file: &Path) -> Command {
    let script = format!(
        "end=$((SECONDS+{seconds})); n=0; while [ $SECONDS -lt $end ]; do /bin/true; n=$((n+1)); done; echo $n > {}",
        count_file.display()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script]);
    cmd
}

fn measure(bin: &Path, config: Config, seconds: u64) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let (count, json) = (dir.path().join("count"), dir.path().join("p.json"));
    let profile_args = ["profile", "--bpf-stats", "--no-summary", "-o"];
    let started = Instant::now();
    let (pyebpf, sleeper) = match config {
        Config::Alone => {
            let status = storm(seconds, &count).status()?;
            if !status.success() {
                bail!("the storm failed: {status}");
            }
            (None, None)
        }
        Config::Followed | Config::NotFollowed => {
            let mut cmd = Command::new(bin);
            cmd.args(profile_args).arg(&json);
            if config == Config::NotFollowed {
                cmd.arg("--no-subprocesses");
            }
            let storm = storm(seconds, &count);
            cmd.arg("--").arg(storm.get_program()).args(storm.get_args());
            (Some(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?), None)
        }
        Config::Unrelated => {
            let sleeper = Command::new("sleep").arg("1000").spawn()?;
            let mut child = Command::new(bin)
                .args(profile_args)
                .arg(&json)
                .args(["--subprocesses", "--pid", &sleeper.id().to_string(), "-d", &(seconds + 2).to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            wait_for_sampling(&mut child)?;
            let status = storm(seconds, &count).status()?;
            if !status.success() {
                bail!("the storm failed: {status}");
            }
            (Some(child), Some(KillOnDrop(sleeper)))
        }
    };
    let mut row = Row::default();
    if let Some(mut child) = pyebpf {
        // Its own CPU time, polled from /proc until it exits: wait4's rusage would add the
        // storm's, which pyebpf reaps as the command's parent.
        let mut own_ticks = 0u64;
        let status = loop {
            if let Some(ticks) = own_cpu_ticks(child.id()) {
                own_ticks = ticks;
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            bail!("pyebpf exited with {status}");
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        row.pyebpf_cpu_pct = 100.0 * own_ticks as f64 / hz / started.elapsed().as_secs_f64();
        let profile: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
        let stats = profile["bpf_stats"].as_array().cloned().unwrap_or_default();
        if let Some(fork) = stats.iter().find(|s| s["program"] == "process_fork") {
            let runs = fork["run_count"].as_u64().unwrap_or(0);
            row.fork_hook_runs = runs;
            row.fork_hook_ns = fork["run_time_ns"].as_u64().unwrap_or(0) as f64 / runs.max(1) as f64;
        }
        row.processes = profile["processes"].as_array().map_or(0, |p| p.len() as u64);
        row.lost = profile["lost_events"].as_u64().unwrap_or(0);
    }
    drop(sleeper);
    let forks: f64 = std::fs::read_to_string(&count)?.trim().parse().context("the storm's count")?;
    row.forks_per_sec = forks / seconds as f64;
    Ok(row)
}

/// utime + stime of a process itself (not its children), in clock ticks, from /proc/PID/stat.
fn own_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Reads pyebpf's stderr until it says it samples (loading takes a while on a busy machine).
fn wait_for_sampling(child: &mut Child) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let stderr = child.stderr.take().context("pyebpf's stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("pyebpf: sampling") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).context("pyebpf did not start sampling within 60 s")
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}
