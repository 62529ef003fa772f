//! speedscope's file format (its schema ships in the `speedscope` npm package as
//! `dist/release/file-format-schema.json`): one `sampled` profile per thread, all sharing one
//! frame table, so speedscope's thread picker lists every thread of every process.
//!
//! Weights are nanoseconds in both modes, so a thread's profiles compare across files:
//! - `wall`: every stack, off-CPU ones ending in the frame naming their wait
//!   (`[net] recvfrom tcp 127.0.0.1:5432`), weighing the time they stand for;
//! - `cpu`: on-CPU stacks only, weighing their share of the thread's exact on-CPU time.
//!
//! This is what folded stacks hold in each mode (there, wall is in µs and cpu in samples).
use std::{collections::HashMap, io::Write};

use serde::Serialize;

use crate::model::{Category, Frame as StackFrame, Mode, ProcessProfile, Profile, StackProfile, TaskProfile};

/// The schema's required `$schema` value.
const SCHEMA: &str = "https://www.speedscope.app/file-format-schema.json";

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(rename = "$schema")]
    schema: &'static str,
    exporter: String,
    name: String,
    /// The profile speedscope opens first: the thread with the most CPU time.
    #[serde(skip_serializing_if = "Option::is_none")]
    active_profile_index: Option<usize>,
    shared: Shared,
    profiles: Vec<SampledProfile>,
}

#[derive(Debug, Serialize)]
struct Shared {
    frames: Vec<Frame>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
struct Frame {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<i32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SampledProfile {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    unit: &'static str,
    start_value: u64,
    end_value: u64,
    /// Stacks as indices into `shared.frames`, root first.
    samples: Vec<Vec<usize>>,
    weights: Vec<u64>,
}

/// Interns frames into the shared table.
#[derive(Default)]
struct Frames {
    table: Vec<Frame>,
    index: HashMap<Frame, usize>,
}

impl Frames {
    fn id(&mut self, frame: Frame) -> usize {
        if let Some(&id) = self.index.get(&frame) {
            return id;
        }
        self.table.push(frame.clone());
        self.index.insert(frame, self.table.len() - 1);
        self.table.len() - 1
    }

    /// A stack's frame ids, root first, with the wait frame as leaf for off-CPU stacks.
    fn stack(&mut self, s: &StackProfile) -> Vec<usize> {
        s.frames_with_wait()
            .map(|f| match &*f {
                // Python frames keep their source position: speedscope shows it on hover.
                StackFrame::Python(p) => Frame { name: p.function.clone(), file: Some(p.file.clone()), line: p.line },
                other => Frame { name: other.to_string(), file: None, line: None },
            })
            .map(|f| self.id(f))
            .collect()
    }

    /// A task stack's frame ids, root first: the task's name, its await chain, the state leaf.
    fn task_stack(&mut self, t: &TaskProfile) -> Vec<usize> {
        let name = Frame { name: t.task.clone(), file: None, line: None };
        let chain =
            t.frames.iter().map(|p| Frame { name: p.function.clone(), file: Some(p.file.clone()), line: p.line });
        let leaf = Frame { name: t.leaf(), file: None, line: None };
        std::iter::once(name).chain(chain).chain(std::iter::once(leaf)).map(|f| self.id(f)).collect()
    }
}

/// A process's task view (wall mode): one profile of its tasks' stacks, weighing the wall
/// time each stood for, so it sums to task time, not thread time.
fn task_profile(frames: &mut Frames, p: &ProcessProfile) -> Option<SampledProfile> {
    let mut tasks: Vec<&TaskProfile> = p.tasks.iter().filter(|t| t.weight_ns > 0).collect();
    if tasks.is_empty() {
        return None;
    }
    tasks.sort_by_cached_key(|t| {
        (t.task.clone(), t.frames.iter().map(ToString::to_string).collect::<Vec<_>>(), t.leaf())
    });
    let samples = tasks.iter().map(|t| frames.task_stack(t)).collect();
    let weights: Vec<u64> = tasks.iter().map(|t| t.weight_ns).collect();
    Some(SampledProfile {
        kind: "sampled",
        name: format!("{} ({}) / asyncio tasks", p.comm, p.pid),
        unit: "nanoseconds",
        start_value: 0,
        end_value: weights.iter().sum(),
        samples,
        weights,
    })
}

/// What a stack weighs in this mode (nanoseconds), or None when it is left out.
fn weight(profile: &Profile, s: &StackProfile) -> Option<u64> {
    let ns = match profile.mode {
        Mode::Cpu if s.category == Category::Cpu => s.weight_ns,
        Mode::Cpu => return None,
        Mode::Wall => s.weight_ns,
    };
    (ns > 0).then_some(ns)
}

fn build(profile: &Profile) -> File {
    let mut frames = Frames::default();
    let mut profiles = Vec::new();
    // Per profile: its on-CPU nanoseconds.
    let mut on_cpu = Vec::new();
    for p in &profile.processes {
        // Threads in the process's order (busiest first); a thread with no stack to show has
        // no profile.
        let mut tids: Vec<u32> = p.threads.iter().map(|t| t.tid).collect();
        let mut extra: Vec<u32> = p.stacks.iter().map(|s| s.tid).filter(|t| !tids.contains(t)).collect();
        extra.sort_unstable();
        extra.dedup();
        tids.extend(extra);
        for tid in tids {
            let mut stacks: Vec<(&StackProfile, u64)> =
                p.stacks.iter().filter(|s| s.tid == tid).filter_map(|s| Some((s, weight(profile, s)?))).collect();
            let Some(thread) = stacks.first().map(|(s, _)| s.thread.clone()) else { continue };
            // Root-first order groups shared prefixes in speedscope's time-ordered view, as in
            // the sorted folded output.
            let text = |s: &StackProfile| {
                let frames: Vec<String> = s.frames.iter().map(StackFrame::to_string).collect();
                (frames, s.wait_frame().map(|f| f.to_string()))
            };
            stacks.sort_by_cached_key(|(s, _)| text(s));
            let samples: Vec<Vec<usize>> = stacks.iter().map(|(s, _)| frames.stack(s)).collect();
            let weights: Vec<u64> = stacks.iter().map(|&(_, w)| w).collect();
            on_cpu.push(stacks.iter().filter(|(s, _)| s.category == Category::Cpu).map(|&(_, w)| w).sum::<u64>());
            profiles.push(SampledProfile {
                kind: "sampled",
                name: format!("{} ({}) / {} ({})", p.comm, p.pid, thread, tid),
                unit: "nanoseconds",
                start_value: 0,
                end_value: weights.iter().sum(),
                samples,
                weights,
            });
        }
    }
    // Opened first: the thread with the most CPU time (in wall mode every thread that lived
    // through the profile weighs about the same), then the heaviest. max_by_key keeps the last
    // maximum; reversed, the first wins.
    let busiest = profiles
        .iter()
        .zip(&on_cpu)
        .enumerate()
        .rev()
        .max_by_key(|(_, (pr, cpu))| (**cpu, pr.end_value))
        .map(|(i, _)| i);
    // Task views come after every thread's profile and are never the one opened first.
    if profile.shows_task_views() {
        profiles.extend(profile.processes.iter().filter_map(|p| task_profile(&mut frames, p)));
    }
    let what = match profile.mode {
        Mode::Wall => "wall clock (on- and off-CPU)",
        Mode::Cpu => "on-CPU",
    };
    File {
        schema: SCHEMA,
        exporter: format!("pyebpf {}", env!("CARGO_PKG_VERSION")),
        name: format!("pyebpf: {what}, {:.1} s at {} Hz", profile.duration_ns as f64 / 1e9, profile.frequency_hz),
        active_profile_index: busiest,
        shared: Shared { frames: frames.table },
        profiles,
    }
}

pub fn write(profile: &Profile, w: &mut dyn Write) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *w, &build(profile))?;
    w.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::model::profile::tests::sample_profile;

    fn render(mode: Mode) -> Value {
        let mut out = Vec::new();
        write(&sample_profile(mode), &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    /// Frame names of every stack of a profile, root first, with its weight.
    fn stacks(file: &Value, profile: usize) -> Vec<(Vec<String>, u64)> {
        let frames = file["shared"]["frames"].as_array().unwrap();
        let p = &file["profiles"][profile];
        p["samples"]
            .as_array()
            .unwrap()
            .iter()
            .zip(p["weights"].as_array().unwrap())
            .map(|(s, w)| {
                let names = s
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| frames[i.as_u64().unwrap() as usize]["name"].as_str().unwrap().to_string());
                (names.collect(), w.as_u64().unwrap())
            })
            .collect()
    }

    #[test]
    fn wall_mode_has_one_profile_per_thread_in_nanoseconds_with_wait_leaves() {
        let f = render(Mode::Wall);
        assert_eq!(f["$schema"], SCHEMA);
        assert!(f["exporter"].as_str().unwrap().starts_with("pyebpf "));
        let names: Vec<&str> = f["profiles"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["app (10) / main (11)", "app (10) / worker (12)"]);
        // worker's 40 ms on CPU beat main's 30 ms (though main waited longer).
        assert_eq!(f["activeProfileIndex"], 1);
        let main = &f["profiles"][0];
        assert_eq!((main["type"].as_str(), main["unit"].as_str()), (Some("sampled"), Some("nanoseconds")));
        assert_eq!((main["startValue"].as_u64(), main["endValue"].as_u64()), (Some(0), Some(80_000_000)));
        assert_eq!(
            stacks(&f, 0),
            vec![
                (vec!["main".into(), "get".into(), "[net] recvfrom tcp 127.0.0.1:5432".into()], 50_000_000),
                (vec!["main".into(), "work".into(), "a::b;c".into()], 30_000_000),
            ]
        );
        // A thread's time no stack carries is a stack of its wait frame alone.
        assert_eq!(
            stacks(&f, 1),
            vec![
                (vec!["[sleep] short waits (no stack)".into()], 1_000_000),
                (vec!["main".into(), "spin".into()], 40_000_000)
            ]
        );
        // Python frames keep their file and line; other frames are names only.
        let frames = f["shared"]["frames"].as_array().unwrap();
        assert!(frames.contains(&json!({"name": "work", "file": "/srv/app.py", "line": 7})));
        assert!(frames.contains(&json!({"name": "a::b;c"})));
        // One shared table: `main` is one frame for both threads.
        assert_eq!(frames.iter().filter(|fr| fr["name"] == "main").count(), 1);
    }

    #[test]
    fn cpu_mode_weighs_on_cpu_samples_by_the_period() {
        let f = render(Mode::Cpu);
        // 3 samples at 100 Hz = 30 ms; the off-CPU stack is left out.
        assert_eq!(stacks(&f, 0), vec![(vec!["main".into(), "work".into(), "a::b;c".into()], 30_000_000)]);
        assert_eq!(f["profiles"][1]["endValue"], 40_000_000);
    }

    #[test]
    fn wall_mode_adds_a_task_profile_per_asyncio_process() {
        let mut p = sample_profile(Mode::Wall);
        let frame = |function: &str| crate::model::PythonFrame {
            function: function.into(),
            file: "/srv/app.py".into(),
            line: Some(9),
            first_line: 8,
        };
        let task = |state: &str, target: Option<&str>, weight_ns| TaskProfile {
            task: "Task-*".into(),
            frames: vec![frame("handle"), frame("fetch")],
            state: state.into(),
            target: target.map(str::to_string),
            weight_ns,
            handler_index: None,
        };
        p.processes[0].tasks = vec![task("awaiting", Some("sleep"), 300_000_000), task("running", None, 20_000_000)];
        let mut out = Vec::new();
        write(&p, &mut out).unwrap();
        let f: Value = serde_json::from_slice(&out).unwrap();
        let names: Vec<&str> = f["profiles"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["app (10) / main (11)", "app (10) / worker (12)", "app (10) / asyncio tasks"]);
        assert_eq!(f["activeProfileIndex"], 1);
        assert_eq!(f["profiles"][2]["endValue"], 320_000_000);
        assert_eq!(
            stacks(&f, 2),
            vec![
                (vec!["Task-*".into(), "handle".into(), "fetch".into(), "[awaiting] sleep".into()], 300_000_000),
                (vec!["Task-*".into(), "handle".into(), "fetch".into(), "[running]".into()], 20_000_000),
            ]
        );
        let frames = f["shared"]["frames"].as_array().unwrap();
        assert!(frames.contains(&json!({"name": "fetch", "file": "/srv/app.py", "line": 9})));
        // CPU mode: no task view.
        p.mode = Mode::Cpu;
        let mut out = Vec::new();
        write(&p, &mut out).unwrap();
        let f: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(f["profiles"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn an_empty_profile_is_still_a_valid_file() {
        let mut p = sample_profile(Mode::Wall);
        p.processes.clear();
        let mut out = Vec::new();
        write(&p, &mut out).unwrap();
        let f: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(f["profiles"], json!([]));
        assert_eq!(f["shared"]["frames"], json!([]));
        assert!(f.get("activeProfileIndex").is_none());
    }
}
