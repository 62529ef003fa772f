//! The finished profile: what every output format and the summary are made from, and what
//! `pyebpf diff` reads back. Serialized as is for `--format json` (versioned by
//! `format`/`version`); stacks keep their version-1 form there (frames as text, Python frames
//! also structured), see [`StackProfile`]'s serde implementation.
use std::cmp::Ordering;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    category::{Category, Wait},
    frame::{Frame, PythonFrame},
    mode::Mode,
    totals::Totals,
};

pub const FORMAT_NAME: &str = "pyebpf-profile";
/// Bump when a field changes meaning or disappears; adding fields keeps the version.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub format: String,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_stats: Option<Vec<ProgramStats>>,
}

/// Run count and time of one of the kernel programs (`--bpf-stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramStats {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessProfile {
    pub pid: u32,
    /// Its parent: the process that forked it when it was followed as a target's descendant,
    /// else its parent in /proc when first seen. Absent in profiles written before pyebpf
    /// knew it (and then not written back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    pub comm: String,
    pub cmdline: Option<String>,
    /// CPython version when this is a Python process we unwound.
    pub python_version: Option<String>,
    /// Its cgroup, and the container and Kubernetes pod it names (absent in profiles written
    /// before this field, and for processes gone before they were looked at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    pub samples: u64,
    /// Sum of its threads' `wall_ns`.
    pub wall_ns: u64,
    /// Nanoseconds per category, summed over its threads.
    pub totals_ns: Totals,
    pub threads: Vec<ThreadProfile>,
    /// Top Python functions by inclusive and by own time, with their split by category;
    /// sorted by inclusive time.
    pub functions: Vec<FunctionProfile>,
    /// Blocking calls made while an event loop was running a coroutine or callback: the loop
    /// could run nothing else meanwhile. Largest first.
    #[serde(default)]
    pub loop_stalls: Vec<LoopStall>,
    pub stacks: Vec<StackProfile>,
    /// asyncio tasks' wall time by await chain and state (absent when none were read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<super::TaskProfile>,
}

/// Where a process runs: its cgroup, and the container and pod its cgroup's name gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Container id (64 hex digits), None for a process outside any container.
    pub id: Option<String>,
    /// `docker`, `containerd`, `cri-o` or `podman`, when the cgroup's name says.
    pub runtime: Option<String>,
    /// Kubernetes pod UID.
    pub pod_uid: Option<String>,
    /// The cgroup path, as the host sees it.
    pub cgroup: String,
}

impl Container {
    /// The id as `docker ps` shows it (12 digits).
    pub fn short_id(&self) -> Option<&str> {
        self.id.as_deref().map(|id| &id[..id.len().min(12)])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionProfile {
    pub function: String,
    pub file: String,
    /// Inclusive: time of every stack the function is on.
    pub wall_ns: u64,
    pub totals_ns: Totals,
    /// Own: time of the stacks where it is the innermost Python frame.
    pub own_ns: u64,
    pub own_totals_ns: Totals,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub totals_ns: Totals,
}

impl ThreadProfile {
    /// What the thread is called in stacks and reports: its Python name, else its OS name.
    pub fn label(&self) -> &str {
        self.python_name.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StackProfile {
    pub tid: u32,
    /// The thread's Python name when known, else its OS name.
    pub thread: String,
    /// Root first: Python, native and kernel frames, and markers.
    pub frames: Vec<Frame>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl StackProfile {
    /// The Python frames of the stack, root first.
    pub fn python_frames(&self) -> impl DoubleEndedIterator<Item = &PythonFrame> {
        self.frames.iter().filter_map(Frame::as_python)
    }

    /// The innermost Python frame: the function whose own time this stack is.
    pub fn innermost_python(&self) -> Option<&PythonFrame> {
        self.python_frames().next_back()
    }

    /// The wait of an off-CPU stack.
    pub fn wait(&self) -> Option<Wait> {
        (self.category != Category::Cpu).then(|| Wait {
            category: self.category,
            syscall: self.syscall.clone(),
            target: self.target.clone(),
        })
    }

    /// The synthetic leaf frame of an off-CPU stack in wall-time views (`[net] recv tcp ...`).
    pub fn wait_frame(&self) -> Option<Frame> {
        self.wait().map(Frame::Wait)
    }

    /// The frames with the wait frame of an off-CPU stack as their leaf.
    pub fn frames_with_wait(&self) -> impl Iterator<Item = std::borrow::Cow<'_, Frame>> {
        self.frames.iter().map(std::borrow::Cow::Borrowed).chain(self.wait_frame().map(std::borrow::Cow::Owned))
    }
}

/// Orders stacks as their text would sort: the order outputs list stacks of equal weight in.
pub fn cmp_frames(a: &[Frame], b: &[Frame]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            let o = x.to_string().cmp(&y.to_string());
            if o != Ordering::Equal {
                return o;
            }
        }
    }
    a.len().cmp(&b.len())
}

/// How a stack is written in JSON (format version 1): every frame as text, and its Python
/// frames again as structured data, in the same order.
#[derive(Serialize)]
struct StackOut<'a> {
    tid: u32,
    thread: &'a str,
    frames: Vec<String>,
    python_frames: Vec<&'a PythonFrame>,
    samples: u64,
    category: Category,
    weight_ns: u64,
    syscall: &'a Option<String>,
    target: &'a Option<String>,
    coroutine: &'a Option<String>,
    stalls_loop: bool,
}

#[derive(Deserialize)]
struct StackIn {
    tid: u32,
    thread: String,
    frames: Vec<String>,
    #[serde(default)]
    python_frames: Vec<PythonFrame>,
    samples: u64,
    category: Category,
    weight_ns: u64,
    #[serde(default)]
    syscall: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    coroutine: Option<String>,
    #[serde(default)]
    stalls_loop: bool,
}

impl Serialize for StackProfile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StackOut {
            tid: self.tid,
            thread: &self.thread,
            frames: self.frames.iter().map(Frame::to_string).collect(),
            python_frames: self.python_frames().collect(),
            samples: self.samples,
            category: self.category,
            weight_ns: self.weight_ns,
            syscall: &self.syscall,
            target: &self.target,
            coroutine: &self.coroutine,
            stalls_loop: self.stalls_loop,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for StackProfile {
    /// Each text frame that is the next of `python_frames` (same text) becomes that Python
    /// frame; the others are read by their form ([`Frame::from_text`]).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StackIn::deserialize(d)?;
        let mut python = s.python_frames.into_iter().peekable();
        let frames = s
            .frames
            .iter()
            .map(|text| match python.next_if(|p| p.to_string() == *text) {
                Some(p) => Frame::Python(p),
                None => Frame::from_text(text),
            })
            .collect();
        Ok(StackProfile {
            tid: s.tid,
            thread: s.thread,
            frames,
            samples: s.samples,
            category: s.category,
            weight_ns: s.weight_ns,
            syscall: s.syscall,
            target: s.target,
            coroutine: s.coroutine,
            stalls_loop: s.stalls_loop,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn stack(
        tid: u32,
        thread: &str,
        frames: Vec<Frame>,
        category: Category,
        samples: u64,
        weight_ns: u64,
        wait: (Option<&str>, Option<&str>),
    ) -> StackProfile {
        StackProfile {
            tid,
            thread: thread.into(),
            frames,
            samples,
            category,
            weight_ns,
            syscall: wait.0.map(str::to_string),
            target: wait.1.map(str::to_string),
            coroutine: None,
            stalls_loop: false,
        }
    }

    /// A profile for the output formats' tests: process `app` (10) with threads `main` (11: an
    /// on-CPU stack with a Python frame, a network wait) and `worker` (12: an on-CPU stack, a
    /// stackless short sleep), sampled at 100 Hz.
    pub(crate) fn sample_profile(mode: Mode) -> Profile {
        let py = |function: &str, line, first_line| {
            Frame::Python(PythonFrame {
                function: function.into(),
                file: "/srv/app.py".into(),
                line: Some(line),
                first_line,
            })
        };
        let (work, spin) = (py("work", 7, 5), py("spin", 20, 18));
        let thread = |tid, name: &str, samples, cpu_ns: u64, off: (Category, u64)| ThreadProfile {
            tid,
            name: name.into(),
            python_name: None,
            samples,
            wall_ns: cpu_ns + off.1,
            totals_ns: [(Category::Cpu, cpu_ns), off].into_iter().collect(),
        };
        let mut p = profile(mode);
        p.samples = 7;
        p.start_time_unix = 1_700_000_000.5;
        p.duration_ns = 2_000_000_000;
        p.processes[0].threads = vec![
            thread(11, "main", 3, 30_000_000, (Category::Net, 50_000_000)),
            thread(12, "worker", 4, 40_000_000, (Category::Sleep, 1_000_000)),
        ];
        p.processes[0].stacks = vec![
            stack(12, "worker", vec![Frame::native("main"), spin], Category::Cpu, 4, 40_000_000, (None, None)),
            stack(
                11,
                "main",
                vec![Frame::native("main"), work, Frame::native("a::b;c")],
                Category::Cpu,
                3,
                30_000_000,
                (None, None),
            ),
            stack(
                11,
                "main",
                vec![Frame::native("main"), Frame::native("get")],
                Category::Net,
                2,
                50_000_000,
                (Some("recvfrom"), Some("tcp 127.0.0.1:5432")),
            ),
            stack(12, "worker", vec![], Category::Sleep, 0, 1_000_000, (None, Some("short waits (no stack)"))),
        ];
        p
    }

    fn profile(mode: Mode) -> Profile {
        let frames = |names: &[&str]| names.iter().map(|f| Frame::native(*f)).collect();
        Profile {
            format: FORMAT_NAME.into(),
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
                container: None,
                pid: 10,
                ppid: None,
                comm: "app".into(),
                cmdline: None,
                python_version: None,
                samples: 3,
                wall_ns: 0,
                totals_ns: Default::default(),
                functions: vec![],
                loop_stalls: vec![],
                tasks: vec![],
                threads: vec![],
                stacks: vec![
                    stack(11, "w;1", frames(&["main", "a::b;c"]), Category::Cpu, 3, 30_000_000, (None, None)),
                    stack(
                        11,
                        "w;1",
                        frames(&["main", "get"]),
                        Category::Net,
                        2,
                        5_000_000,
                        (Some("recvfrom"), Some("tcp 127.0.0.1:5432")),
                    ),
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

    #[test]
    fn json_keeps_version_1_stacks_and_reads_back_typed() {
        let p = sample_profile(Mode::Wall);
        let json = serde_json::to_value(&p).unwrap();
        let s = &json["processes"][0]["stacks"][1];
        assert_eq!(s["frames"], serde_json::json!(["main", "work (/srv/app.py:7)", "a::b;c"]));
        assert_eq!(
            s["python_frames"],
            serde_json::json!([{"function": "work", "file": "/srv/app.py", "line": 7, "first_line": 5}])
        );
        assert_eq!(
            json["processes"][0]["threads"][0]["totals_ns"],
            serde_json::json!({"cpu": 30000000, "net": 50000000})
        );
        let back: Profile = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.processes[0].stacks, p.processes[0].stacks);
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        // A Python frame's text that happens to equal a native one is typed by python_frames.
        assert_eq!(back.processes[0].stacks[1].innermost_python().map(|f| f.function.as_str()), Some("work"));
    }
}
