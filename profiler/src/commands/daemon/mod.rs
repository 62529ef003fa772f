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
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

mod http;
mod metrics;
pub mod push;

use self::metrics::Metrics;

use crate::{
    cli::DaemonArgs,
    commands::runner::{self, Stop},
    engine::{session::Session, target::TargetSpec, window::Windows},
    error::{ExitCode, fatal},
    model::Profile,
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

pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    runner::preflight(&args.sampling)?;
    if args.retention < args.window {
        return Err(fatal(ExitCode::Usage, "--retention must be at least one --window"));
    }
    let children =
        runner::subprocesses(&args.target.subprocesses, args.target.all(), !args.target.containers.is_empty())?;
    let target =
        TargetSpec::resolve(args.target.all(), &args.target.pids, &args.target.containers, &[], children, false)?;
    let mode = runner::mode(None, &args.sampling)?;
    let push = args.push.as_deref().map(|url| push::Target::parse(url, &args.push_name)).transpose()?;
    let otlp = args.otlp.as_deref().map(push::OtlpTarget::parse).transpose()?;
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
    let app = http::router(shared.clone(), snapshots);
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
            if let Some(target) = &otlp {
                push_otlp_window(target, &w, &shared);
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

/// Sends a window to the OTLP collector in the background; counted in `/metrics`.
fn push_otlp_window(target: &push::OtlpTarget, w: &Profile, shared: &Arc<Mutex<Shared>>) {
    use prost::Message as _;
    let request = crate::output::otlp::build(w, &crate::output::otlp::host_name()).encode_to_vec();
    let (target, shared) = (target.clone(), shared.clone());
    tokio::spawn(async move {
        let result = target.push(request).await;
        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
        s.metrics.otlp_pushes += 1;
        if let Err(e) = result {
            s.metrics.otlp_push_errors += 1;
            if s.metrics.otlp_push_errors == 1 || s.metrics.otlp_push_errors % 60 == 0 {
                log::warn!("--otlp {}: {e:#} ({} failed so far)", target.path, s.metrics.otlp_push_errors);
            }
        }
    });
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
