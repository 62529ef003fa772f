//! pprof's format: a gzipped `perftools.profiles.Profile` protobuf (google/pprof's
//! proto/profile.proto), read by `go tool pprof`, Pyroscope, Parca, Grafana...
//!
//! Each stack of the profile is one sample, locations leaf first as pprof expects. Every sample
//! carries every value, so one file answers "where does CPU go" and "where does wall time go"
//! (`-sample_index=cpu|wall`) and "what waits on the network" (`-sample_index=net`):
//! `samples/count` (on-CPU samples, or off-CPU waits), `cpu/nanoseconds`, `wall/nanoseconds`,
//! then one `<category>/nanoseconds` per off-CPU category, taken from [`CATEGORIES`] so new
//! categories show up without touching this file. `--mode` only picks the default value.
//! Off-CPU stacks end in the same wait frame as folded wall stacks (`[net] recvfrom tcp ...`),
//! so `pprof -top` names the wait. Process and thread are labels (`-tagfocus thread=worker`),
//! not frames as in folded output.
//!
//! In wall mode a profile with asyncio tasks has one more value, `tasks/nanoseconds`, and one
//! sample per task stack holding only it (`-sample_index=tasks`): the task's await chain as
//! locations under its state leaf (`[awaiting] sleep`), labels `task`, `task_state` and
//! `task_target`. Its time is wall time per task, so it stays out of `wall`.
use std::{collections::HashMap, io::Write};

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use crate::model::{CATEGORIES, Category, Container, Frame, Mode, Profile, StackProfile, TaskProfile};

/// profile.proto's messages, declared by hand with the proto's field numbers (prost derives the
/// encoding; no protoc at build time). Fields pyebpf never sets are left out.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
    }

    /// No `mapping_id`: frames are already symbolized, and the proto allows locations without
    /// a mapping ("unknown or not applicable").
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// Builds the string, function and location tables as samples come.
struct Builder {
    out: proto::Profile,
    strings: HashMap<String, i64>,
    /// (name, filename, start line) → function id.
    functions: HashMap<(i64, i64, i64), u64>,
    /// (function id, line) → location id.
    locations: HashMap<(u64, i64), u64>,
}

impl Builder {
    fn new() -> Self {
        // string_table[0] must be "".
        let mut b = Self {
            out: proto::Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
        };
        b.string("");
        b
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.strings.get(s) {
            return id;
        }
        let id = self.out.string_table.len() as i64;
        self.out.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), id);
        id
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> proto::ValueType {
        proto::ValueType { r#type: self.string(kind), unit: self.string(unit) }
    }

    /// The location of one frame (ids start at 1: 0 means unset in the proto).
    fn location(&mut self, name: &str, file: &str, start_line: i64, line: i64) -> u64 {
        let key = (self.string(name), self.string(file), start_line);
        let next_function = self.out.function.len() as u64 + 1;
        let function_id = *self.functions.entry(key).or_insert(next_function);
        if function_id == next_function {
            // No system_name: pprof takes a function whose name equals its system name for
            // undemangled C++ and cuts "(...)" off it (`short waits (no stack)`).
            self.out.function.push(proto::Function {
                id: function_id,
                name: key.0,
                system_name: 0,
                filename: key.1,
                start_line,
            });
        }
        let next_location = self.out.location.len() as u64 + 1;
        let location_id = *self.locations.entry((function_id, line)).or_insert(next_location);
        if location_id == next_location {
            self.out.location.push(proto::Location { id: location_id, line: vec![proto::Line { function_id, line }] });
        }
        location_id
    }

    /// Location ids of a stack, leaf first: the wait frame of an off-CPU stack, then its frames.
    fn stack(&mut self, s: &StackProfile) -> Vec<u64> {
        let frames: Vec<_> = s.frames_with_wait().collect();
        frames
            .iter()
            .rev()
            .map(|f| match &**f {
                Frame::Python(p) => {
                    self.location(&p.function, &p.file, p.first_line.into(), p.line.unwrap_or(0).into())
                }
                other => self.location(&other.to_string(), "", 0, 0),
            })
            .collect()
    }

    /// Location ids of a task stack, leaf first: its state leaf, then its chain.
    fn task_stack(&mut self, t: &TaskProfile) -> Vec<u64> {
        let mut ids = vec![self.location(&t.leaf(), "", 0, 0)];
        for p in t.frames.iter().rev() {
            ids.push(self.location(&p.function, &p.file, p.first_line.into(), p.line.unwrap_or(0).into()));
        }
        ids
    }

    fn str_label(&mut self, key: &str, value: &str) -> proto::Label {
        proto::Label { key: self.string(key), str: self.string(value), num: 0 }
    }

    fn num_label(&mut self, key: &str, value: u32) -> proto::Label {
        proto::Label { key: self.string(key), str: 0, num: value.into() }
    }

    /// Appends a process's container labels (none outside a container): thread stacks and task
    /// stacks carry the same ones.
    fn push_container_labels(&mut self, label: &mut Vec<proto::Label>, container: Option<&Container>) {
        for (key, value) in container.map(container_labels).unwrap_or_default() {
            label.push(self.str_label(key, value));
        }
    }
}

/// A process's container labels: `container_id`, `container_runtime`, `pod_uid` when its cgroup
/// names them, and `cgroup` always (`-tagfocus container_id=3f4e…`).
pub(super) fn container_labels(c: &Container) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    if let Some(id) = &c.id {
        out.push(("container_id", id.as_str()));
    }
    if let Some(runtime) = &c.runtime {
        out.push(("container_runtime", runtime.as_str()));
    }
    if let Some(pod) = &c.pod_uid {
        out.push(("pod_uid", pod.as_str()));
    }
    out.push(("cgroup", c.cgroup.as_str()));
    out
}

/// Off-CPU categories, each with its own value after samples, cpu and wall.
fn off_cpu_categories() -> impl Iterator<Item = Category> {
    CATEGORIES.into_iter().filter(|&c| c != Category::Cpu)
}

pub(super) fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The values every sample carries, as (type, unit): `samples/count`, `cpu/nanoseconds`,
/// `wall/nanoseconds`, then each off-CPU category's nanoseconds. Shared with the OTLP output.
pub(super) fn value_types() -> Vec<(&'static str, &'static str)> {
    let mut types = vec![("samples", "count"), ("cpu", "nanoseconds"), ("wall", "nanoseconds")];
    types.extend(off_cpu_categories().map(|c| (c.name(), "nanoseconds")));
    types
}

/// One stack's values, in [`value_types`] order.
pub(super) fn values(s: &StackProfile, _period_ns: u64) -> Vec<i64> {
    let mut value = vec![clamp(s.samples), 0, clamp(s.weight_ns)];
    value.extend(off_cpu_categories().map(|c| if c == s.category { clamp(s.weight_ns) } else { 0 }));
    // On-CPU stacks weigh their share of the thread's exact on-CPU time (`engine::build`
    // scales them to it), which samples × period only estimates.
    if s.category == Category::Cpu {
        value[1] = clamp(s.weight_ns);
    }
    value
}

/// Nanoseconds one on-CPU sample stands for.
pub(super) fn period_ns(profile: &Profile) -> u64 {
    1_000_000_000 / profile.frequency_hz.max(1) as u64
}

fn build(profile: &Profile) -> proto::Profile {
    let mut b = Builder::new();
    b.out.sample_type = value_types().into_iter().map(|(kind, unit)| b.value_type(kind, unit)).collect();
    let period_ns = period_ns(profile);
    let tasks = profile.shows_task_views();
    if tasks {
        let task_type = b.value_type("tasks", "nanoseconds");
        b.out.sample_type.push(task_type);
    }
    for p in &profile.processes {
        for s in &p.stacks {
            let mut value = values(s, period_ns);
            if tasks {
                value.push(0);
            }
            if value.iter().all(|&v| v == 0) {
                continue;
            }
            let location_id = b.stack(s);
            let mut label = vec![
                b.num_label("pid", p.pid),
                b.num_label("tid", s.tid),
                b.str_label("process", &p.comm),
                b.str_label("thread", &s.thread),
                b.str_label("category", s.category.name()),
            ];
            if let Some(syscall) = &s.syscall {
                label.push(b.str_label("syscall", syscall));
            }
            if let Some(target) = &s.target {
                label.push(b.str_label("target", target));
            }
            b.push_container_labels(&mut label, p.container.as_ref());
            b.out.sample.push(proto::Sample { location_id, value, label });
        }
        if !tasks {
            continue;
        }
        for t in p.tasks.iter().filter(|t| t.weight_ns > 0) {
            let mut value = vec![0; b.out.sample_type.len()];
            *value.last_mut().unwrap() = clamp(t.weight_ns);
            let location_id = b.task_stack(t);
            let mut label = vec![
                b.num_label("pid", p.pid),
                b.str_label("process", &p.comm),
                b.str_label("task", &t.task),
                b.str_label("task_state", &t.state),
            ];
            if let Some(target) = &t.target {
                label.push(b.str_label("task_target", target));
            }
            b.push_container_labels(&mut label, p.container.as_ref());
            b.out.sample.push(proto::Sample { location_id, value, label });
        }
    }
    b.out.period_type = Some(b.value_type("cpu", "nanoseconds"));
    b.out.period = clamp(period_ns);
    b.out.time_nanos = (profile.start_time_unix * 1e9) as i64;
    b.out.duration_nanos = clamp(profile.duration_ns);
    b.out.default_sample_type = b.string(match profile.mode {
        Mode::Wall => "wall",
        Mode::Cpu => "cpu",
    });
    let mut comments = vec![
        format!("pyebpf {}", env!("CARGO_PKG_VERSION")),
        format!(
            "{} samples at {} Hz on {} CPUs, {} lost",
            profile.samples, profile.frequency_hz, profile.cpus, profile.lost_events
        ),
    ];
    if profile.off_cpu {
        comments
            .push(format!("off-CPU waits of at least {} us carry their stack", profile.off_cpu_threshold_ns / 1000));
    }
    b.out.comment = comments.iter().map(|c| b.string(c)).collect();
    b.out
}

pub fn write(profile: &Profile, w: &mut dyn Write) -> anyhow::Result<()> {
    let mut gz = GzEncoder::new(w, Compression::default());
    gz.write_all(&build(profile).encode_to_vec())?;
    gz.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::model::profile::tests::sample_profile;

    /// Writes the profile and reads it back the way a consumer does: gunzip, then decode.
    fn round_trip(mode: Mode) -> proto::Profile {
        let mut out = Vec::new();
        write(&sample_profile(mode), &mut out).unwrap();
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(out.as_slice()).read_to_end(&mut bytes).unwrap();
        proto::Profile::decode(bytes.as_slice()).unwrap()
    }

    fn s(p: &proto::Profile, id: i64) -> &str {
        &p.string_table[id as usize]
    }

    /// A sample's frames, leaf first, as `name` or `name file:line (start)` for Python frames.
    fn frames(p: &proto::Profile, sample: &proto::Sample) -> Vec<String> {
        sample
            .location_id
            .iter()
            .map(|&id| {
                let loc = &p.location[id as usize - 1];
                assert_eq!(loc.id, id);
                let line = &loc.line[0];
                let f = &p.function[line.function_id as usize - 1];
                assert_eq!(f.id, line.function_id);
                match s(p, f.filename) {
                    "" => s(p, f.name).to_string(),
                    file => format!("{} {}:{} ({})", s(p, f.name), file, line.line, f.start_line),
                }
            })
            .collect()
    }

    fn labels(p: &proto::Profile, sample: &proto::Sample) -> Vec<String> {
        sample
            .label
            .iter()
            .map(|l| {
                if l.str != 0 {
                    format!("{}={}", s(p, l.key), s(p, l.str))
                } else {
                    format!("{}={}", s(p, l.key), l.num)
                }
            })
            .collect()
    }

    #[test]
    fn header_has_every_category_and_the_mode_as_default() {
        let p = round_trip(Mode::Wall);
        assert_eq!(p.string_table[0], "");
        let types: Vec<String> =
            p.sample_type.iter().map(|t| format!("{}/{}", s(&p, t.r#type), s(&p, t.unit))).collect();
        let mut expected = vec!["samples/count".to_string(), "cpu/nanoseconds".into(), "wall/nanoseconds".into()];
        expected.extend(CATEGORIES[1..].iter().map(|c| format!("{}/nanoseconds", c.name())));
        assert_eq!(types, expected);
        assert_eq!(s(&p, p.default_sample_type), "wall");
        assert_eq!(s(&round_trip(Mode::Cpu), round_trip(Mode::Cpu).default_sample_type), "cpu");
        let period_type = p.period_type.as_ref().unwrap();
        assert_eq!((s(&p, period_type.r#type), s(&p, period_type.unit), p.period), ("cpu", "nanoseconds", 10_000_000));
        assert_eq!((p.time_nanos, p.duration_nanos), (1_700_000_000_500_000_000, 2_000_000_000));
        assert!(p.comment.iter().any(|&c| s(&p, c).starts_with("pyebpf ")));
    }

    #[test]
    fn processes_in_a_container_carry_its_labels() {
        let mut profile = sample_profile(Mode::Wall);
        profile.processes[0].container = Some(Container {
            id: Some("ab".repeat(32)),
            runtime: Some("docker".into()),
            pod_uid: None,
            cgroup: "/system.slice/docker-x.scope".into(),
        });
        let mut out = Vec::new();
        write(&profile, &mut out).unwrap();
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(out.as_slice()).read_to_end(&mut bytes).unwrap();
        let p = proto::Profile::decode(bytes.as_slice()).unwrap();
        let l = labels(&p, &p.sample[0]);
        assert!(l.contains(&format!("container_id={}", "ab".repeat(32))), "{l:?}");
        assert!(l.contains(&"container_runtime=docker".to_string()), "{l:?}");
        assert!(l.contains(&"cgroup=/system.slice/docker-x.scope".to_string()), "{l:?}");
        assert!(!l.iter().any(|x| x.starts_with("pod_uid=")), "{l:?}");
    }

    #[test]
    fn each_stack_is_a_sample_leaf_first_with_its_values_and_labels() {
        let p = round_trip(Mode::Wall);
        assert_eq!(p.sample.len(), 4);
        let index = |name: &str| p.sample_type.iter().position(|t| s(&p, t.r#type) == name).unwrap();
        let (net, sleep) = (index("net"), index("sleep"));

        // On-CPU, with a Python frame: function, file, line and start line survive.
        let cpu = p.sample.iter().find(|x| labels(&p, x).contains(&"tid=11".into()) && x.value[1] > 0).unwrap();
        assert_eq!(frames(&p, cpu), ["a::b;c", "work /srv/app.py:7 (5)", "main"]);
        assert_eq!(&cpu.value[..3], &[3, 30_000_000, 30_000_000]);
        assert!(cpu.value[3..].iter().all(|&v| v == 0));
        assert_eq!(labels(&p, cpu), ["pid=10", "tid=11", "process=app", "thread=main", "category=cpu"]);

        // Off-CPU: the wait frame is the leaf; wall and its category hold the time, cpu none.
        let wait = p.sample.iter().find(|x| x.value[net] > 0).unwrap();
        assert_eq!(frames(&p, wait), ["[net] recvfrom tcp 127.0.0.1:5432", "get", "main"]);
        assert_eq!(&wait.value[..3], &[2, 0, 50_000_000]);
        assert_eq!(wait.value[net], 50_000_000);
        assert_eq!(
            labels(&p, wait),
            [
                "pid=10",
                "tid=11",
                "process=app",
                "thread=main",
                "category=net",
                "syscall=recvfrom",
                "target=tcp 127.0.0.1:5432"
            ]
        );

        // A thread's short waits have only their wait frame.
        let short = p.sample.iter().find(|x| x.value[sleep] > 0).unwrap();
        assert_eq!(frames(&p, short), ["[sleep] short waits (no stack)"]);

        // Frames are shared: `main` is one function and one location for both threads.
        let main = p.function.iter().filter(|f| s(&p, f.name) == "main").count();
        assert_eq!(main, 1);
        assert!(p.function.iter().all(|f| f.system_name == 0));
        // Wall time adds up to the stacks' weights.
        assert_eq!(p.sample.iter().map(|x| x.value[2]).sum::<i64>(), 121_000_000);
    }

    #[test]
    fn wall_mode_adds_task_samples_under_their_own_value() {
        let mut profile = sample_profile(Mode::Wall);
        let frame = |function: &str, line| crate::model::PythonFrame {
            function: function.into(),
            file: "/srv/app.py".into(),
            line: Some(line),
            first_line: 1,
        };
        profile.processes[0].tasks = vec![TaskProfile {
            task: "fetcher".into(),
            frames: vec![frame("handle", 4), frame("fetch", 9)],
            state: "awaiting".into(),
            target: Some("sleep".into()),
            weight_ns: 300_000_000,
            handler_index: None,
        }];
        let decode = |profile: &Profile| {
            let mut out = Vec::new();
            write(profile, &mut out).unwrap();
            let mut bytes = Vec::new();
            flate2::read::GzDecoder::new(out.as_slice()).read_to_end(&mut bytes).unwrap();
            proto::Profile::decode(bytes.as_slice()).unwrap()
        };
        let p = decode(&profile);
        let last = p.sample_type.last().unwrap();
        assert_eq!((s(&p, last.r#type), s(&p, last.unit)), ("tasks", "nanoseconds"));
        let n = p.sample_type.len();
        assert_eq!(p.sample.len(), 5);
        assert!(p.sample.iter().all(|x| x.value.len() == n));
        let task = p.sample.iter().find(|x| x.value[n - 1] > 0).unwrap();
        assert_eq!(frames(&p, task), ["[awaiting] sleep", "fetch /srv/app.py:9 (1)", "handle /srv/app.py:4 (1)"]);
        assert!(task.value[..n - 1].iter().all(|&v| v == 0));
        assert_eq!(task.value[n - 1], 300_000_000);
        assert_eq!(
            labels(&p, task),
            ["pid=10", "process=app", "task=fetcher", "task_state=awaiting", "task_target=sleep"]
        );
        // Wall time is still the threads' alone.
        assert_eq!(p.sample.iter().map(|x| x.value[2]).sum::<i64>(), 121_000_000);
        // CPU mode: no task value, no task samples.
        profile.mode = Mode::Cpu;
        let p = decode(&profile);
        assert_eq!(p.sample.len(), 4);
        assert!(p.sample_type.iter().all(|t| s(&p, t.r#type) != "tasks"));
    }

    #[test]
    fn cpu_mode_keeps_every_value() {
        // The mode picks the default value only; off-CPU samples stay for -sample_index=wall.
        let p = round_trip(Mode::Cpu);
        assert_eq!(p.sample.len(), 4);
        assert_eq!(p.sample.iter().map(|x| x.value[1]).sum::<i64>(), 70_000_000);
    }
}
