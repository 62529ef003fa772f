//! asyncio tasks' wall time: per process, each (task, await chain, state, target) and the time
//! it stood for. JSON `processes[].tasks`; the task views and the summary's "asyncio handlers by
//! wall time" are made from it.
use std::fmt::Write as _;

use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeStruct};

use super::{Mode, Profile, PythonFrame, folded::sanitize};

/// The root frame of a process's task view in flame graphs, beside its threads: the task
/// stacks' weights are wall time per task, so they do not add to the threads' time.
pub const TASKS_ROOT: &str = "[asyncio tasks]";

/// One aggregated task stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskProfile {
    /// The task's name (asyncio's default `Task-123` names become `Task-*`).
    pub task: String,
    /// Root first: awaiting tasks' chains, then the task's own, down to the innermost coroutine.
    pub frames: Vec<PythonFrame>,
    /// `running`, `ready` or `awaiting`.
    pub state: String,
    /// What an awaiting task waits on (`sleep`, `lock`, `task NAME`, ...), when known.
    pub target: Option<String>,
    /// Wall time: snapshots it was seen in, each weighted by the interval it stands for.
    pub weight_ns: u64,
    /// Index in `frames` of its handler when the profiler knew which frames are coroutines
    /// (not written to JSON: read back, the handler is found by [`TaskProfile::handler`]'s rule).
    pub handler_index: Option<usize>,
}

impl TaskProfile {
    /// The handler: the innermost frame of application code (not the standard library's, not
    /// an installed package's), else the innermost frame.
    pub fn handler(&self) -> Option<&PythonFrame> {
        if let Some(frame) = self.handler_index.and_then(|i| self.frames.get(i)) {
            return Some(frame);
        }
        self.frames.iter().rev().find(|f| is_application(&f.file)).or(self.frames.last())
    }

    /// The synthetic leaf of the task views: what the task was doing.
    pub fn leaf(&self) -> String {
        let mut leaf = format!("[{}]", self.state);
        if let Some(target) = &self.target {
            let _ = write!(leaf, " {target}");
        }
        leaf
    }
}

impl Profile {
    /// Does this profile show task views? In wall mode, for processes whose tasks were read
    /// (`--no-tasks` leaves `tasks` empty, and so the views out). CPU mode's outputs hold
    /// on-CPU samples only, and a task's states are wall time.
    pub fn shows_task_views(&self) -> bool {
        self.mode == Mode::Wall && self.processes.iter().any(|p| !p.tasks.is_empty())
    }

    /// Folded lines of the task views, sorted, in µs as wall stacks are:
    /// `process (pid);[asyncio tasks];task;frame;...;[state] target count`. The flame graph
    /// draws them beside the threads' stacks; folded output keeps to the threads' (its lines
    /// add up to the threads' time, which tools summing it rely on).
    pub fn task_folded_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.mode != Mode::Wall {
            return lines;
        }
        for p in &self.processes {
            for t in &p.tasks {
                let count = t.weight_ns / 1000;
                if count == 0 {
                    continue;
                }
                let mut line = format!("{} ({});{TASKS_ROOT};{}", sanitize(&p.comm), p.pid, sanitize(&t.task));
                for f in &t.frames {
                    line.push(';');
                    line.push_str(&sanitize(&f.to_string()));
                }
                let _ = write!(line, ";{} {count}", sanitize(&t.leaf()));
                lines.push(line);
            }
        }
        lines.sort();
        lines
    }
}

/// Adds `other`'s task stacks to `into` (windows merged by the daemon and `top`), heaviest
/// first.
pub fn merge_tasks(into: &mut Vec<TaskProfile>, other: &[TaskProfile]) {
    for t in other {
        match into.iter_mut().find(|x| {
            x.task == t.task
                && x.frames == t.frames
                && x.state == t.state
                && x.target == t.target
                && x.handler_index == t.handler_index
        }) {
            Some(x) => x.weight_ns += t.weight_ns,
            None => into.push(t.clone()),
        }
    }
    into.sort_by_key(|t| std::cmp::Reverse(t.weight_ns));
}

/// Is this file application code: not under a Python installation's library directory (the
/// standard library, `site-packages`, `dist-packages`)?
pub fn is_application(file: &str) -> bool {
    !(file.contains("/lib/python3") || file.contains("/dist-packages/") || file.starts_with('<'))
}

/// On disk: `frames` as text, as stacks write them, and `python_frames` structured.
#[derive(Serialize, Deserialize)]
struct TaskJson {
    task: String,
    frames: Vec<String>,
    python_frames: Vec<PythonFrame>,
    state: String,
    target: Option<String>,
    weight_ns: u64,
}

impl Serialize for TaskProfile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("TaskProfile", 6)?;
        st.serialize_field("task", &self.task)?;
        let text: Vec<String> = self.frames.iter().map(ToString::to_string).collect();
        st.serialize_field("frames", &text)?;
        st.serialize_field("python_frames", &self.frames)?;
        st.serialize_field("state", &self.state)?;
        st.serialize_field("target", &self.target)?;
        st.serialize_field("weight_ns", &self.weight_ns)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for TaskProfile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = TaskJson::deserialize(d)?;
        let _ = j.frames;
        Ok(TaskProfile {
            task: j.task,
            frames: j.python_frames,
            state: j.state,
            target: j.target,
            weight_ns: j.weight_ns,
            handler_index: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: &str) -> PythonFrame {
        PythonFrame { function: function.into(), file: file.into(), line: Some(3), first_line: 1 }
    }

    #[test]
    fn handler_is_the_innermost_application_frame() {
        let t = TaskProfile {
            task: "Task-*".into(),
            frames: vec![
                frame("RequestHandler.start", "/v/lib/python3.11/site-packages/aiohttp/web_protocol.py"),
                frame("slow", "/srv/app.py"),
                frame("sleep", "/usr/lib/python3.11/asyncio/tasks.py"),
            ],
            state: "awaiting".into(),
            target: Some("sleep".into()),
            weight_ns: 5,
            handler_index: None,
        };
        assert_eq!(t.handler().unwrap().function, "slow");
        assert_eq!(t.leaf(), "[awaiting] sleep");
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["frames"][1], "slow (/srv/app.py:3)");
        let back: TaskProfile = serde_json::from_value(json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn task_folded_lines_root_each_process_s_tasks_beside_its_threads() {
        let mut p = crate::model::profile::tests::sample_profile(Mode::Wall);
        p.processes[0].tasks = vec![TaskProfile {
            task: "fetch;er".into(),
            frames: vec![frame("main", "/srv/app.py"), frame("get", "/srv/app.py")],
            state: "awaiting".into(),
            target: Some("tcp 127.0.0.1:80".into()),
            weight_ns: 2_500_000,
            handler_index: None,
        }];
        assert!(p.shows_task_views());
        assert_eq!(
            p.task_folded_lines(),
            [
                "app (10);[asyncio tasks];fetch:er;main (/srv/app.py:3);get (/srv/app.py:3);[awaiting] tcp 127.0.0.1:80 2500"
            ]
        );
        // The threads' folded lines do not change.
        assert!(p.folded_lines().iter().all(|l| !l.contains(TASKS_ROOT)));
        p.mode = Mode::Cpu;
        assert!(!p.shows_task_views());
        assert!(p.task_folded_lines().is_empty());
    }
}
