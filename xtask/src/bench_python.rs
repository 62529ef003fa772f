//! `cargo xtask bench python`: what profiling costs a CPU-bound Python program.
//!
//! One run measures, side by side:
//! 1. the slowdown of a pure-Python workload whose hot loop runs 30 frames deep, unprofiled and
//!    under pyebpf and py-spy (blocking and `--nonblocking`) at ~100 and ~1000 Hz;
//! 2. the kernel cost per sample of pyebpf's BPF program for that stack, next to a shallow
//!    Python stack and a native-only process;
//! 3. the share of pyebpf's samples that really hold the whole 30-frame stack, so the cost
//!    above is the cost of walking it.
//!
//! Noise on a shared 2-CPU machine: every round runs every configuration once, interleaved
//! with a baseline twice per round; slowdowns are taken against the same round's baselines (so
//! slow drifts cancel) and reported as the median over rounds with their range. The workload is
//! pinned to the last CPU (no migrations mid-run) and the profilers to the others: on a 2-CPU
//! VM a profiler's userspace landing on the workload's CPU would otherwise dominate, and what
//! is measured is what the profiler does to the workload itself (interrupt and BPF program for
//! pyebpf, ptrace stops and memory reads for py-spy), as on a host with a spare core.
//!
//! Two noise sources remain, and both are reported rather than hidden. Other work on the host:
//! per run the workload's CPU time / wall time and the other CPUs' busy share are printed, and
//! rounds whose baselines saw either are left out when enough quiet rounds remain. The
//! hypervisor: it takes the vCPU away unseen by the guest, so the workload also times ~0.1 s
//! chunks and a second slowdown is computed from its fast chunks (see `Run::fast_throughput`).
use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::util;

/// The workload: see the script's docstring for its protocol.
const WORKLOAD: &str = include_str!("../bench/python_workload.py");
/// Python frames on the stack at the workload's hot spot.
const DEPTH: u32 = 30;
/// A shallow stack for comparison: what the frame walk adds per frame.
const SHALLOW_DEPTH: u32 = 3;
/// Time a profiler gets to attach before the workload's clock starts (pyebpf loads and
/// attaches its BPF programs in about 0.5 s; py-spy reads the target's memory maps).
const SETTLE: Duration = Duration::from_millis(1500);
/// Iterations of the calibration run (a fraction of a second).
const CALIBRATION_ITERATIONS: u64 = 5000;
/// A baseline that saw the other CPUs busier than this, or was on its CPU less than this,
/// marks its round as noisy (a quiet host: ~1% busy, 100% on-CPU).
const NOISY_OTHERS_BUSY: f64 = 0.2;
const QUIET_ON_CPU: f64 = 0.97;
/// Noisy rounds are left out only if at least this many quiet ones remain.
const MIN_CLEAN_ROUNDS: usize = 3;
/// Rate of the kernel-cost runs: many samples in a few seconds.
const COST_HZ: u32 = 999;

#[derive(Clone, Copy)]
pub struct Options {
    /// Seconds of work per timed run.
    pub seconds: u64,
    pub rounds: usize,
    /// Pin the workload to one CPU and the profilers to the others.
    pub pin: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Profiler {
    None,
    Pyebpf,
    PySpy,
    PySpyNonblocking,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Config {
    profiler: Profiler,
    hz: u32,
}

impl Config {
    const BASELINE: Self = Self { profiler: Profiler::None, hz: 0 };

    fn name(self) -> &'static str {
        match self.profiler {
            Profiler::None => "baseline (none)",
            Profiler::Pyebpf => "pyebpf",
            Profiler::PySpy => "py-spy",
            Profiler::PySpyNonblocking => "py-spy --nonblocking",
        }
    }

    fn rate(self) -> String {
        if self.hz == 0 { "-".into() } else { format!("{} Hz", self.hz) }
    }

    fn label(self) -> String {
        if self.hz == 0 { self.name().into() } else { format!("{} {}", self.name(), self.rate()) }
    }
}

/// One timed run of the workload.
struct Run {
    /// Workload iterations per second of wall time.
    throughput: f64,
    /// The 90th percentile of the rates of the workload's ~0.1 s chunks: on this VM the
    /// hypervisor takes the vCPU away now and then (a single process varies by 20-30% from one
    /// second to the next, unseen by the guest), which only ever slows chunks down; a
    /// profiler's cost is spread evenly over every chunk, so it survives in the fast ones.
    fast_throughput: f64,
    elapsed_s: f64,
    /// The workload's CPU time / wall time: below 100% when something else ran on its CPU or
    /// the profiler stopped it (ptrace). The perf interrupt and its BPF program count as the
    /// workload's CPU time unless the kernel has IRQ time accounting.
    on_cpu: f64,
    /// Busy share of the other CPUs during the timed part (the profiler's own work, and any
    /// other load on the host, which slows the workload's CPU too on a shared VM); None when
    /// not pinned, as the workload's CPU is then unknown.
    others_busy: Option<f64>,
    /// Samples the profiler took of the workload, when it says.
    samples: Option<u64>,
    /// pyebpf's JSON profile, and the workload's pid in it.
    profile: Option<Value>,
    pid: u32,
}

struct Bench {
    pyebpf: PathBuf,
    python: PathBuf,
    py_spy: Option<PathBuf>,
    script: PathBuf,
    pin: Option<Pinning>,
}

/// `taskset -c` CPUs: the workload alone on the last one, the profilers on the others.
struct Pinning {
    workload: usize,
    profilers: String,
}

pub fn run(root: &Path, bin: &Path, opts: Options) -> anyhow::Result<()> {
    let (python, version) = find_python()?;
    let py_spy = match ensure_py_spy(root, &python) {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!("warning: py-spy is unavailable, its rows are skipped: {e:#}");
            None
        }
    };
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("python_workload.py");
    std::fs::write(&script, WORKLOAD)?;
    // A private copy, so that a rebuild of target/release/pyebpf while the benchmark runs (any
    // build in this workspace) cannot change the binary half-way through the rounds.
    let pyebpf = dir.path().join("pyebpf");
    std::fs::copy(bin, &pyebpf).with_context(|| format!("cannot copy {}", bin.display()))?;
    let pin = if opts.pin { pinning() } else { None };
    let bench = Bench { pyebpf, python, py_spy, script, pin };

    bench.print_header(&version, opts);
    let iterations = bench.calibrate(opts.seconds)?;
    println!("workload: {iterations} iterations of 1000 arithmetic steps (~{} s unprofiled)\n", opts.seconds);
    bench.slowdown(iterations, opts.rounds)?;
    println!();
    bench.kernel_cost(iterations, opts.seconds)?;
    println!("\nload average at the end: {}", load_average());
    Ok(())
}

/// CPython 3.12 from pyenv if present, else the newest 3.x there, else `python3` on PATH.
pub(crate) fn find_python() -> anyhow::Result<(PathBuf, String)> {
    let versions = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))
        .map(|root| root.join("versions"));
    let mut found: Vec<((u32, u32, u32), String, PathBuf)> = versions
        .and_then(|dir| std::fs::read_dir(&dir).ok().map(|entries| (dir, entries)))
        .into_iter()
        .flat_map(|(dir, entries)| {
            entries.filter_map(move |e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let version = parse_version(&name)?;
                let bin = dir.join(&name).join("bin/python3");
                (version.0 == 3 && bin.exists()).then_some((version, name, bin))
            })
        })
        .collect();
    found.sort();
    match found.iter().rev().find(|(v, ..)| v.1 == 12).or(found.last()) {
        Some((_, name, bin)) => Ok((bin.clone(), format!("CPython {name} (pyenv)"))),
        None => {
            let version = util::output("python3", &["-c", "import platform; print(platform.python_version())"])
                .context("no pyenv CPython and no python3 on PATH")?;
            Ok(("python3".into(), format!("CPython {} (python3 on PATH)", version.trim())))
        }
    }
}

/// "3.12.1" → (3, 12, 1); None for anything else ("system", "pypy3.10-7.3.12", "3.13t").
fn parse_version(name: &str) -> Option<(u32, u32, u32)> {
    let mut parts = name.split('.').map(|p| p.parse::<u32>().ok());
    let v = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(v)
}

/// py-spy in a venv under target/, installed with pip from the benchmark's CPython only when
/// missing (py-spy is a self-contained binary; the venv just keeps it out of the system).
pub(crate) fn ensure_py_spy(root: &Path, python: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/bench-venv");
    let py_spy = venv.join("bin/py-spy");
    if py_spy.exists() {
        return Ok(py_spy);
    }
    println!("installing py-spy into {}", venv.display());
    util::run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
    util::run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "py-spy"]))?;
    Ok(py_spy)
}

/// None on one CPU (nothing to separate) or without taskset.
fn pinning() -> Option<Pinning> {
    let cpus = std::thread::available_parallelism().ok()?.get();
    if cpus < 2 || util::output("taskset", &["-V"]).is_none() {
        return None;
    }
    let profilers = if cpus == 2 { "0".to_string() } else { format!("0-{}", cpus - 2) };
    Some(Pinning { workload: cpus - 1, profilers })
}

/// `program`, through `taskset -c cpus` when given (taskset execs it, so the pid is kept).
fn taskset(cpus: Option<String>, program: &Path) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpus]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// (busy, total) clock ticks of each CPU, from /proc/stat; idle and iowait are not busy.
fn cpu_times() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let ticks: Vec<u64> = l.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
            let total: u64 = ticks.iter().sum();
            let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

impl Bench {
    fn print_header(&self, version: &str, opts: Options) {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        println!("pyebpf Python benchmark: {version}, {cpus} CPUs, load average {}", load_average());
        match &self.py_spy {
            Some(p) => {
                let v = util::output(&p.to_string_lossy(), &["--version"]).unwrap_or_default();
                println!("py-spy: {} ({})", v.trim(), p.display());
            }
            None => println!("py-spy: not available"),
        }
        match &self.pin {
            Some(p) => println!(
                "pinning (taskset): workload and the native spin loop on CPU {}, profilers on CPU {}",
                p.workload, p.profilers
            ),
            None => println!("pinning: none"),
        }
        println!(
            "{} rounds of ~{} s runs; the clock starts {:.1} s after a profiler starts, so attaching is not timed",
            opts.rounds,
            opts.seconds,
            SETTLE.as_secs_f64()
        );
    }

    /// Iterations that take about `seconds` unprofiled (the faster of two short runs, the first
    /// also warming caches and CPU frequency).
    fn calibrate(&self, seconds: u64) -> anyhow::Result<u64> {
        let mut best = f64::MAX;
        for _ in 0..2 {
            let out = self
                .workload_command(DEPTH, CALIBRATION_ITERATIONS, false)
                .stdout(Stdio::piped())
                .output()
                .context("cannot run the Python workload")?;
            if !out.status.success() {
                bail!("the Python workload failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let result = last_json_line(&String::from_utf8_lossy(&out.stdout))?;
            best = best.min(result["elapsed_s"].as_f64().context("no elapsed_s")?);
        }
        Ok((CALIBRATION_ITERATIONS as f64 * seconds as f64 / best).round() as u64)
    }

    /// Part 1: interleaved rounds, then one table.
    fn slowdown(&self, iterations: u64, rounds: usize) -> anyhow::Result<()> {
        let order = self.round_order();
        let mut records = Vec::new();
        for round in 1..=rounds {
            for &cfg in &order {
                let run = self.timed_run(cfg, DEPTH, iterations, false);
                print_progress(round, rounds, cfg, &run);
                // A failed run is reported above and left out; the other rounds still count.
                if let Ok(run) = run {
                    records.push(Record { round, cfg, run });
                }
            }
        }
        print_slowdown_table(&order, &records);
        Ok(())
    }

    /// One round: a baseline before each rate's profilers, so every profiled run has a recent
    /// baseline in its own round.
    fn round_order(&self) -> Vec<Config> {
        let mut order = Vec::new();
        for hz in [99, 999] {
            order.push(Config::BASELINE);
            order.push(Config { profiler: Profiler::Pyebpf, hz });
            if self.py_spy.is_some() {
                order.push(Config { profiler: Profiler::PySpy, hz });
                order.push(Config { profiler: Profiler::PySpyNonblocking, hz });
            }
        }
        order
    }

    /// Starts the workload, lets the profiler attach, times the work, collects the samples.
    fn timed_run(&self, cfg: Config, depth: u32, iterations: u64, bpf_stats: bool) -> anyhow::Result<Run> {
        let dir = tempfile::tempdir()?;
        let mut workload = KillOnDrop::spawn(
            self.workload_command(depth, iterations, true).stdin(Stdio::piped()).stdout(Stdio::piped()),
        )?;
        let pid = workload.child().id();
        let mut stdout = BufReader::new(workload.child().stdout.take().expect("piped"));
        let ready = read_line(&mut stdout)?;
        if ready.trim() != "ready" {
            bail!("the workload said {ready:?} instead of \"ready\"");
        }

        let mut profiler = match self.profiler_command(cfg, pid, dir.path(), bpf_stats)? {
            Some(mut cmd) => {
                let mut p = KillOnDrop::spawn(&mut cmd)?;
                std::thread::sleep(SETTLE);
                if let Some(status) = p.child().try_wait()? {
                    bail!("{} exited before the work started ({status}): {}", cfg.name(), read_stderr(dir.path()));
                }
                Some(p)
            }
            None => None,
        };

        let before = cpu_times();
        // Dropping stdin after the line closes it; the workload only reads one line.
        workload.child().stdin.take().expect("piped").write_all(b"go\n")?;
        let result = last_json_line(&read_to_end(&mut stdout)?)?;
        let others_busy = self.others_busy(&before, &cpu_times());
        let status = workload.release().wait()?;
        if !status.success() {
            bail!("the workload failed: {status}");
        }
        let elapsed_s = result["elapsed_s"].as_f64().context("no elapsed_s")?;
        let on_cpu = result["cpu_s"].as_f64().context("no cpu_s")? / elapsed_s;

        let (samples, profile) = match profiler.take() {
            Some(p) => finish_profiler(cfg, p, dir.path(), pid)?,
            None => (None, None),
        };
        let chunk_rates: Vec<f64> =
            result["chunk_rates"].as_array().context("no chunk_rates")?.iter().filter_map(Value::as_f64).collect();
        Ok(Run {
            throughput: iterations as f64 / elapsed_s,
            fast_throughput: percentile(&chunk_rates, 0.9),
            elapsed_s,
            on_cpu,
            others_busy,
            samples,
            profile,
            pid,
        })
    }

    fn workload_command(&self, depth: u32, iterations: u64, wait: bool) -> Command {
        let mut cmd = self.on_workload_cpu(&self.python);
        cmd.arg(&self.script).arg(depth.to_string()).arg(iterations.to_string());
        if wait {
            cmd.arg("--wait");
        }
        cmd
    }

    /// The profiler's command for `cfg`, output files in `dir`; None for the baseline.
    fn profiler_command(&self, cfg: Config, pid: u32, dir: &Path, bpf_stats: bool) -> anyhow::Result<Option<Command>> {
        let (pid, hz) = (pid.to_string(), cfg.hz.to_string());
        let mut cmd = match cfg.profiler {
            Profiler::None => return Ok(None),
            // No -d: pyebpf stops by itself when the pid exits.
            Profiler::Pyebpf => self.pyebpf_command(&pid, &hz, dir, bpf_stats),
            Profiler::PySpy | Profiler::PySpyNonblocking => {
                let py_spy = self.py_spy.as_ref().context("py-spy is not installed")?;
                let mut c = self.on_profiler_cpus(py_spy);
                c.args(["record", "--pid", &pid, "-r", &hz, "-o", "/dev/null"]);
                if cfg.profiler == Profiler::PySpyNonblocking {
                    c.arg("--nonblocking");
                }
                c
            }
        };
        // Files, not pipes: nobody reads while it runs, and a full pipe would stall it.
        cmd.stdout(File::create(dir.join("stdout"))?).stderr(File::create(dir.join("stderr"))?);
        Ok(Some(cmd))
    }

    fn pyebpf_command(&self, pid: &str, hz: &str, dir: &Path, bpf_stats: bool) -> Command {
        let mut c = self.on_profiler_cpus(&self.pyebpf);
        c.args(["profile", "--pid", pid, "-F", hz, "--no-summary", "-o"]).arg(dir.join("profile.json"));
        if bpf_stats {
            c.arg("--bpf-stats");
        }
        c
    }

    /// Busy share of every CPU but the workload's between two `cpu_times` snapshots.
    fn others_busy(&self, before: &[(u64, u64)], after: &[(u64, u64)]) -> Option<f64> {
        let workload_cpu = self.pin.as_ref()?.workload;
        let (mut busy, mut total) = (0, 0);
        for (cpu, (b, a)) in before.iter().zip(after).enumerate() {
            if cpu != workload_cpu {
                busy += a.0.saturating_sub(b.0);
                total += a.1.saturating_sub(b.1);
            }
        }
        Some(if total == 0 { 0.0 } else { busy as f64 / total as f64 })
    }

    fn on_workload_cpu(&self, program: &Path) -> Command {
        taskset(self.pin.as_ref().map(|p| p.workload.to_string()), program)
    }

    fn on_profiler_cpus(&self, program: &Path) -> Command {
        taskset(self.pin.as_ref().map(|p| p.profilers.clone()), program)
    }

    /// Parts 2 and 3: BPF run time per sample for a deep and a shallow Python stack and a
    /// native process, with the cost of runs that only reject other processes taken out.
    fn kernel_cost(&self, iterations: u64, seconds: u64) -> anyhow::Result<()> {
        println!("Kernel cost of pyebpf's on_cpu_sample at {COST_HZ} Hz (--bpf-stats), one run each:");
        println!(
            "{:<34} {:>8} {:>9} {:>8} {:>9} {:>16} {:>18}",
            "target", "samples", "BPF runs", "ns/run", "ns/sample", "BPF CPU 99/999Hz", "full Python stack"
        );
        // A sleeping target: every run only rejects whatever else is on the CPU.
        let idle = self.fixed_profile(Command::new("sleep").arg("3600"), seconds);
        let reject_ns = idle.as_ref().map_or(0.0, |t| {
            let (runs, ns) = on_cpu_stats(&t.profile);
            if runs > 0 { ns as f64 / runs as f64 } else { 0.0 }
        });
        print_cost_row("sleeping process (rejects only)", &idle, reject_ns, None);

        for depth in [DEPTH, SHALLOW_DEPTH] {
            let target = self.python_profile(depth, iterations);
            print_cost_row(&format!("Python, {depth} frames deep"), &target, reject_ns, Some(depth));
        }

        let mut spin = self.on_workload_cpu(Path::new("sh"));
        let native = self.fixed_profile(spin.args(["-c", "while :; do :; done"]), seconds);
        print_cost_row("native only (sh busy loop)", &native, reject_ns, None);

        println!(
            "ns/run: BPF run time / runs, on every CPU. ns/sample: the same per sample of the target, after taking out\n\
             the runs that only rejected another process, at the sleeping-process rate.\n\
             BPF CPU: ns/sample x rate, the share of a busy target's CPU the program alone takes; the timer\n\
             interrupt that runs it (dearer in a VM) and cache effects come on top.\n\
             full Python stack: share of the target's samples with at least that many Python frames."
        );
        Ok(())
    }

    /// The workload `depth` frames deep under pyebpf with BPF stats, as in the slowdown runs.
    fn python_profile(&self, depth: u32, iterations: u64) -> anyhow::Result<Target> {
        let run = self.timed_run(Config { profiler: Profiler::Pyebpf, hz: COST_HZ }, depth, iterations, true)?;
        Ok(Target { pid: run.pid, profile: run.profile.context("pyebpf wrote no profile")? })
    }

    /// Starts `cmd`, profiles it with pyebpf for `seconds`, then kills it.
    fn fixed_profile(&self, cmd: &mut Command, seconds: u64) -> anyhow::Result<Target> {
        let mut target = KillOnDrop::spawn(cmd.stdout(Stdio::null()))?;
        let pid = target.child().id();
        let dir = tempfile::tempdir()?;
        let mut c = self.pyebpf_command(&pid.to_string(), &COST_HZ.to_string(), dir.path(), true);
        c.args(["-d", &seconds.to_string()]).stdout(Stdio::null()).stderr(Stdio::piped());
        let out = c.output().context("cannot start pyebpf")?;
        if !out.status.success() {
            bail!("pyebpf failed ({}): {}", out.status, brief(&String::from_utf8_lossy(&out.stderr)));
        }
        let profile = serde_json::from_slice(&std::fs::read(dir.path().join("profile.json"))?)?;
        Ok(Target { pid, profile })
    }
}

/// Waits for the profiler (it stops when its target exits) and reads its sample count.
fn finish_profiler(
    cfg: Config,
    mut p: KillOnDrop,
    dir: &Path,
    pid: u32,
) -> anyhow::Result<(Option<u64>, Option<Value>)> {
    let status = wait_timeout(p.child(), Duration::from_secs(60))?
        .with_context(|| format!("{} did not stop after its target exited", cfg.name()))?;
    if !status.success() {
        bail!("{} failed ({status}): {}", cfg.name(), read_stderr(dir));
    }
    if cfg.profiler == Profiler::Pyebpf {
        let profile: Value = serde_json::from_slice(&std::fs::read(dir.join("profile.json"))?)?;
        let samples = process(&profile, pid).and_then(|p| p["samples"].as_u64()).unwrap_or(0);
        return Ok((Some(samples), Some(profile)));
    }
    // py-spy ends with "... Samples: 2480 Errors: 0" on stdout.
    let out = std::fs::read_to_string(dir.join("stdout")).unwrap_or_default();
    Ok((number_after(&out, "Samples: "), None))
}

/// A profiled process and pyebpf's profile of it.
struct Target {
    pid: u32,
    profile: Value,
}

fn print_progress(round: usize, rounds: usize, cfg: Config, run: &anyhow::Result<Run>) {
    let what = format!("round {round}/{rounds}: {}", cfg.label());
    match run {
        Ok(r) => println!(
            "  {what:<44} {:>6.0} it/s (fast chunks {:>6.0})  {:>6} samples  on-CPU {:5.1}%  others busy {:>6}",
            r.throughput,
            r.fast_throughput,
            r.samples.map_or("-".into(), |s| s.to_string()),
            r.on_cpu * 100.0,
            r.others_busy.map_or("-".into(), |b| format!("{:.1}%", b * 100.0))
        ),
        Err(e) => println!("  {what:<44} failed: {e:#}"),
    }
}

/// One successful timed run in the slowdown rounds.
struct Record {
    round: usize,
    cfg: Config,
    run: Run,
}

/// Per configuration: median throughput and its spread over rounds, the median (and range) of
/// the per-round slowdown against that round's mean baseline, and the samples taken.
fn print_slowdown_table(order: &[Config], records: &[Record]) {
    let noisy = noisy_rounds(records);
    let rounds: std::collections::BTreeSet<usize> = records.iter().map(|r| r.round).collect();
    // Noisy rounds are left out, unless too few rounds would be left for a median.
    let keep_all = rounds.len() - noisy.len() < MIN_CLEAN_ROUNDS.min(rounds.len());
    let kept: Vec<&Record> = records.iter().filter(|r| keep_all || !noisy.contains(&r.round)).collect();
    println!("\nSlowdown of the workload (Python stack {DEPTH} frames deep), medians over rounds:");
    if !noisy.is_empty() {
        let what = if keep_all { "noisy rounds, kept as too few others are left" } else { "left out noisy rounds" };
        println!("({what}: {noisy:?}; a baseline there shared the host with other work)");
    }
    println!("{:<30} {:^31} {:^31}", "", "---------- whole run ----------", "--- fast chunks (p90) ---");
    println!(
        "{:<22} {:>7} {:>8} {:>22} {:>8} {:>22} {:>7} {:>7} {:>8} {:>9}",
        "profiler",
        "rate",
        "it/s",
        "slowdown [range]",
        "it/s",
        "slowdown [range]",
        "on-CPU",
        "others",
        "samples",
        "samples/s"
    );
    let mut seen = Vec::new();
    for &cfg in order {
        if !seen.contains(&cfg) {
            seen.push(cfg);
            print_slowdown_row(cfg, &kept);
        }
    }
    println!(
        "it/s: workload iterations (1000 arithmetic steps each) per second, over the whole timed run, and the 90th\n\
         percentile over its ~0.1 s chunks, which ignores chunks the hypervisor slowed down.\n\
         slowdown: 1 - it/s / the mean baseline it/s of the same round; median over rounds [min..max]. The baseline\n\
         row's range is the noise floor.\n\
         on-CPU: the workload's CPU time / wall time. others: busy share of the other CPUs (the profiler's own work and\n\
         anything else on the host). samples/s: samples / timed seconds."
    );
}

/// Rounds in which a baseline run did not have the host to itself: the other CPUs were busy
/// or the workload was off its CPU. Their runs say more about that other work than about the
/// profilers.
fn noisy_rounds(records: &[Record]) -> Vec<usize> {
    let mut noisy: Vec<usize> = records
        .iter()
        .filter(|r| r.cfg == Config::BASELINE)
        .filter(|r| r.run.others_busy.is_some_and(|b| b > NOISY_OTHERS_BUSY) || r.run.on_cpu < QUIET_ON_CPU)
        .map(|r| r.round)
        .collect();
    noisy.dedup();
    noisy
}

/// Mean baseline `metric` of one round.
fn round_baseline(records: &[&Record], round: usize, metric: fn(&Run) -> f64) -> Option<f64> {
    let b: Vec<f64> =
        records.iter().filter(|r| r.round == round && r.cfg == Config::BASELINE).map(|r| metric(&r.run)).collect();
    (!b.is_empty()).then(|| b.iter().sum::<f64>() / b.len() as f64)
}

/// Median `metric` of `runs`, and their slowdown against their rounds' baselines as
/// "median% [min..max]".
fn slowdown_cells(runs: &[&Record], records: &[&Record], metric: fn(&Run) -> f64) -> (f64, String) {
    let mid = median(&runs.iter().map(|r| metric(&r.run)).collect::<Vec<_>>());
    let slowdowns: Vec<f64> = runs
        .iter()
        .filter_map(|r| round_baseline(records, r.round, metric).map(|b| (1.0 - metric(&r.run) / b) * 100.0))
        .collect();
    if slowdowns.is_empty() {
        return (mid, "-".into());
    }
    // + 0.0 turns the baseline's -0.00 into 0.00.
    (mid, format!("{:.2}% [{:.1}..{:.1}]", median(&slowdowns) + 0.0, min(&slowdowns), max(&slowdowns)))
}

fn print_slowdown_row(cfg: Config, records: &[&Record]) {
    let runs: Vec<&Record> = records.iter().copied().filter(|r| r.cfg == cfg).collect();
    if runs.is_empty() {
        println!("{:<22} {:>7} {:>8}", cfg.name(), cfg.rate(), "no runs");
        return;
    }
    let (whole, whole_slowdown) = slowdown_cells(&runs, records, |r| r.throughput);
    let (fast, fast_slowdown) = slowdown_cells(&runs, records, |r| r.fast_throughput);
    let samples: Vec<f64> = runs.iter().filter_map(|r| r.run.samples.map(|s| s as f64)).collect();
    let per_s: Vec<f64> = runs.iter().filter_map(|r| r.run.samples.map(|s| s as f64 / r.run.elapsed_s)).collect();
    let (samples, per_s) = if samples.is_empty() {
        ("-".to_string(), "-".to_string())
    } else {
        (format!("{:.0}", median(&samples)), format!("{:.0}", median(&per_s)))
    };
    let on_cpu = median(&runs.iter().map(|r| r.run.on_cpu * 100.0).collect::<Vec<_>>());
    let others: Vec<f64> = runs.iter().filter_map(|r| r.run.others_busy).map(|b| b * 100.0).collect();
    let others = if others.is_empty() { "-".to_string() } else { format!("{:.1}%", median(&others)) };
    println!(
        "{:<22} {:>7} {:>8.0} {:>22} {:>8.0} {:>22} {:>6.1}% {:>7} {:>8} {:>9}",
        cfg.name(),
        cfg.rate(),
        whole,
        whole_slowdown,
        fast,
        fast_slowdown,
        on_cpu,
        others,
        samples,
        per_s
    );
}

fn print_cost_row(name: &str, target: &anyhow::Result<Target>, reject_ns: f64, depth: Option<u32>) {
    let target = match target {
        Ok(t) => t,
        Err(e) => return println!("{name:<34} failed: {e:#}"),
    };
    let (runs, ns) = on_cpu_stats(&target.profile);
    let proc = process(&target.profile, target.pid);
    let samples = proc.and_then(|p| p["samples"].as_u64()).unwrap_or(0);
    let per_run = if runs > 0 { ns as f64 / runs as f64 } else { 0.0 };
    let (per_sample, share) = if samples > 0 {
        let per_sample = (ns as f64 - runs.saturating_sub(samples) as f64 * reject_ns) / samples as f64;
        // What the program alone takes from a target that is always on its CPU, at each rate.
        let share = |hz: f64| per_sample * hz / 1e9 * 100.0;
        (format!("{per_sample:.0}"), format!("{:.2}% / {:.2}%", share(99.0), share(999.0)))
    } else {
        ("-".into(), "-".into())
    };
    let full = match (depth, proc) {
        (Some(d), Some(p)) => format!("{:.1}% (>= {d})", 100.0 * deep_share(p, d)),
        _ => "n/a".into(),
    };
    println!("{name:<34} {samples:>8} {runs:>9} {per_run:>8.0} {per_sample:>9} {share:>16} {full:>18}");
}

/// The profile's entry for `pid`.
fn process(profile: &Value, pid: u32) -> Option<&Value> {
    profile["processes"].as_array()?.iter().find(|p| p["pid"].as_u64() == Some(pid as u64))
}

/// Share of a process's samples whose Python stack has at least `depth` frames.
fn deep_share(process: &Value, depth: u32) -> f64 {
    let stacks = process["stacks"].as_array().map(Vec::as_slice).unwrap_or_default();
    let (mut deep, mut all) = (0, 0);
    for stack in stacks {
        let n = stack["samples"].as_u64().unwrap_or(0);
        let frames = stack["python_frames"].as_array().map_or(0, Vec::len);
        all += n;
        if frames >= depth as usize {
            deep += n;
        }
    }
    if all == 0 { 0.0 } else { deep as f64 / all as f64 }
}

/// (run count, run time ns) of the sampling program, from `--bpf-stats`.
fn on_cpu_stats(profile: &Value) -> (u64, u64) {
    let stats = profile["bpf_stats"].as_array().map(Vec::as_slice).unwrap_or_default();
    stats
        .iter()
        .find(|s| s["program"] == "on_cpu_sample")
        .map_or((0, 0), |s| (s["run_count"].as_u64().unwrap_or(0), s["run_time_ns"].as_u64().unwrap_or(0)))
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The `q` quantile (0..=1) of `xs`, nearest rank; 0 when empty.
fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[((v.len() - 1) as f64 * q).round() as usize] }
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn number_after(text: &str, label: &str) -> Option<u64> {
    let rest = &text[text.rfind(label)? + label.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn last_json_line(text: &str) -> anyhow::Result<Value> {
    let line = text.lines().rev().find(|l| l.starts_with('{')).context("the workload printed no result")?;
    Ok(serde_json::from_str(line)?)
}

fn read_line(r: &mut BufReader<ChildStdout>) -> anyhow::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    Ok(line)
}

fn read_to_end(r: &mut BufReader<ChildStdout>) -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(r, &mut text)?;
    Ok(text)
}

fn read_stderr(dir: &Path) -> String {
    brief(&std::fs::read_to_string(dir.join("stderr")).unwrap_or_default())
}

/// The first line of an error text: a refused BPF program comes with a verifier log of
/// hundreds of thousands of lines, which would bury the tables.
fn brief(text: &str) -> String {
    let mut lines = text.trim().lines();
    let first = lines.next().unwrap_or_default();
    let more = lines.count();
    if more == 0 { first.to_string() } else { format!("{first} [... {more} more lines]") }
}

/// Waits up to `timeout` for the child; None if it is still running.
fn wait_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills and reaps a child when dropped, so a failed run leaves no workload or profiler behind.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        Ok(Self(Some(cmd.spawn().with_context(|| format!("cannot start {cmd:?}"))?)))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("present until released")
    }

    /// The child, no longer killed on drop (the caller waits for it).
    fn release(mut self) -> Child {
        self.0.take().expect("present until released")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
