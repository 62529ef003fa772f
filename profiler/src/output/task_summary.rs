//! The summary's "asyncio handlers by wall time": per process, each handler (the innermost
//! application frame of a task's await chain) with the wall time its tasks spent in it and
//! how that time split between running, ready (waiting for the loop) and awaiting each target.
use std::{collections::BTreeMap, io::Write};

use crate::model::{Profile, TaskProfile};

const TOP_HANDLERS: usize = 8;
const TOP_PARTS: usize = 4;

/// One handler's time: total, and per part (`running`, `ready`, `awaiting TARGET`).
#[derive(Default, Debug, PartialEq)]
pub struct HandlerTime {
    pub total_ns: u64,
    pub parts: BTreeMap<String, u64>,
}

/// The handlers of one process's tasks, heaviest first, by `function (file)`.
pub fn handlers(tasks: &[TaskProfile]) -> Vec<(String, HandlerTime)> {
    let mut by: BTreeMap<String, HandlerTime> = BTreeMap::new();
    for t in tasks {
        let Some(h) = t.handler() else { continue };
        let entry = by.entry(format!("{} ({})", h.function, h.file)).or_default();
        entry.total_ns += t.weight_ns;
        let part = match (&*t.state, &t.target) {
            ("awaiting", Some(target)) => format!("awaiting {target}"),
            (state, _) => state.to_string(),
        };
        *entry.parts.entry(part).or_default() += t.weight_ns;
    }
    let mut out: Vec<_> = by.into_iter().collect();
    out.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(&b.0)));
    out
}

pub fn write_task_handlers(profile: &Profile, w: &mut dyn Write) -> std::io::Result<()> {
    for p in profile.processes.iter().filter(|p| !p.tasks.is_empty()) {
        writeln!(w)?;
        writeln!(w, "asyncio handlers by wall time, {} ({}):", p.comm, p.pid)?;
        let all = handlers(&p.tasks);
        for (handler, time) in all.iter().take(TOP_HANDLERS) {
            let mut parts: Vec<(&String, &u64)> = time.parts.iter().collect();
            parts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let split: Vec<String> = parts
                .iter()
                .take(TOP_PARTS)
                .map(|(part, ns)| format!("{part} {:.0}%", 100.0 * **ns as f64 / time.total_ns.max(1) as f64))
                .collect();
            writeln!(
                w,
                "  {:>9.2} s  {}",
                time.total_ns as f64 / 1e9,
                super::summary::truncate_with(handler, 90, '…')
            )?;
            writeln!(w, "               {}", split.join("  "))?;
        }
        if all.len() > TOP_HANDLERS {
            writeln!(w, "  … {} more handlers", all.len() - TOP_HANDLERS)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PythonFrame;

    fn task(handler: &str, state: &str, target: Option<&str>, ns: u64) -> TaskProfile {
        TaskProfile {
            task: "Task-*".into(),
            frames: vec![
                PythonFrame { function: handler.into(), file: "/srv/app.py".into(), line: Some(9), first_line: 5 },
                PythonFrame {
                    function: "sleep".into(),
                    file: "/usr/lib/python3.11/asyncio/tasks.py".into(),
                    line: Some(600),
                    first_line: 590,
                },
            ],
            state: state.into(),
            target: target.map(Into::into),
            weight_ns: ns,
            handler_index: None,
        }
    }

    #[test]
    fn handlers_split_their_time() {
        let tasks = [
            task("slow", "awaiting", Some("sleep"), 90),
            task("slow", "running", None, 10),
            task("fast", "ready", None, 5),
        ];
        let h = handlers(&tasks);
        assert_eq!(h[0].0, "slow (/srv/app.py)");
        assert_eq!(h[0].1.total_ns, 100);
        assert_eq!(h[0].1.parts["awaiting sleep"], 90);
        assert_eq!(h[1].1.parts["ready"], 5);
    }
}
