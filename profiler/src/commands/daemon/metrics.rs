//! `/metrics`: cumulative per-process counters (seconds per category, samples) kept across
//! windows, and the daemon's own resource use, in Prometheus's text format.
use std::{
    collections::HashMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use crate::model::{Profile, Totals};

/// Cumulative per-process counters for `/metrics`.
#[derive(Default)]
pub(super) struct Metrics {
    processes: HashMap<u32, ProcessCounters>,
    samples: u64,
    lost_events: u64,
    off_cpu_events: u64,
    windows: u64,
    /// Processes in the last window.
    active: usize,
    /// Windows pushed, and pushes that failed.
    pub(super) pushes: u64,
    pub(super) push_errors: u64,
    /// Windows sent to --otlp, and sends that failed.
    pub(super) otlp_pushes: u64,
    pub(super) otlp_push_errors: u64,
}

struct ProcessCounters {
    comm: String,
    python_version: Option<String>,
    /// Container id and Kubernetes pod UID, when its cgroup names them.
    container_id: Option<String>,
    pod_uid: Option<String>,
    samples: u64,
    /// Nanoseconds per category.
    ns: Totals,
    last_seen: Instant,
}

impl Metrics {
    pub(super) fn add(&mut self, w: &Profile, retention: Duration) {
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
                container_id: None,
                pod_uid: None,
                samples: 0,
                ns: Totals::default(),
                last_seen: now,
            });
            if let Some(container) = &p.container {
                c.container_id = container.id.clone();
                c.pod_uid = container.pod_uid.clone();
            }
            c.comm = p.comm.clone();
            if p.python_version.is_some() {
                c.python_version = p.python_version.clone();
            }
            c.samples += p.samples;
            c.ns.add_all(&p.totals_ns);
            c.last_seen = now;
        }
        // Processes not seen for the whole retention are dropped: memory stays bounded on hosts
        // where processes come and go.
        self.processes.retain(|_, c| now.duration_since(c.last_seen) <= retention);
    }
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

pub(super) fn render_metrics(m: &Metrics, off_cpu: bool, window: Duration, me: &SelfUsage) -> String {
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
            "pid=\"{pid}\",comm=\"{}\",python_version=\"{}\",container_id=\"{}\",pod_uid=\"{}\"",
            label(&c.comm),
            label(c.python_version.as_deref().unwrap_or("")),
            label(c.container_id.as_deref().unwrap_or("")),
            label(c.pod_uid.as_deref().unwrap_or(""))
        )
    };
    let mut lines = String::new();
    for &pid in &pids {
        let c = &m.processes[pid];
        for (cat, ns) in c.ns.iter() {
            let _ = writeln!(
                lines,
                "pyebpf_process_seconds_total{{{},category=\"{}\"}} {}",
                labels(*pid, c),
                cat.name(),
                ns as f64 / 1e9
            );
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
        "pyebpf_otlp_pushes_total",
        "counter",
        "Windows sent to --otlp (successful or not).",
        m.otlp_pushes.to_string(),
    );
    scalar(
        "pyebpf_otlp_push_errors_total",
        "counter",
        "Window sends to --otlp that failed.",
        m.otlp_push_errors.to_string(),
    );
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
                container_id: Some("3f4e".into()),
                pod_uid: None,
                samples: 7,
                ns: [(crate::model::Category::Cpu, 1_500_000_000), (crate::model::Category::Net, 250_000_000)]
                    .into_iter()
                    .collect(),
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
        assert!(text.contains("pyebpf_process_seconds_total{pid=\"42\",comm=\"we\\\"ird\\\\\",python_version=\"3.12.1\",container_id=\"3f4e\",pod_uid=\"\",category=\"cpu\"} 1.5\n"), "{text}");
        assert!(text.contains("category=\"net\"} 0.25\n"), "{text}");
        assert!(
            text.contains(
                "pyebpf_process_samples_total{pid=\"42\",comm=\"we\\\"ird\\\\\",python_version=\"3.12.1\",container_id=\"3f4e\",pod_uid=\"\"} 7\n"
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
