//! What the summary and JSON compute from a process's stacks: its top Python functions and
//! the blocking calls that held up its event loops. Recomputed after windows are merged.
use std::collections::{HashMap, HashSet};

use super::{Category, FunctionProfile, LoopStall, StackProfile, Totals};

/// The top Python functions of a process: inclusive time (a function counts once per stack it
/// is on) and own time (it is the innermost Python frame: its own code, or a call it made into
/// C or the kernel), each with its split by category.
pub fn function_table(stacks: &[StackProfile]) -> Vec<FunctionProfile> {
    #[derive(Default)]
    struct Times {
        total: Totals,
        own: Totals,
    }
    let mut by_function: HashMap<(String, String), Times> = HashMap::new();
    for s in stacks {
        let mut seen = HashSet::new();
        for f in s.python_frames() {
            let key = (f.function.clone(), f.file.clone());
            if seen.insert(key.clone()) {
                by_function.entry(key).or_default().total.add(s.category, s.weight_ns);
            }
        }
        if let Some(f) = s.innermost_python() {
            let key = (f.function.clone(), f.file.clone());
            by_function.entry(key).or_default().own.add(s.category, s.weight_ns);
        }
    }
    let mut table: Vec<FunctionProfile> = by_function
        .into_iter()
        .map(|((function, file), t)| FunctionProfile {
            function,
            file,
            wall_ns: t.total.sum(),
            own_ns: t.own.sum(),
            totals_ns: t.total,
            own_totals_ns: t.own,
        })
        .collect();
    // Keep the heaviest by either measure: wrappers lead by inclusive time, the code that
    // does the work (or the waiting) by own time.
    table.sort_by(|a, b| b.own_ns.cmp(&a.own_ns).then_with(|| a.function.cmp(&b.function)));
    let mut keep: HashSet<(String, String)> =
        table.iter().take(MAX_FUNCTIONS).map(|f| (f.function.clone(), f.file.clone())).collect();
    table.sort_by(|a, b| b.wall_ns.cmp(&a.wall_ns).then_with(|| a.function.cmp(&b.function)));
    keep.extend(table.iter().take(MAX_FUNCTIONS).map(|f| (f.function.clone(), f.file.clone())));
    table.retain(|f| keep.contains(&(f.function.clone(), f.file.clone())));
    table
}

/// Blocking calls that held up an event loop, per (thread, culprit, call), largest first. The
/// run-queue wait after such a call (woken, waiting for a CPU) held the loop up too, and is
/// counted with the call.
pub fn loop_stalls(stacks: &[StackProfile]) -> Vec<LoopStall> {
    let mut by_key: HashMap<(u32, Option<String>, Option<String>), LoopStall> = HashMap::new();
    for s in stacks.iter().filter(|s| s.stalls_loop) {
        let key = (s.tid, s.coroutine.clone(), s.syscall.clone());
        let e = by_key.entry(key).or_insert_with(|| LoopStall {
            tid: s.tid,
            thread: s.thread.clone(),
            coroutine: s.coroutine.clone(),
            syscall: s.syscall.clone(),
            target: None,
            category: Category::Runqueue,
            wall_ns: 0,
            count: 0,
        });
        e.wall_ns += s.weight_ns;
        if s.category != Category::Runqueue {
            // Each call has a blocked part; only the calls that were never woken late lack a
            // run-queue part, so count calls by their blocked parts.
            e.count += s.samples;
            if e.category == Category::Runqueue {
                e.category = s.category;
                e.target = s.target.clone();
            }
        }
    }
    let mut stalls: Vec<LoopStall> = by_key.into_values().collect();
    stalls.sort_by(|a, b| b.wall_ns.cmp(&a.wall_ns).then_with(|| a.tid.cmp(&b.tid)));
    stalls
}

/// Functions listed per process in the JSON: the top ones by inclusive time and by own time.
const MAX_FUNCTIONS: usize = 50;
