//! The finished profile: what every output format and the summary are made from.
//! Serialized as is for `--format json` (versioned by `format`/`version`).
use serde::Serialize;

use crate::bpf::ProgramStats;

pub const FORMAT_NAME: &str = "pyebpf-profile";
/// Bump when a field changes meaning or disappears; adding fields keeps the version.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Profile {
    pub format: &'static str,
    pub version: u32,
    /// Wall-clock time profiled.
    pub duration_ns: u64,
    /// Samples per second per CPU.
    pub frequency_hz: u32,
    pub cpus: usize,
    /// Samples the kernel could not hand over (ring buffer full) or userspace could not decode.
    pub lost_events: u64,
    pub samples: u64,
    /// Unix time the profile started, in seconds.
    pub start_time_unix: f64,
    pub processes: Vec<ProcessProfile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_stats: Option<Vec<ProgramStats>>,
}

#[derive(Debug, Serialize)]
pub struct ProcessProfile {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Option<String>,
    /// CPython version when this is a Python process we unwound.
    pub python_version: Option<String>,
    pub samples: u64,
    pub threads: Vec<ThreadProfile>,
    pub stacks: Vec<StackProfile>,
}

#[derive(Debug, Serialize)]
pub struct ThreadProfile {
    pub tid: u32,
    /// OS thread name (`comm`).
    pub name: String,
    /// `threading.Thread.name`, when it could be read.
    pub python_name: Option<String>,
    pub samples: u64,
}

#[derive(Debug, Serialize)]
pub struct StackProfile {
    pub tid: u32,
    /// The thread's Python name when known, else its OS name.
    pub thread: String,
    /// Root first: every frame as text (Python, native, kernel).
    pub frames: Vec<String>,
    /// The Python frames of `frames`, root first, as structured data.
    pub python_frames: Vec<PythonFrameProfile>,
    pub samples: u64,
}

#[derive(Debug, Serialize)]
pub struct PythonFrameProfile {
    /// Qualified name (3.11+), else the function name; `<module>` for module-level code.
    pub function: String,
    pub file: String,
    pub line: Option<i32>,
}

impl Profile {
    /// Folded-stack lines (`process;thread;frame;...;leaf count`), sorted, for folded and SVG output.
    pub fn folded_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for p in &self.processes {
            let process = format!("{} ({})", sanitize(&p.comm), p.pid);
            for s in &p.stacks {
                let mut line = format!("{process};{} ({})", sanitize(&s.thread), s.tid);
                for f in &s.frames {
                    line.push(';');
                    line.push_str(&sanitize(f));
                }
                line.push(' ');
                line.push_str(&s.samples.to_string());
                lines.push(line);
            }
        }
        lines.sort();
        lines
    }
}

/// Frame text safe inside a folded line: `;` separates frames and a newline ends the line.
fn sanitize(frame: &str) -> String {
    frame.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_lines_are_root_first_and_prefixed_by_process_and_thread() {
        let profile = Profile {
            format: FORMAT_NAME,
            version: FORMAT_VERSION,
            duration_ns: 1,
            frequency_hz: 99,
            cpus: 1,
            lost_events: 0,
            samples: 3,
            start_time_unix: 0.0,
            bpf_stats: None,
            processes: vec![ProcessProfile {
                pid: 10,
                comm: "app".into(),
                cmdline: None,
                python_version: None,
                samples: 3,
                threads: vec![ThreadProfile { tid: 11, name: "w;1".into(), python_name: None, samples: 3 }],
                stacks: vec![StackProfile {
                    tid: 11,
                    thread: "w;1".into(),
                    frames: vec!["main".into(), "a::b;c".into()],
                    python_frames: vec![],
                    samples: 3,
                }],
            }],
        };
        assert_eq!(profile.folded_lines(), vec!["app (10);w:1 (11);main;a::b:c 3".to_string()]);
    }
}
