//! The command line: every subcommand's arguments as clap types, and nothing else. Only
//! `main` and [`crate::commands`] read these; everything below takes plain configuration.
use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::{model::Mode, output::Format};

#[derive(Debug, Parser)]
#[command(
    name = "pyebpf",
    version,
    about = "System-wide eBPF profiler for Python services",
    long_about = "System-wide eBPF profiler for Python services.\n\n\
        Samples running threads with a perf cpu-clock event on every CPU and unwinds their stacks \
        in the kernel: no target is paused, restarted or instrumented. Needs root (or CAP_BPF and \
        CAP_PERFMON)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sample processes and write flame graphs, folded stacks, JSON, speedscope or pprof, then
    /// print a summary.
    Profile(ProfileArgs),
    /// Compare two saved profiles (JSON or folded): a differential flame graph and the
    /// functions whose time moved most.
    Diff(DiffArgs),
    /// Live view of where processes and threads spend their time (CPU and each kind of wait),
    /// refreshed every second.
    Top(TopArgs),
    /// Profile continuously and serve pprof profiles, Prometheus metrics and JSON summaries
    /// over HTTP.
    Daemon(DaemonArgs),
    /// Every thread of Python processes now, without pausing them: state, what each is
    /// blocked in and on what, for how long, the GIL, and its Python stack.
    Dump(DumpArgs),
}

/// How the kernel samples and tracks time: the same flags, with the same defaults, for every
/// command that profiles.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Samples per second per CPU.
    #[arg(short = 'F', long, value_name = "HZ", default_value_t = DEFAULT_FREQUENCY,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub frequency: u32,

    /// Include kernel frames in stacks.
    #[arg(long)]
    pub kernel: bool,

    /// Python frames walked per sample at most; deeper stacks are cut at the root and marked
    /// `[truncated]`.
    #[arg(long, value_name = "FRAMES", default_value_t = profiler_common::MAX_PY_FRAMES as u32,
          value_parser = clap::value_parser!(u32).range(1..=profiler_common::MAX_PY_FRAMES as i64))]
    pub max_depth: u32,

    /// On-CPU only: no scheduler or syscall tracking (off-CPU time is tracked by default for
    /// Python processes and explicit targets).
    #[arg(long)]
    pub no_off_cpu: bool,

    /// Off-CPU waits shorter than this (microseconds) are counted per thread but carry no stack.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = DEFAULT_OFF_CPU_THRESHOLD_US)]
    pub off_cpu_threshold_us: u64,

    /// Off-CPU stacks taken per second per thread at most (0: no limit). A thread that blocks
    /// more often (GIL hand-offs in a busy threaded server) keeps exact totals; the time of
    /// the waits it has no stack for is spread over its stacks of the same category.
    #[arg(long, value_name = "PER_SECOND", default_value_t = DEFAULT_OFF_CPU_STACK_RATE)]
    pub off_cpu_stack_rate: u32,

    /// Unwind native stacks in the kernel from DWARF CFI (`.eh_frame`, `.debug_frame`), not
    /// frame pointers: complete native stacks in code built without them, and for Python
    /// processes mixed stacks (native frames of extensions and libraries between the Python
    /// frames that called them).
    #[arg(long)]
    pub native: bool,

    /// With --native: memory for unwind tables, shared by every process (MiB, allocated in the
    /// kernel when profiling starts).
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_NATIVE_TABLE_MIB,
          value_parser = clap::value_parser!(u32).range(4..=1024), requires = "native")]
    pub native_table_mib: u32,

    /// With --native: keep the interpreter's own native frames (the eval loop, call
    /// machinery, interpreter start-up) in Python processes' stacks.
    #[arg(long, requires = "native")]
    pub interpreter_frames: bool,
    /// asyncio task snapshots per second per process at most (each task's await chain and
    /// state, weighed as wall time); lowered automatically to stay within `--task-budget`.
    #[arg(long, value_name = "HZ", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub task_rate: u32,

    /// CPU the task snapshots may use, in percent of one core.
    #[arg(long, value_name = "PERCENT", default_value_t = 1.0, value_parser = parse_task_budget)]
    pub task_budget: f64,

    /// No asyncio task snapshots.
    #[arg(long)]
    pub no_tasks: bool,
}

/// Whether the targets' child processes (and theirs) are profiled too: the same flags for
/// `profile`, `top` and `daemon`.
#[derive(Debug, Clone, Args)]
pub struct SubprocessArgs {
    /// Also profile the child processes of each --pid target and their descendants, those
    /// running now and those started later, each as its own process (the default for
    /// `-- COMMAND`): a gunicorn, uWSGI or Celery master's workers, a multiprocessing pool.
    #[arg(long, conflicts_with = "no_subprocesses")]
    pub subprocesses: bool,

    /// Profile the targets only, not their child processes (the default for --pid).
    #[arg(long)]
    pub no_subprocesses: bool,
}

impl SubprocessArgs {
    /// `Some(true)` / `Some(false)` when asked, `None` for the target's default.
    pub fn choice(&self) -> Option<bool> {
        match (self.subprocesses, self.no_subprocesses) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

/// `--all` or `--pid`, for the commands that watch the host by default (`top`, `daemon`).
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target").multiple(false).args(["all", "pids"])))]
pub struct HostTargetArgs {
    /// Every process on the host (the default).
    #[arg(long)]
    pub all: bool,

    /// Only this process (repeatable).
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,

    /// Only the processes of this container (repeatable): its id or a unique prefix of it, as
    /// `docker ps` shows it (Docker, containerd/Kubernetes, CRI-O and Podman, from cgroup names);
    /// processes it starts later are followed.
    #[arg(long = "container", value_name = "ID", conflicts_with_all = ["all", "pids"])]
    pub containers: Vec<String>,

    #[command(flatten)]
    pub subprocesses: SubprocessArgs,
}

impl HostTargetArgs {
    /// No target given means the whole host.
    pub fn all(&self) -> bool {
        self.all || (self.pids.is_empty() && self.containers.is_empty())
    }
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("target").required(true).multiple(false).args(["all", "pids", "containers", "command"])
))]
pub struct ProfileArgs {
    /// Profile every process on the host.
    #[arg(long)]
    pub all: bool,

    /// Profile this process and all its threads (repeatable).
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,

    /// Profile the processes of this container (repeatable): its id or a unique prefix of it
    /// (Docker, containerd/Kubernetes, CRI-O and Podman, from cgroup names); processes it
    /// starts later are followed.
    #[arg(long = "container", value_name = "ID")]
    pub containers: Vec<String>,

    #[command(flatten)]
    pub subprocesses: SubprocessArgs,

    /// When profiling stops (duration, Ctrl-C, SIGTERM) before the command has exited, leave
    /// it and what it started running. By default pyebpf ends them: SIGINT to the command's
    /// process group, then SIGTERM, then SIGKILL.
    #[arg(long)]
    pub leave_running: bool,

    /// Stop after this long: seconds ("10", "2.5") or with a unit ("500ms", "30s", "2m").
    /// Default: until Ctrl-C, or until the profiled command or pids exit.
    #[arg(short = 'd', long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Write the profile here (repeatable). The format comes from the extension
    /// (.svg, .folded, .json, .speedscope.json, .pb.gz, .pprof or .otlp) unless --format is given.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub outputs: Vec<PathBuf>,

    /// Format of every --output, overriding the extension.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// What flame graphs and folded stacks weigh: `wall` (on- and off-CPU time, each stack
    /// ending in a frame naming its category; the default with off-CPU tracking) or `cpu`
    /// (on-CPU samples only).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,

    /// Measure the BPF programs' own cost (run count and time) and report it.
    #[arg(long)]
    pub bpf_stats: bool,

    /// Do not print the terminal summary.
    #[arg(long)]
    pub no_summary: bool,

    /// Command to start and profile until it exits (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub target: HostTargetArgs,

    /// Refresh interval.
    #[arg(short = 'i', long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Stop after this long (default: until `q` or Ctrl-C).
    #[arg(short = 'd', long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// What to sort processes and threads by at start (keys `c` and `w` change it).
    #[arg(long, value_enum, default_value = "cpu")]
    pub sort: SortKey,

    /// Processes shown when printing plain text (stdout not a terminal).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub rows: usize,
}

/// What `top` sorts processes and threads by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// On-CPU time.
    Cpu,
    /// Wall time accounted (on- and off-CPU, summed over threads).
    Wall,
}

impl SortKey {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wall => "wall",
        }
    }
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub target: HostTargetArgs,

    /// Address to serve HTTP on. The default is loopback only: the endpoints show command
    /// lines and code paths, so expose them deliberately.
    #[arg(short = 'l', long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,

    /// Length of one window: the resolution of every answer.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub window: Duration,

    /// How much history is kept (older windows are dropped).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub retention: Duration,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Push each window's pprof profile to this Pyroscope-compatible server
    /// (`http://host:port`; `POST /ingest?format=pprof`).
    #[arg(long, value_name = "URL")]
    pub push: Option<String>,

    /// Send each window to this OpenTelemetry collector as OTLP profiles (`http://host:4318`;
    /// `POST /v1development/profiles`, protobuf, opentelemetry-proto v1.10.0).
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,

    /// Application name the pushed profiles are stored under (a `host` label is added).
    #[arg(long, value_name = "NAME", default_value = "pyebpf", requires = "push")]
    pub push_name: String,

    /// Stop after this long (default: until SIGTERM or Ctrl-C).
    #[arg(short = 'd', long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The profile before the change (pyebpf JSON, or folded stacks).
    #[arg(value_name = "BEFORE")]
    pub before: PathBuf,

    /// The profile after the change.
    #[arg(value_name = "AFTER")]
    pub after: PathBuf,

    /// Write the differential flame graph here (.svg), or the merged folded lines
    /// (`stack before after`, .folded).
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Scale BEFORE so that both profiles have the same total (compare shares, not amounts:
    /// for profiles of different lengths).
    #[arg(long)]
    pub normalize: bool,

    /// Keep thread frames (by default threads are merged, as their names and ids change
    /// between runs).
    #[arg(long)]
    pub threads: bool,

    /// Keep Python line numbers in frames.
    #[arg(long)]
    pub lines: bool,

    /// Rows in the table of functions that moved most.
    #[arg(long, value_name = "N", default_value_t = 15)]
    pub top: usize,
}

/// Samples per second per CPU, unless told otherwise: 99, not 100, so sampling does not run in
/// lockstep with timers at round rates.
pub const DEFAULT_FREQUENCY: u32 = 99;
/// Off-CPU waits shorter than this carry no stack, unless told otherwise.
pub const DEFAULT_OFF_CPU_THRESHOLD_US: u64 = 100;
/// Off-CPU stacks per second per thread at most, unless told otherwise.
pub const DEFAULT_OFF_CPU_STACK_RATE: u32 = 50;
/// Unwind-table memory with --native, unless told otherwise: a busy developer host's binaries
/// (two Rust toolchains with their LLVM included) need about 15 MiB.
pub const DEFAULT_NATIVE_TABLE_MIB: u32 = 24;

/// Parses "10", "2.5", "500ms", "30s", "2m" into a positive duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: use seconds (10, 2.5) or 500ms, 30s, 2m"))?;
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration must be greater than zero, got '{text}'"));
    }
    if secs > 366.0 * 86400.0 {
        return Err(format!("duration '{text}' is longer than a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--task-budget`: a share of one core, above 0 and at most 100 percent.
fn parse_task_budget(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 100.0 => Ok(v),
        _ => Err(format!("`{s}` is not a percentage of one core above 0 and at most 100")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("nan").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).multiple(false).args(["all", "pids"])))]
pub struct DumpArgs {
    /// Every Python process on the host.
    #[arg(long)]
    pub all: bool,

    /// This process (repeatable); any process, Python or not.
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,

    /// JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,

    /// Each thread's kernel stack too (from the kernel's task iterator).
    #[arg(long)]
    pub kernel: bool,

    /// Each blocked thread's native stack (DWARF CFI, walked from its saved registers), with
    /// its Python frames in place of the interpreter's eval-loop frames.
    #[arg(long)]
    pub native: bool,
}
