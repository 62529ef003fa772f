//! Command-line interface (clap).
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

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
    Diff(crate::diff::DiffArgs),
    /// Live view of where processes and threads spend their time (CPU and each kind of wait),
    /// refreshed every second.
    Top(crate::top::TopArgs),
    /// Profile continuously and serve pprof profiles, Prometheus metrics and JSON summaries
    /// over HTTP.
    Daemon(crate::daemon::DaemonArgs),
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("target").required(true).multiple(false).args(["all", "pids", "command"])
))]
pub struct ProfileArgs {
    /// Profile every process on the host.
    #[arg(long)]
    pub all: bool,

    /// Profile this process and all its threads (repeatable).
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,

    /// Stop after this long: seconds ("10", "2.5") or with a unit ("500ms", "30s", "2m").
    /// Default: until Ctrl-C, or until the profiled command or pids exit.
    #[arg(short = 'd', long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Samples per second per CPU.
    #[arg(short = 'F', long, value_name = "HZ", default_value_t = 99,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub frequency: u32,

    /// Write the profile here (repeatable). The format comes from the extension
    /// (.svg, .folded, .json, .speedscope.json, .pb.gz or .pprof) unless --format is given.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub outputs: Vec<PathBuf>,

    /// Format of every --output, overriding the extension.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// Include kernel frames in stacks.
    #[arg(long)]
    pub kernel: bool,

    /// Python frames walked per sample at most; deeper stacks are cut at the root and marked
    /// `[truncated]`.
    #[arg(long, value_name = "FRAMES", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=profiler_common::MAX_PY_FRAMES as i64))]
    pub max_depth: u32,

    /// On-CPU only: no scheduler or syscall tracking (off-CPU time is tracked by default for
    /// Python processes and explicit targets).
    #[arg(long)]
    pub no_off_cpu: bool,

    /// Off-CPU waits shorter than this (microseconds) are counted per thread but carry no stack.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 100)]
    pub off_cpu_threshold_us: u64,

    /// Off-CPU stacks taken per second per thread at most (0: no limit). A thread that blocks
    /// more often (GIL hand-offs in a busy threaded server) keeps exact totals; the time of
    /// the waits it has no stack for is spread over its stacks of the same category.
    #[arg(long, value_name = "PER_SECOND", default_value_t = DEFAULT_OFF_CPU_STACK_RATE)]
    pub off_cpu_stack_rate: u32,

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

/// Off-CPU stacks per second per thread at most, unless told otherwise.
pub const DEFAULT_OFF_CPU_STACK_RATE: u32 = 50;

/// What stacks weigh in flame graphs and folded output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Cpu,
    Wall,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Interactive flame graph (inferno).
    Svg,
    /// Collapsed stacks, one `frame;frame;frame count` line per stack, root first.
    Folded,
    /// The whole profile as one JSON object.
    Json,
    /// speedscope's file format: one sampled profile per thread.
    Speedscope,
    /// pprof's gzipped protobuf (`go tool pprof`, Pyroscope...): per-category values, labels
    /// for process, thread and wait.
    Pprof,
}

impl Format {
    /// The format a path's extension names, if any.
    pub fn from_path(path: &std::path::Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        // Two-part extensions first: `x.speedscope.json` is not pyebpf's JSON.
        if name.ends_with(".speedscope.json") {
            return Some(Self::Speedscope);
        }
        if name.ends_with(".pb.gz") {
            return Some(Self::Pprof);
        }
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "svg" => Some(Self::Svg),
            "folded" | "collapsed" => Some(Self::Folded),
            "json" => Some(Self::Json),
            "pprof" => Some(Self::Pprof),
            _ => None,
        }
    }

    /// The extensions [`Format::from_path`] knows, for error messages.
    pub const EXTENSIONS: &'static str = ".svg, .folded, .json, .speedscope.json, .pb.gz or .pprof";

    pub fn describe(self) -> &'static str {
        match self {
            Self::Svg => "flame graph",
            Self::Folded => "folded stacks",
            Self::Json => "JSON profile",
            Self::Speedscope => "speedscope profile",
            Self::Pprof => "pprof profile",
        }
    }
}

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
    fn formats_from_extension() {
        use std::path::Path;
        assert_eq!(Format::from_path(Path::new("a/b.svg")), Some(Format::Svg));
        assert_eq!(Format::from_path(Path::new("x.FOLDED")), Some(Format::Folded));
        assert_eq!(Format::from_path(Path::new("x.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("d.json/x.Speedscope.JSON")), Some(Format::Speedscope));
        assert_eq!(Format::from_path(Path::new("speedscope.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("x.pb.gz")), Some(Format::Pprof));
        assert_eq!(Format::from_path(Path::new("x.pprof")), Some(Format::Pprof));
        assert_eq!(Format::from_path(Path::new("x.gz")), None);
        assert_eq!(Format::from_path(Path::new("x")), None);
        assert_eq!(Format::from_path(Path::new("x.png")), None);
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
