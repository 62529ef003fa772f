//! `pyebpf daemon`: profiles continuously with bounded memory and serves what it saw over HTTP.
//!
//! One [`Session`] (the BPF programs are loaded once) is rotated into windows (default 10 s);
//! the last `--retention` of them (default 10 min) are kept in a ring, and processes that exit
//! are forgotten at each rotation, so memory does not grow with uptime. Endpoints:
//!
//! - `/debug/pprof/profile?seconds=N`, `/debug/pprof/wall?seconds=N`: the last N seconds as a
//!   gzipped pprof profile (CPU or wall time), so `go tool pprof http://HOST/debug/pprof/profile`
//!   works;
//! - `/metrics`: Prometheus text: seconds per category per process since the daemon started,
//!   samples, lost events, the daemon's own CPU time and memory;
//! - `/api/summary?seconds=N`: the last N seconds as the `json` output format.
//!
//! The HTTP server runs on the same single-threaded runtime; it asks the profiling loop for the
//! window in progress through a channel, so the session itself is never shared.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::{mpsc, oneshot};

pub mod push;

use crate::{
    cli::DaemonArgs,
    commands::runner::{self, Stop},
    engine::{session::Session, target::TargetSpec, window::Windows},
    error::{ExitCode, fatal},
    model::{CATEGORIES, Mode, Profile},
};

/// A request for the window in progress, answered by the profiling loop.
type SnapshotRequest = oneshot::Sender<Profile>;

/// What the HTTP handlers read.
struct Shared {
    windows: Windows,
    metrics: Metrics,
    started: Instant,
    window: Duration,
    retention: Duration,
    off_cpu: bool,
}

/// Cumulative per-process counters for `/metrics`.
#[derive(Default)]
struct Metrics {
    processes: HashMap<u32, ProcessCounters>,
    samples: u64,
    lost_events: u64,
    off_cpu_events: u64,
    windows: u64,
    /// Processes in the last window.
    active: usize,
    /// Windows pushed, and pushes that failed.
    pushes: u64,
    push_errors: u64,
}

struct ProcessCounters {
    comm: String,
    python_version: Option<String>,
    samples: u64,
    /// Nanoseconds per category.
    ns: BTreeMap<String, u64>,
    last_seen: Instant,
}

impl Metrics {
    fn add(&mut self, w: &Profile, retention: Duration) {
        let now = Instant::now();
        self.samples += w.samples;
        self.lost_events += w.lost_events;
        self.off_cpu_events += w.off_cpu_events;
        self.windows += 1;
        self.active = w.processes.len();
        for p in &w.processes {
            let c = self.processes.entry(p.pid).or_insert_with(|| ProcessCounters {
                comm: p.comm.clone(),
                python_version: None,
                samples: 0,
                ns: BTreeMap::new(),
                last_seen: now,
            });
            c.comm = p.comm.clone();
            if p.python_version.is_some() {
                c.python_version = p.python_version.clone();
            }
            c.samples += p.samples;
            for (cat, ns) in &p.totals_ns {
                *c.ns.entry(cat.clone()).or_insert(0) += ns;
            }
            c.last_seen = now;
        }
        // Processes not seen for the whole retention are dropped: memory stays bounded on hosts
        // where processes come and go.
        self.processes.retain(|_, c| now.duration_since(c.last_seen) <= retention);
    }
}

pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    runner::preflight(&args.sampling)?;
    if args.retention < args.window {
        return Err(fatal(ExitCode::Usage, "--retention must be at least one --window"));
    }
    let target = TargetSpec::resolve(args.target.all || args.target.pids.is_empty(), &args.target.pids, &[])?;
    let mode = runner::mode(None, &args.sampling)?;
    let push = args.push.as_deref().map(|url| push::Target::parse(url, &args.push_name)).transpose()?;
    // Bind before loading anything: a taken port is the commonest mistake.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| fatal(ExitCode::Usage, format!("cannot listen on {}: {e}", args.listen)))?;
    let mut stop = Stop::catch_signals()?;
    let mut session = Session::start(runner::session_config(target, &args.sampling, mode, false))?;

    let capacity = (args.retention.as_secs_f64() / args.window.as_secs_f64()).ceil() as usize;
    let shared = Arc::new(Mutex::new(Shared {
        windows: Windows::new(capacity),
        metrics: Metrics::default(),
        started: Instant::now(),
        window: args.window,
        retention: args.retention,
        off_cpu: !args.sampling.no_off_cpu,
    }));
    let (snapshots, mut requests) = mpsc::channel::<SnapshotRequest>(16);
    let app = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/debug/pprof/profile", get(pprof_cpu))
        .route("/debug/pprof/wall", get(pprof_wall))
        .route("/api/summary", get(summary))
        .with_state(AppState { shared: shared.clone(), snapshots });
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });
    eprintln!(
        "pyebpf daemon: serving http://{} (/metrics, /debug/pprof/profile, /debug/pprof/wall, /api/summary); windows of {:.0?}, keeping {:.0?}",
        args.listen, args.window, args.retention
    );

    stop.start_clock(args.duration);
    let mut window_started = Instant::now();
    let reason = runner::drive(&mut session, &mut stop, |session| {
        // The HTTP handlers' requests for the window in progress, answered between drains.
        while let Ok(reply) = requests.try_recv() {
            let _ = reply.send(session.snapshot());
        }
        if window_started.elapsed() >= args.window {
            window_started = Instant::now();
            let rotating = Instant::now();
            let w = session.rotate();
            let built = rotating.elapsed();
            if let Some(target) = &push {
                push_window(target, &w, &shared);
            }
            let (processes, lost) = (w.processes.len(), w.lost_events);
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            let retention = s.retention;
            s.metrics.add(&w, retention);
            s.windows.push(w);
            log::debug!(
                "window: {processes} processes, {lost} lost events; built in {:.0?}, stored in {:.0?}",
                built,
                rotating.elapsed() - built
            );
        }
        Ok(None)
    })
    .await?;
    let _ = stop_http.send(());
    // Answer requests still waiting so the server can finish them, then stop.
    requests.close();
    while let Ok(reply) = requests.try_recv() {
        let _ = reply.send(session.snapshot());
    }
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => log::warn!("HTTP server: {e}"),
        Err(_) => log::warn!("HTTP server did not stop within 5 s"),
        _ => {}
    }
    session.stop();
    drop(session);
    eprintln!("pyebpf daemon: stopped ({reason})");
    Ok(())
}

/// Pushes a window in the background; the outcome is counted in `/metrics`.
fn push_window(target: &push::Target, w: &Profile, shared: &Arc<Mutex<Shared>>) {
    let mut pprof = Vec::new();
    if let Err(e) = crate::output::pprof::write(w, &mut pprof) {
        log::warn!("cannot encode the window for --push: {e:#}");
        return;
    }
    let from = w.start_time_unix as u64;
    let until = (w.start_time_unix + w.duration_ns as f64 / 1e9).ceil() as u64;
    let path = target.path(from, until.max(from + 1), w.frequency_hz);
    let (target, shared) = (target.clone(), shared.clone());
    tokio::spawn(async move {
        let result = target.push(path, pprof).await;
        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
        s.metrics.pushes += 1;
        if let Err(e) = result {
            s.metrics.push_errors += 1;
            // Once per failure streak start, then quietly (counted in /metrics).
            if s.metrics.push_errors == 1 || s.metrics.push_errors % 60 == 0 {
                log::warn!("push to {}: {e:#} ({} failed so far)", target.name, s.metrics.push_errors);
            }
        }
    });
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Mutex<Shared>>,
    snapshots: mpsc::Sender<SnapshotRequest>,
}

#[derive(serde::Deserialize)]
struct Span {
    seconds: Option<f64>,
}

/// The last `seconds` (default 30, Go's default for CPU profiles): stored windows plus the
/// window in progress.
async fn last(state: &AppState, seconds: Option<f64>) -> Result<Profile, Response> {
    let secs = seconds.unwrap_or(30.0);
    if !secs.is_finite() || secs <= 0.0 {
        return Err((StatusCode::BAD_REQUEST, "seconds must be a positive number\n").into_response());
    }
    let (tx, rx) = oneshot::channel();
    let current = match state.snapshots.send(tx).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    let shared = state.shared.lock().unwrap_or_else(|e| e.into_inner());
    shared
        .windows
        .last(secs, current.as_ref())
        .ok_or_else(|| (StatusCode::SERVICE_UNAVAILABLE, "no profile yet: the daemon is stopping\n").into_response())
}

async fn pprof(state: AppState, span: Span, mode: Mode) -> Response {
    let mut profile = match last(&state, span.seconds).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if mode == Mode::Wall && !profile.off_cpu {
        return (
            StatusCode::NOT_FOUND,
            "wall-time profiles need off-CPU tracking (the daemon runs with --no-off-cpu)\n",
        )
            .into_response();
    }
    profile.mode = mode;
    let mut body = Vec::new();
    match crate::output::pprof::write(&profile, &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the profile: {e:#}\n")).into_response(),
    }
}

async fn pprof_cpu(State(state): State<AppState>, Query(span): Query<Span>) -> Response {
    pprof(state, span, Mode::Cpu).await
}

async fn pprof_wall(State(state): State<AppState>, Query(span): Query<Span>) -> Response {
    pprof(state, span, Mode::Wall).await
}

async fn summary(State(state): State<AppState>, Query(span): Query<Span>) -> Response {
    let profile = match last(&state, span.seconds.or(Some(60.0))).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match serde_json::to_vec_pretty(&profile) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn index(State(state): State<AppState>) -> String {
    let s = state.shared.lock().unwrap_or_else(|e| e.into_inner());
    format!(
        "pyebpf daemon: up {:.0} s, windows of {:.0?}, {} of {:.0?} kept\n\
         /metrics                          Prometheus metrics\n\
         /debug/pprof/profile?seconds=N    CPU profile of the last N seconds (pprof)\n\
         /debug/pprof/wall?seconds=N       wall-time profile of the last N seconds (pprof)\n\
         /api/summary?seconds=N            the last N seconds as pyebpf JSON\n",
        s.started.elapsed().as_secs_f64(),
        s.window,
        s.windows.len(),
        s.retention,
    )
}

async fn metrics(State(state): State<AppState>) -> Response {
    let s = state.shared.lock().unwrap_or_else(|e| e.into_inner());
    let body = render_metrics(&s.metrics, s.off_cpu, s.window, &SelfUsage::read());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// The daemon's own resource use, from /proc/self.
#[derive(Debug, Default)]
pub struct SelfUsage {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub start_time_unix: f64,
}

impl SelfUsage {
    pub fn read() -> Self {
        let Ok(me) = procfs::process::Process::myself() else { return Self::default() };
        let ticks = procfs::ticks_per_second() as f64;
        let page = procfs::page_size();
        let stat = me.stat().ok();
        let boot = {
            use procfs::CurrentSI as _;
            procfs::KernelStats::current().map(|k| k.btime as f64).unwrap_or(0.0)
        };
        SelfUsage {
            cpu_seconds: stat.as_ref().map(|s| (s.utime + s.stime) as f64 / ticks).unwrap_or(0.0),
            resident_bytes: me.statm().map(|m| m.resident * page).unwrap_or(0),
            start_time_unix: stat.map(|s| boot + s.starttime as f64 / ticks).unwrap_or(0.0),
        }
    }
}

/// Prometheus label value: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn render_metrics(m: &Metrics, off_cpu: bool, window: Duration, me: &SelfUsage) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_string()
    };
    let _ = family(
        "pyebpf_process_seconds_total",
        "counter",
        if off_cpu {
            "Thread time of each profiled process since the daemon started, by category (cpu, runqueue, net, disk, lock, gil, sleep, ipc, ...), summed over its threads."
        } else {
            "On-CPU time of each profiled process since the daemon started (from samples)."
        },
    );
    let mut pids: Vec<&u32> = m.processes.keys().collect();
    pids.sort();
    let labels = |pid: u32, c: &ProcessCounters| {
        format!(
            "pid=\"{pid}\",comm=\"{}\",python_version=\"{}\"",
            label(&c.comm),
            label(c.python_version.as_deref().unwrap_or(""))
        )
    };
    let mut lines = String::new();
    for &pid in &pids {
        let c = &m.processes[pid];
        for cat in CATEGORIES.iter().map(|c| c.name()) {
            if let Some(ns) = c.ns.get(cat) {
                let _ = writeln!(
                    lines,
                    "pyebpf_process_seconds_total{{{},category=\"{cat}\"}} {}",
                    labels(*pid, c),
                    *ns as f64 / 1e9
                );
            }
        }
    }
    out.push_str(&lines);
    let _ = writeln!(
        out,
        "# HELP pyebpf_process_samples_total On-CPU samples of each profiled process since the daemon started.\n# TYPE pyebpf_process_samples_total counter"
    );
    for &pid in &pids {
        let c = &m.processes[pid];
        let _ = writeln!(out, "pyebpf_process_samples_total{{{}}} {}", labels(*pid, c), c.samples);
    }
    let mut scalar = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    scalar("pyebpf_samples_total", "counter", "On-CPU samples received.", m.samples.to_string());
    scalar(
        "pyebpf_lost_events_total",
        "counter",
        "Events the kernel could not hand over (ring buffer full) or that could not be decoded.",
        m.lost_events.to_string(),
    );
    scalar(
        "pyebpf_off_cpu_events_total",
        "counter",
        "Off-CPU waits received with their stacks.",
        m.off_cpu_events.to_string(),
    );
    scalar(
        "pyebpf_windows_total",
        "counter",
        "Profiling windows completed (the counters above advance once per window).",
        m.windows.to_string(),
    );
    scalar("pyebpf_window_seconds", "gauge", "Length of one profiling window.", window.as_secs_f64().to_string());
    scalar("pyebpf_processes", "gauge", "Processes seen in the last window.", m.active.to_string());
    scalar("pyebpf_pushes_total", "counter", "Windows pushed to --push (successful or not).", m.pushes.to_string());
    scalar("pyebpf_push_errors_total", "counter", "Window pushes that failed.", m.push_errors.to_string());
    scalar(
        "pyebpf_self_cpu_seconds_total",
        "counter",
        "CPU time used by the daemon itself (user and system).",
        me.cpu_seconds.to_string(),
    );
    scalar(
        "pyebpf_self_resident_memory_bytes",
        "gauge",
        "Resident memory of the daemon itself.",
        me.resident_bytes.to_string(),
    );
    scalar(
        "pyebpf_self_start_time_seconds",
        "gauge",
        "Start time of the daemon, in Unix seconds.",
        me.start_time_unix.to_string(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prometheus_text_with_escaped_labels() {
        let mut m = Metrics::default();
        m.processes.insert(
            42,
            ProcessCounters {
                comm: "we\"ird\\".into(),
                python_version: Some("3.12.1".into()),
                samples: 7,
                ns: [("cpu".to_string(), 1_500_000_000), ("net".to_string(), 250_000_000)].into(),
                last_seen: Instant::now(),
            },
        );
        m.windows = 3;
        let text = render_metrics(
            &m,
            true,
            Duration::from_secs(10),
            &SelfUsage { cpu_seconds: 0.5, resident_bytes: 1024, start_time_unix: 1.0 },
        );
        assert!(text.contains("pyebpf_process_seconds_total{pid=\"42\",comm=\"we\\\"ird\\\\\",python_version=\"3.12.1\",category=\"cpu\"} 1.5\n"), "{text}");
        assert!(text.contains("category=\"net\"} 0.25\n"), "{text}");
        assert!(
            text.contains(
                "pyebpf_process_samples_total{pid=\"42\",comm=\"we\\\"ird\\\\\",python_version=\"3.12.1\"} 7\n"
            )
        );
        assert!(
            text.contains("# TYPE pyebpf_self_resident_memory_bytes gauge\npyebpf_self_resident_memory_bytes 1024\n")
        );
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
