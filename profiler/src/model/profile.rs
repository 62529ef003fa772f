//! The finished profile: what every output format and the summary are made from.
//! Serialized as is for `--format json` (versioned by `format`/`version`).
use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    bpf::ProgramStats,
    model::{Category, Mode, Wait},
};

pub const FORMAT_NAME: &str = "pyebpf-profile";
/// Bump when a field changes meaning or disappears; adding fields keeps the version.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
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
    /// What flame graphs and folded stacks weigh: `cpu` (samples) or `wall` (microseconds).
    pub mode: Mode,
    /// Whether off-CPU time was tracked (then totals cover wall-clock time).
    pub off_cpu: bool,
    /// Off-CPU waits shorter than this carry no stack.
    pub off_cpu_threshold_ns: u64,
    /// Off-CPU events received (waits of at least the threshold, with their stacks).
    pub off_cpu_events: u64,
    /// Off-CPU stacks not taken because their thread was over `--off-cpu-stack-rate`; their
    /// time is in the totals and spread over the thread's kept stacks of the same category.
    pub off_cpu_stacks_sampled_out: u64,
    /// Unix time the profile started, in seconds.
    pub start_time_unix: f64,
    pub processes: Vec<ProcessProfile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_stats: Option<Vec<ProgramStats>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessProfile {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Option<String>,
    /// CPython version when this is a Python process we unwound.
    pub python_version: Option<String>,
    pub samples: u64,
    /// Sum of its threads' `wall_ns`.
    pub wall_ns: u64,
    /// Nanoseconds per category (cpu, runqueue, net, disk, lock, gil, sleep, ipc, other).
    pub totals_ns: BTreeMap<String, u64>,
    pub threads: Vec<ThreadProfile>,
    /// Top Python functions by inclusive and by own time, with their split by category;
    /// sorted by inclusive time.
    pub functions: Vec<FunctionProfile>,
    /// Blocking calls made while an event loop was running a coroutine or callback: the loop
    /// could run nothing else meanwhile. Largest first.
    pub loop_stalls: Vec<LoopStall>,
    pub stacks: Vec<StackProfile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionProfile {
    pub function: String,
    pub file: String,
    /// Inclusive: time of every stack the function is on.
    pub wall_ns: u64,
    pub totals_ns: BTreeMap<String, u64>,
    /// Own: time of the stacks where it is the innermost Python frame.
    pub own_ns: u64,
    pub own_totals_ns: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThreadProfile {
    pub tid: u32,
    /// OS thread name (`comm`).
    pub name: String,
    /// `threading.Thread.name`, when it could be read.
    pub python_name: Option<String>,
    /// On-CPU samples.
    pub samples: u64,
    /// Time accounted while profiled: on-CPU plus off-CPU (exact when off-CPU was tracked,
    /// else samples × period).
    pub wall_ns: u64,
    pub totals_ns: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StackProfile {
    pub tid: u32,
    /// The thread's Python name when known, else its OS name.
    pub thread: String,
    /// Root first: every frame as text (Python, native, kernel).
    pub frames: Vec<String>,
    /// The Python frames of `frames`, root first, as structured data.
    pub python_frames: Vec<PythonFrameProfile>,
    /// On-CPU samples, or off-CPU intervals.
    pub samples: u64,
    pub category: Category,
    /// Time this stack stands for, in its category.
    pub weight_ns: u64,
    /// The syscall an off-CPU stack was blocked in.
    pub syscall: Option<String>,
    /// What it waited on: `tcp 127.0.0.1:5432`, `file /var/lib/x.db`...
    pub target: Option<String>,
    /// For an off-CPU stack blocked while a coroutine ran on the thread: the innermost
    /// coroutine frame (or, on an event loop, the callback it ran), `qualname (file:line)`.
    pub coroutine: Option<String>,
    /// This wait held up the event loop running on the thread.
    pub stalls_loop: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoopStall {
    pub tid: u32,
    pub thread: String,
    /// The coroutine (or callback) that made the blocking call.
    pub coroutine: Option<String>,
    pub syscall: Option<String>,
    pub target: Option<String>,
    pub category: Category,
    /// Time the loop was held up.
    pub wall_ns: u64,
    /// Blocking calls (off-CPU intervals) counted.
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PythonFrameProfile {
    /// Qualified name (3.11+), else the function name; `<module>` for module-level code.
    pub function: String,
    pub file: String,
    pub line: Option<i32>,
    /// Line the function starts at (`co_firstlineno`).
    pub first_line: i32,
}

/// A Python frame's text in `frames`: py-spy's `qualname (path/file.py:LINE)`.
pub fn python_frame_text(function: &str, file: &str, line: Option<i32>) -> String {
    match line {
        Some(line) => format!("{function} ({file}:{line})"),
        None => format!("{function} ({file})"),
    }
}

/// One frame of a stack, for formats that keep Python frames structured (speedscope, pprof).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Frame<'a> {
    Python(&'a PythonFrameProfile),
    /// Native, kernel, or a marker such as `[truncated]`: its text.
    Other(&'a str),
}

impl Profile {
    /// Folded-stack lines (`process;thread;frame;...;leaf count`), sorted, for folded and SVG
    /// output. In `cpu` mode: on-CPU stacks, counted in samples. In `wall` mode: every stack,
    /// off-CPU ones ending in a frame naming their wait (`[net] recv tcp 10.0.0.5:5432`),
    /// weighted in microseconds.
    pub fn folded_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for p in &self.processes {
            let process = format!("{} ({})", sanitize(&p.comm), p.pid);
            for s in &p.stacks {
                let count = match self.mode {
                    Mode::Cpu if s.category == Category::Cpu => s.samples,
                    Mode::Cpu => continue,
                    Mode::Wall => s.weight_ns / 1000,
                };
                if count == 0 {
                    continue;
                }
                let mut line = format!("{process};{} ({})", sanitize(&s.thread), s.tid);
                for f in &s.frames {
                    line.push(';');
                    line.push_str(&sanitize(f));
                }
                if let Some(leaf) = s.wait_frame() {
                    line.push(';');
                    line.push_str(&sanitize(&leaf));
                }
                line.push(' ');
                line.push_str(&count.to_string());
                lines.push(line);
            }
        }
        lines.sort();
        lines
    }
}

impl StackProfile {
    /// `frames`, root first, with each Python frame paired with its entry in `python_frames`
    /// (they come in the same order; frames without structured data stay text).
    pub fn structured_frames(&self) -> impl Iterator<Item = Frame<'_>> {
        let mut python = self.python_frames.iter().peekable();
        self.frames.iter().map(move |text| {
            match python.next_if(|f| python_frame_text(&f.function, &f.file, f.line) == *text) {
                Some(f) => Frame::Python(f),
                None => Frame::Other(text),
            }
        })
    }

    /// The synthetic leaf frame of an off-CPU stack.
    pub fn wait_frame(&self) -> Option<String> {
        (self.category != Category::Cpu).then(|| {
            Wait { category: self.category, syscall: self.syscall.clone(), target: self.target.clone() }.leaf_frame()
        })
    }
}

/// Frame text safe inside a folded line: `;` separates frames and a newline ends the line.
fn sanitize(frame: &str) -> String {
    frame.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A profile for the output formats' tests: process `app` (10) with threads `main` (11: an
    /// on-CPU stack with a Python frame, a network wait) and `worker` (12: an on-CPU stack, a
    /// stackless short sleep), sampled at 100 Hz.
    pub(crate) fn sample_profile(mode: Mode) -> Profile {
        let py = |function: &str, line, first_line| PythonFrameProfile {
            function: function.into(),
            file: "/srv/app.py".into(),
            line: Some(line),
            first_line,
        };
        let stack = |tid,
                     thread: &str,
                     python: Vec<PythonFrameProfile>,
                     frames: Vec<String>,
                     category,
                     samples,
                     weight_ns,
                     wait: (Option<&str>, Option<&str>)| StackProfile {
            tid,
            thread: thread.into(),
            frames,
            python_frames: python,
            samples,
            category,
            weight_ns,
            syscall: wait.0.map(str::to_string),
            target: wait.1.map(str::to_string),
            coroutine: None,
            stalls_loop: false,
        };
        let text = |f: &PythonFrameProfile| python_frame_text(&f.function, &f.file, f.line);
        let (work, spin) = (py("work", 7, 5), py("spin", 20, 18));
        let thread = |tid, name: &str, samples, cpu_ns: u64, off: (&str, u64)| ThreadProfile {
            tid,
            name: name.into(),
            python_name: None,
            samples,
            wall_ns: cpu_ns + off.1,
            totals_ns: [("cpu".to_string(), cpu_ns), (off.0.to_string(), off.1)].into(),
        };
        let mut p = profile(mode);
        p.samples = 7;
        p.start_time_unix = 1_700_000_000.5;
        p.duration_ns = 2_000_000_000;
        p.processes[0].threads = vec![
            thread(11, "main", 3, 30_000_000, ("net", 50_000_000)),
            thread(12, "worker", 4, 40_000_000, ("sleep", 1_000_000)),
        ];
        p.processes[0].stacks = vec![
            stack(
                12,
                "worker",
                vec![spin.clone()],
                vec!["main".into(), text(&spin)],
                Category::Cpu,
                4,
                40_000_000,
                (None, None),
            ),
            stack(
                11,
                "main",
                vec![work.clone()],
                vec!["main".into(), text(&work), "a::b;c".into()],
                Category::Cpu,
                3,
                30_000_000,
                (None, None),
            ),
            stack(
                11,
                "main",
                vec![],
                vec!["main".into(), "get".into()],
                Category::Net,
                2,
                50_000_000,
                (Some("recvfrom"), Some("tcp 127.0.0.1:5432")),
            ),
            stack(12, "worker", vec![], vec![], Category::Sleep, 0, 1_000_000, (None, Some("short waits (no stack)"))),
        ];
        p
    }

    #[test]
    fn structured_frames_pair_python_frames_with_their_text() {
        let p = sample_profile(Mode::Wall);
        let s = &p.processes[0].stacks[1];
        let frames: Vec<Frame> = s.structured_frames().collect();
        assert_eq!(frames, vec![Frame::Other("main"), Frame::Python(&s.python_frames[0]), Frame::Other("a::b;c")]);
    }

    fn profile(mode: Mode) -> Profile {
        let stack =
            |frames: &[&str], category, samples, weight_ns, syscall: Option<&str>, target: Option<&str>| StackProfile {
                tid: 11,
                thread: "w;1".into(),
                frames: frames.iter().map(|f| f.to_string()).collect(),
                python_frames: vec![],
                samples,
                category,
                weight_ns,
                syscall: syscall.map(str::to_string),
                target: target.map(str::to_string),
                coroutine: None,
                stalls_loop: false,
            };
        Profile {
            format: FORMAT_NAME,
            version: FORMAT_VERSION,
            duration_ns: 1,
            frequency_hz: 100,
            cpus: 1,
            lost_events: 0,
            samples: 3,
            mode,
            off_cpu: true,
            off_cpu_threshold_ns: 0,
            off_cpu_events: 0,
            off_cpu_stacks_sampled_out: 0,
            start_time_unix: 0.0,
            bpf_stats: None,
            processes: vec![ProcessProfile {
                pid: 10,
                comm: "app".into(),
                cmdline: None,
                python_version: None,
                samples: 3,
                wall_ns: 0,
                totals_ns: Default::default(),
                functions: vec![],
                loop_stalls: vec![],
                threads: vec![],
                stacks: vec![
                    stack(&["main", "a::b;c"], Category::Cpu, 3, 30_000_000, None, None),
                    stack(&["main", "get"], Category::Net, 2, 5_000_000, Some("recvfrom"), Some("tcp 127.0.0.1:5432")),
                ],
            }],
        }
    }

    #[test]
    fn folded_cpu_mode_counts_on_cpu_samples_root_first() {
        assert_eq!(profile(Mode::Cpu).folded_lines(), vec!["app (10);w:1 (11);main;a::b:c 3".to_string()]);
    }

    #[test]
    fn folded_wall_mode_weighs_microseconds_and_names_waits() {
        assert_eq!(
            profile(Mode::Wall).folded_lines(),
            vec![
                "app (10);w:1 (11);main;a::b:c 30000".to_string(),
                "app (10);w:1 (11);main;get;[net] recvfrom tcp 127.0.0.1:5432 5000".to_string(),
            ]
        );
    }
}
