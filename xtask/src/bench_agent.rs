//! `cargo xtask bench agent`: the profiler's own cost as a host agent, in steady state.
//!
//! Scenarios (each can be picked with `--scenario`):
//!
//! 1. `daemon --all` on a host with `--processes` Python processes (default 20) of `--threads`
//!    threads (4) each waking `--wake-hz` times a second (20) and doing a little work, plus one
//!    CPU-bound Python process;
//! 2. `profile --all` under the gunicorn gthread web load: the `overhead` benchmark, pyebpf
//!    (and the `--baseline` binary) against no profiler only (throughput and p99 ratios);
//! 3. `daemon --all` with `--many` Python processes (500), one thread each waking once a second;
//! 4. `daemon --all` while `--spawn-rate` short-lived processes a second (1,000; `/bin/true`,
//!    fork+exec+exit) come and go, beside the one CPU-bound Python process.
//!
//! For the daemon scenarios, after the workload is up and the daemon is serving, a warm-up
//! (`--warmup`, default 10 s: start-up, first inspection of every process, first symbolization)
//! is left out, then the daemon's utime+stime over a window of `--seconds` (default 60) is read
//! from /proc/PID/stat, with its RSS (VmRSS) at the start and end of the window and at its
//! peak, and the lost events of the whole run (from `/api/summary`, asked after the window so
//! the question costs nothing inside it). With `--baseline BIN` every daemon scenario runs
//! with that binary too, in rotating order, so before/after are measured side by side.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench_overhead::{self, cpu_ticks},
    bench_python,
};

pub struct Options {
    pub seconds: u64,
    pub warmup: u64,
    pub scenarios: Vec<u32>,
    pub processes: usize,
    pub threads: usize,
    pub wake_hz: u32,
    pub many: usize,
    pub spawn_rate: u32,
    pub rounds: usize,
    pub baseline: Option<PathBuf>,
}

/// One Python process with `threads` threads (the main one included), each waking `hz` times a
/// second to do ~20 µs of work: the shape of an idle-ish service with background threads.
const WAKER: &str = r#"
import sys, threading, time
threads, hz = int(sys.argv[1]), float(sys.argv[2])
def handle(n):
    return sum(i * i for i in range(n))
def loop():
    period = 1.0 / hz
    while True:
        time.sleep(period)
        handle(50)
for i in range(threads - 1):
    threading.Thread(target=loop, name=f"waker-{i}", daemon=True).start()
loop()
"#;

/// The CPU-bound process: a pure-Python loop a few frames deep.
const BURNER: &str = r#"
def leaf(n):
    s = 0
    for i in range(n):
        s += i
    return s
def middle():
    return leaf(10000)
def outer():
    while True:
        middle()
outer()
"#;

/// One daemon run's figures over the measured window.
#[derive(Clone, Copy, Default)]
struct Row {
    cpu_pct: f64,
    rss_start_mib: f64,
    rss_end_mib: f64,
    rss_peak_mib: f64,
    /// RssAnon at the window's end: the daemon's own memory (heap, stacks, the ring buffer's
    /// copies), without the file pages VmRSS also counts (binaries blazesym mapped to
    /// symbolize, shared with the page cache and reclaimable).
    anon_end_mib: f64,
    /// RssAnon at the window's start: with the end, whether the daemon's own memory grows.
    anon_start_mib: f64,
    lost: u64,
    samples: u64,
    processes: u64,
    /// Scenario 4: short-lived processes started per second over the window.
    spawned_per_sec: f64,
}

pub fn run(root: &Path, bin: &Path, opts: Options) -> anyhow::Result<()> {
    let (python, python_name) = bench_python::find_python()?;
    let dir = tempfile::tempdir()?;
    let (this, other) = bench_overhead::private_copies(dir.path(), bin, opts.baseline.as_deref())?;
    let mut bins = vec![("this build".to_string(), this)];
    if let (Some(base), Some(copy)) = (&opts.baseline, other) {
        bins.push((format!("baseline ({})", base.display()), copy));
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "agent: pyebpf's own cost in steady state; {python_name}; {cpus} CPUs; warm-up {} s, window {} s, {} round(s); load average {}",
        opts.warmup,
        opts.seconds,
        opts.rounds,
        load_average()
    );
    for &scenario in &opts.scenarios {
        match scenario {
            1 | 3 | 4 => {
                let title = match scenario {
                    1 => format!(
                        "(1) daemon --all, {} Python processes x {} threads waking {}/s + 1 CPU-bound",
                        opts.processes, opts.threads, opts.wake_hz
                    ),
                    3 => format!("(3) daemon --all, {} Python processes (1 thread waking 1/s)", opts.many),
                    _ => format!("(4) daemon --all, {} short-lived processes/s + 1 CPU-bound Python", opts.spawn_rate),
                };
                println!("\n{title}");
                let workload = Workload::start(scenario, &python, &opts)?;
                let mut rows: Vec<Vec<Row>> = vec![Vec::new(); bins.len()];
                for round in 0..opts.rounds {
                    for i in 0..bins.len() {
                        let which = (i + round) % bins.len();
                        let row = measure_daemon(&bins[which].1, &workload, &opts)
                            .with_context(|| format!("scenario {scenario}, {}", bins[which].0))?;
                        rows[which].push(row);
                    }
                }
                drop(workload);
                print_rows(scenario, &bins, &rows);
            }
            2 => {
                println!(
                    "\n(2) profile --all under gunicorn gthread web load (the overhead benchmark, pyebpf and the baseline bin)"
                );
                bench_overhead::run(
                    root,
                    &bins[0].1,
                    bench_overhead::Options {
                        seconds: opts.seconds.min(30),
                        rounds: opts.rounds.max(3),
                        rate: 99,
                        connections: 16,
                        threads: vec![16],
                        with_py_spy: false,
                        baseline: opts.baseline.clone(),
                    },
                )?;
            }
            other => bail!("no scenario {other} (1-4)"),
        }
    }
    println!(
        "\n(CPU = the daemon's utime+stime over the window / the window, in % of one CPU; RSS = VmRSS; anon = RssAnon at the window's start and end, VmRSS without file pages; lost = ring-buffer events lost over the whole run)"
    );
    Ok(())
}

fn print_rows(scenario: u32, bins: &[(String, PathBuf)], rows: &[Vec<Row>]) {
    println!(
        "  {:<44} {:>8} {:>22} {:>15} {:>10} {:>9} {:>7} {:>10}{}",
        "binary",
        "CPU",
        "RSS start/end/peak MiB",
        "anon start/end",
        "samples",
        "processes",
        "lost",
        "CPU range",
        if scenario == 4 { "  spawned/s" } else { "" }
    );
    for ((name, _), runs) in bins.iter().zip(rows) {
        let m = |f: fn(&Row) -> f64| median(runs.iter().map(f).collect());
        let (lo, hi) = runs.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(r.cpu_pct), hi.max(r.cpu_pct)));
        println!(
            "  {:<44} {:>7.2}% {:>22} {:>15} {:>10.0} {:>9.0} {:>7} {:>10}{}",
            name,
            m(|r| r.cpu_pct),
            format!("{:.1}/{:.1}/{:.1}", m(|r| r.rss_start_mib), m(|r| r.rss_end_mib), m(|r| r.rss_peak_mib)),
            format!("{:.1}/{:.1}", m(|r| r.anon_start_mib), m(|r| r.anon_end_mib)),
            m(|r| r.samples as f64),
            m(|r| r.processes as f64),
            runs.iter().map(|r| r.lost).sum::<u64>(),
            format!("{lo:.2}..{hi:.2}"),
            if scenario == 4 { format!("  {:>9.0}", m(|r| r.spawned_per_sec)) } else { String::new() },
        );
    }
}

/// The processes a scenario runs the daemon against; ended on drop.
struct Workload {
    children: Vec<Child>,
    /// Scenario 4's spawner threads and their count of processes started.
    spawning: Option<Spawner>,
}

struct Spawner {
    stop: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workload {
    fn start(scenario: u32, python: &Path, opts: &Options) -> anyhow::Result<Self> {
        let mut w = Workload { children: Vec::new(), spawning: None };
        let py = |args: &[&str]| -> anyhow::Result<Child> {
            Command::new(python)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {}", python.display()))
        };
        match scenario {
            1 => {
                for _ in 0..opts.processes {
                    w.children.push(py(&["-c", WAKER, &opts.threads.to_string(), &opts.wake_hz.to_string()])?);
                }
                w.children.push(py(&["-c", BURNER])?);
            }
            3 => {
                for _ in 0..opts.many {
                    w.children.push(py(&["-c", WAKER, "1", "1"])?);
                }
            }
            _ => {
                w.children.push(py(&["-c", BURNER])?);
                w.spawning = Some(Spawner::start(opts.spawn_rate));
            }
        }
        // Let every interpreter finish starting (hundreds take a while on 2 CPUs).
        let settle = Duration::from_millis(500 + 20 * w.children.len() as u64);
        std::thread::sleep(settle);
        for c in &mut w.children {
            if let Some(status) = c.try_wait()? {
                bail!("a workload process exited early: {status}");
            }
        }
        Ok(w)
    }

    fn spawned(&self) -> u64 {
        self.spawning.as_ref().map_or(0, |s| s.started.load(Ordering::Relaxed))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Some(s) = self.spawning.take() {
            s.stop.store(true, Ordering::Relaxed);
            for t in s.threads {
                let _ = t.join();
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

impl Spawner {
    /// Threads starting `/bin/true` (fork, exec, exit, reaped) at `rate` a second in all, each
    /// on its own schedule; a thread that falls behind does not catch up in a burst.
    fn start(rate: u32) -> Self {
        const THREADS: u32 = 4;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicU64::new(0));
        let period = Duration::from_secs_f64(f64::from(THREADS) / f64::from(rate.max(1)));
        let threads = (0..THREADS)
            .map(|_| {
                let (stop, started) = (stop.clone(), started.clone());
                std::thread::spawn(move || {
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(mut c) = Command::new("/bin/true").stdin(Stdio::null()).spawn() {
                            let _ = c.wait();
                            started.fetch_add(1, Ordering::Relaxed);
                        }
                        next += period;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                })
            })
            .collect();
        Spawner { stop, started, threads }
    }
}

fn measure_daemon(bin: &Path, workload: &Workload, opts: &Options) -> anyhow::Result<Row> {
    let port = free_port()?;
    let mut daemon = Command::new(bin)
        .args(["daemon", "--all", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start pyebpf daemon")?;
    let pid = daemon.id();
    let mut guard = KillOnDrop(Some(daemon.id()));
    let stderr = daemon.stderr.take().context("the daemon's stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("pyebpf daemon: serving") {
                let _ = tx.send(());
            } else if !line.contains("pyebpf daemon: stopped") {
                eprintln!("  daemon: {line}");
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        bail!("the daemon did not start serving within 120 s");
    }
    let run_started = Instant::now();
    std::thread::sleep(Duration::from_secs(opts.warmup));
    let (ticks0, rss0, spawned0, t0) = (cpu_ticks(pid), rss_kib(pid, "VmRSS:"), workload.spawned(), Instant::now());
    let anon0 = rss_kib(pid, "RssAnon:");
    let mut peak = rss0;
    while t0.elapsed() < Duration::from_secs(opts.seconds) {
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(rss_kib(pid, "VmRSS:"));
    }
    let (ticks1, rss1, spawned1, window) =
        (cpu_ticks(pid), rss_kib(pid, "VmRSS:"), workload.spawned(), t0.elapsed().as_secs_f64());
    let anon1 = rss_kib(pid, "RssAnon:");
    // After the window: the whole run so far, as the JSON profile.
    let whole = run_started.elapsed().as_secs() + 1;
    let summary = http_get(port, &format!("/api/summary?seconds={whole}")).context("GET /api/summary")?;
    let profile: serde_json::Value =
        serde_json::from_str(&summary).with_context(|| format!("/api/summary is not JSON: {summary:.200}"))?;
    // SIGTERM: the daemon stops cleanly.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = daemon.wait()?;
    guard.0 = None;
    if !status.success() {
        bail!("the daemon exited with {status}");
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Row {
        cpu_pct: 100.0 * ticks1.saturating_sub(ticks0) as f64 / hz / window,
        rss_start_mib: rss0 as f64 / 1024.0,
        rss_end_mib: rss1 as f64 / 1024.0,
        rss_peak_mib: peak.max(rss1) as f64 / 1024.0,
        anon_end_mib: anon1 as f64 / 1024.0,
        anon_start_mib: anon0 as f64 / 1024.0,
        lost: profile["lost_events"].as_u64().unwrap_or(0),
        samples: profile["samples"].as_u64().unwrap_or(0),
        processes: profile["processes"].as_array().map_or(0, |p| p.len() as u64),
        spawned_per_sec: spawned1.saturating_sub(spawned0) as f64 / window,
    })
}

/// A port nobody listens on now (bound and released; the daemon binds it next).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A plain HTTP/1.0 GET on loopback; the body.
fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or(head));
    }
    Ok(body.to_string())
}

/// Kills the daemon if measuring it failed half-way.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
