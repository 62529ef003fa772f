//! The daemon's HTTP endpoints (axum). Handlers read the stored windows under a lock and ask
//! the profiling loop for the window in progress through a channel.
use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

use super::{
    Shared, SnapshotRequest,
    metrics::{SelfUsage, render_metrics},
};
use crate::model::{Mode, Profile};

/// The endpoints, reading `shared` and asking for the window in progress through `snapshots`.
pub(super) fn router(shared: Arc<Mutex<Shared>>, snapshots: mpsc::Sender<SnapshotRequest>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/debug/pprof/profile", get(pprof_cpu))
        .route("/debug/pprof/wall", get(pprof_wall))
        .route("/api/summary", get(summary))
        .with_state(AppState { shared, snapshots })
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
