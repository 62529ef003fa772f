//! `cargo xtask bench overhead`: what profiling costs a real web service. The Flask app of
//! tests/services on gunicorn (one gthread worker), its `/cpu` endpoint under a fixed wrk load
//! (same connections, same duration), measured in one run without a profiler, with
//! `pyebpf profile --all` (on- and off-CPU), and with `py-spy record` at the same rate, in its
//! default (blocking) mode and with `--nonblocking`. Rounds interleave the configurations so
//! drift on a shared machine hits them alike; medians are reported with ratios to the baseline.
//! Then the same with more threads in the worker (idle ones), since a profiler that stops
//! every thread per sample gets slower as the target grows.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use integration_tests::services::{FlaskService, Gunicorn, Load, LoadReport};
use serde_json::Value;

use crate::bench_python;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Baseline,
    Pyebpf,
    /// The `baseline` binary's `profile --all`.
    OtherPyebpf,
    PySpy,
    PySpyNonblocking,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Baseline => "no profiler",
            Config::Pyebpf => "pyebpf --all (on+off-CPU)",
            Config::OtherPyebpf => "baseline bin --all",
            Config::PySpy => "py-spy record",
            Config::PySpyNonblocking => "py-spy record --nonblocking",
        }
    }
}

pub struct Options {
    pub seconds: u64,
    pub rounds: usize,
    pub rate: u32,
    pub connections: u32,
    pub threads: Vec<u32>,
    /// Also measure py-spy (`bench agent` compares pyebpf with no profiler only).
    pub with_py_spy: bool,
    /// Another pyebpf binary measured in the same rounds (before/after a change).
    pub baseline: Option<PathBuf>,
}

/// One measured load run.
struct Run {
    report: LoadReport,
    /// The profiler's CPU time over the load, as a share of one CPU.
    profiler_cpu: Option<f64>,
    /// Its peak RSS (VmHWM) in MiB.
    profiler_rss_mib: Option<f64>,
    /// Samples the profiler took and lost (pyebpf: lost events; py-spy: failed samples).
    samples: Option<u64>,
    lost: Option<u64>,
}

pub fn run(root: &Path, bin: &Path, opts: Options) -> anyhow::Result<()> {
    let (python, _) = bench_python::find_python()?;
    let py_spy = if opts.with_py_spy {
        bench_python::ensure_py_spy(root, &python)
            .map_err(|e| eprintln!("warning: py-spy is unavailable, its rows are skipped: {e:#}"))
            .ok()
    } else {
        None
    };
    let dir = tempfile::tempdir()?;
    let (pyebpf, other) = private_copies(dir.path(), bin, opts.baseline.as_deref())?;
    if let Some(base) = &opts.baseline {
        println!("baseline bin: {}", base.display());
    }
    let mut configs = vec![Config::Baseline, Config::Pyebpf];
    if other.is_some() {
        configs.push(Config::OtherPyebpf);
    }
    if py_spy.is_some() {
        configs.extend([Config::PySpy, Config::PySpyNonblocking]);
    }
    println!(
        "overhead: Flask on gunicorn (1 gthread worker), GET /cpu (5 ms of Python CPU per request), wrk -c{} for {} s per run, {} rounds, profilers at {} Hz",
        opts.connections, opts.seconds, opts.rounds, opts.rate
    );
    if let Some(p) = &py_spy {
        let v =
            Command::new(p).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        println!("py-spy: {}", v.unwrap_or_default());
    }
    println!("load average at the start: {}", load_average());
    for &threads in &opts.threads {
        let service = FlaskService::start_with(&Gunicorn { workers: 1, worker_class: "gthread", threads });
        let workers = service.gunicorn.children();
        let [worker] = workers[..] else { bail!("expected one gunicorn worker, found {workers:?}") };
        let load = Load::new(service.gunicorn.port(), &["/cpu"]).connections(opts.connections);
        // Warm-up: imports, connection pools, CPU frequency.
        load.clone().duration_secs(2).run();
        let mut runs: Vec<(Config, Run)> = Vec::new();
        for round in 0..opts.rounds {
            // Rotate the order each round so no configuration always runs first or last.
            let mut order = configs.clone();
            order.rotate_left(round % configs.len());
            for &config in &order {
                let bin = match config {
                    Config::OtherPyebpf => other.as_deref().unwrap_or(&pyebpf),
                    _ => &pyebpf,
                };
                let run = measure(config, bin, py_spy.as_deref(), worker, &load, opts.seconds, opts.rate, dir.path())?;
                runs.push((config, run));
            }
        }
        println!(
            "\n{threads} threads in the worker ({} busy at a time under -c{}):",
            opts.connections.min(threads),
            opts.connections
        );
        report(&configs, &runs);
    }
    println!("\nload average at the end: {}", load_average());
    Ok(())
}

/// Private copies in `dir` of the binary measured and of the `--baseline` one, if any: a
/// rebuild of target/release/pyebpf during the rounds cannot change what is measured.
pub(crate) fn private_copies(
    dir: &Path,
    bin: &Path,
    baseline: Option<&Path>,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let copy = |from: &Path, name: &str| -> anyhow::Result<PathBuf> {
        let to = dir.join(name);
        std::fs::copy(from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
        Ok(to)
    };
    Ok((copy(bin, "pyebpf")?, baseline.map(|b| copy(b, "pyebpf-baseline")).transpose()?))
}

#[allow(
    clippy::too_many_arguments,
    reason = "one measurement's set-up, from its one caller's loop; a struct would only rename them"
)]
fn measure(
    config: Config,
    pyebpf: &Path,
    py_spy: Option<&Path>,
    worker: u32,
    load: &Load,
    seconds: u64,
    rate: u32,
    dir: &Path,
) -> anyhow::Result<Run> {
    let json = dir.join("profile.json");
    let mut profiler = match config {
        Config::Baseline => None,
        Config::Pyebpf | Config::OtherPyebpf => {
            let mut cmd = Command::new(pyebpf);
            cmd.args(["profile", "--all", "--no-summary", "-F", &rate.to_string(), "-o"])
                .arg(&json)
                .env("RUST_LOG", "info");
            // Ready once it has found the worker as a CPython process (from then on its
            // off-CPU time is tracked too).
            Some(Profiler::start(cmd, &format!("pid {worker}: CPython "))?)
        }
        Config::PySpy | Config::PySpyNonblocking => {
            let mut cmd = Command::new(py_spy.context("py-spy is not installed")?);
            cmd.args(["record", "--rate", &rate.to_string(), "--format", "raw", "--pid", &worker.to_string(), "-o"])
                .arg(dir.join("py-spy.txt"));
            if config == Config::PySpyNonblocking {
                cmd.arg("--nonblocking");
            }
            Some(Profiler::start(cmd, "Sampling process")?)
        }
    };
    let cpu_before = profiler.as_ref().map(|p| cpu_ticks(p.child.id()));
    let started = Instant::now();
    let report = load.clone().duration_secs(seconds).run();
    let elapsed = started.elapsed().as_secs_f64();
    let mut run = Run { report, profiler_cpu: None, profiler_rss_mib: None, samples: None, lost: None };
    if let Some(p) = profiler.as_mut() {
        let pid = p.child.id();
        let ticks = cpu_ticks(pid).saturating_sub(cpu_before.unwrap_or(0));
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        run.profiler_cpu = Some(ticks as f64 / hz / elapsed);
        run.profiler_rss_mib = peak_rss_kib(pid).map(|k| k as f64 / 1024.0);
        let printed = p.stop()?;
        match config {
            Config::Pyebpf | Config::OtherPyebpf => {
                let profile: Value = serde_json::from_slice(&std::fs::read(&json)?)?;
                run.samples = profile["samples"].as_u64();
                run.lost = profile["lost_events"].as_u64();
            }
            _ => (run.samples, run.lost) = py_spy_counts(&printed),
        }
    }
    Ok(run)
}

/// A profiler process whose output is collected; started when a line shows it is sampling.
pub(crate) struct Profiler {
    pub(crate) child: Child,
    /// Everything it printed, stdout and stderr.
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Profiler {
    /// Starts the profiler and waits for `ready` on its stdout or stderr (py-spy talks on
    /// stdout, pyebpf logs on stderr).
    pub(crate) fn start(mut cmd: Command, ready: &str) -> anyhow::Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("start the profiler")?;
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipes: Vec<Box<dyn std::io::Read + Send>> =
            vec![Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        let readers = pipes
            .into_iter()
            .map(|pipe| {
                let (text, ready, tx) = (output.clone(), ready.to_string(), tx.clone());
                std::thread::spawn(move || {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        if line.contains(&ready) {
                            let _ = tx.send(());
                        }
                        let mut t = text.lock().unwrap();
                        t.push_str(&line);
                        t.push('\n');
                    }
                })
            })
            .collect();
        let mut p = Profiler { child, output, readers };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = p.stop();
            bail!("the profiler did not start within 30 s:\n{}", p.output.lock().unwrap());
        }
        Ok(p)
    }

    /// SIGINT (both write their output on it), then what it printed.
    pub(crate) fn stop(&mut self) -> anyhow::Result<String> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the profiler did not stop within 60 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(self.output.lock().unwrap().clone())
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ... utime(11) stime(12).
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()
}

/// py-spy's closing line: "Samples: N Errors: M".
fn py_spy_counts(printed: &str) -> (Option<u64>, Option<u64>) {
    let number_after = |key: &str| {
        printed.lines().rev().find_map(|l| {
            let at = l.find(key)? + key.len();
            l[at..].split_whitespace().next()?.trim_end_matches(',').parse().ok()
        })
    };
    (number_after("Samples:"), number_after("Errors:"))
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn report(configs: &[Config], runs: &[(Config, Run)]) {
    let of = |c: Config| runs.iter().filter(move |(k, _)| *k == c).map(|(_, r)| r);
    let base_rps = median(of(Config::Baseline).map(|r| r.report.requests_per_sec()).collect());
    let base_p99 = median(of(Config::Baseline).map(|r| r.report.latency_p99.as_secs_f64() * 1e3).collect());
    println!(
        "  {:<30} {:>8} {:>7} {:>16} {:>9} {:>7} {:>13} {:>9} {:>9}",
        "configuration", "req/s", "ratio", "[min..max]", "p99 ms", "ratio", "profiler CPU", "RSS MiB", "lost"
    );
    for &c in configs {
        let rps: Vec<f64> = of(c).map(|r| r.report.requests_per_sec()).collect();
        let p99 = median(of(c).map(|r| r.report.latency_p99.as_secs_f64() * 1e3).collect());
        let (lo, hi) = rps.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let rps = median(rps);
        let cpu = median(of(c).filter_map(|r| r.profiler_cpu).collect());
        let rss = of(c).filter_map(|r| r.profiler_rss_mib).fold(f64::NAN, f64::max);
        let (samples, lost): (u64, u64) =
            of(c).fold((0, 0), |(s, l), r| (s + r.samples.unwrap_or(0), l + r.lost.unwrap_or(0)));
        let errors: u64 = of(c).map(|r| r.report.errors()).sum();
        let lost_text = if c == Config::Baseline {
            "-".to_string()
        } else {
            format!("{:.3}%", 100.0 * lost as f64 / (samples + lost).max(1) as f64)
        };
        println!(
            "  {:<30} {:>8.1} {:>7.3} {:>16} {:>9.1} {:>6.2}x {:>13} {:>9} {:>9}{}",
            c.name(),
            rps,
            rps / base_rps,
            format!("[{lo:.0}..{hi:.0}]"),
            p99,
            p99 / base_p99,
            if cpu.is_nan() { "-".to_string() } else { format!("{:.1}%", cpu * 100.0) },
            if rss.is_nan() { "-".to_string() } else { format!("{rss:.0}") },
            lost_text,
            if errors > 0 { format!("  ({errors} failed requests)") } else { String::new() },
        );
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
