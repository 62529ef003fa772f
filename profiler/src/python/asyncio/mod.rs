//! asyncio tasks of a CPython process, read from outside: every live task's await chain
//! (named frames, root first, tasks awaited by another under their awaiter), its state and
//! what it waits on. See `reader` for the walk and `layout` for the per-version offsets;
//! `engine/tasks` samples this and weighs it.
pub mod debug_section;
pub mod layout;
pub mod reader;
pub mod transport;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

pub use reader::TaskState;
use reader::{RawTask, Reader, Registries, TaskListHeads, TypeCache, Waiter};

use super::{PyFrame, PythonProcess, Resolved};
use crate::host::memory::PageCache;

/// How often a process whose `asyncio.tasks` is not imported yet is looked at again.
const LOOK_AGAIN_EVERY: Duration = Duration::from_secs(2);
/// Parents followed up from a task (a cycle in garbage ends there).
const MAX_ANCESTORS: usize = 32;

/// One task at one moment, named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSample {
    pub name: String,
    /// Root first: the chains of the tasks awaiting this one (outermost awaiter first), then
    /// its own, from its coroutine to the innermost one it awaits.
    pub frames: Vec<PyFrame>,
    pub state: TaskState,
    /// What it waits on when awaiting: `task NAME`, `gather`, `task group`, `sleep`, `lock`,
    /// `event`, `condition`, `semaphore`, `queue`, `stream`, `future`.
    pub target: Option<String>,
    /// For a `stream` wait: the descriptor of the socket behind it, when its objects say.
    pub fd: Option<i32>,
}

/// What the profiler keeps per process between snapshots.
#[derive(Default)]
pub struct AsyncioState {
    registries: Option<Registries>,
    looked: Option<Instant>,
    /// `sys.modules` as it was when last read without `asyncio.tasks` (see
    /// [`reader::find_registries`]).
    modules_without_tasks: Option<crate::python::thread_names::DictMark>,
    types: TypeCache,
    /// Why this process's tasks are not read (said once), e.g. a 3.14 whose `_AsyncioDebug`
    /// disagrees with the version's task layout.
    refused: Option<String>,
}

impl AsyncioState {
    /// Has `asyncio.tasks` been found in the process?
    pub fn found(&self) -> bool {
        self.registries.is_some()
    }
}

impl PythonProcess {
    /// Can this process's tasks be read (a version with a known task layout)?
    pub fn asyncio_supported(&self) -> bool {
        let v = self.interpreter.version;
        v.major == 3 && layout::for_version(v.minor, v.free_threaded).is_some()
    }

    /// Every live task now; None when asyncio is not imported (looked for again every 2 s) or
    /// the version has no task layout.
    pub fn asyncio_tasks(&mut self, state: &mut AsyncioState) -> Option<Vec<TaskSample>> {
        let v = self.interpreter.version;
        let l = layout::for_version(v.minor, v.free_threaded).filter(|_| v.major == 3)?;
        if state.registries.is_none() {
            if state.looked.is_some_and(|t| t.elapsed() < LOOK_AGAIN_EVERY) {
                return None;
            }
            state.looked = Some(Instant::now());
            state.registries = reader::find_registries(
                &self.mem,
                &self.offsets,
                self.interpreter.runtime_addr,
                &mut state.modules_without_tasks,
            );
            if let Some(registries) = state.registries.as_mut()
                && v.minor >= 14
            {
                // `asyncio.tasks` imports `_asyncio`: its section is mapped by now.
                let pid = self.mem.pid;
                registries.lists = debug_section::AsyncioDebugOffsets::find(pid, &self.interpreter.path);
                match registries.lists {
                    None => log::debug!(
                        "pid {pid}: no {} section: only asyncio's registries are read",
                        debug_section::SECTION
                    ),
                    Some(d) if (d.task_coro, d.task_name) != (l.task_coro as u64, l.task_name as u64) => {
                        state.refused = Some(format!(
                            "pid {pid}: asyncio tasks not read: its {} puts task_coro/task_name at {}/{}, the 3.{} layout at {}/{}",
                            debug_section::SECTION,
                            d.task_coro,
                            d.task_name,
                            v.minor,
                            l.task_coro,
                            l.task_name
                        ));
                        log::warn!("{}", state.refused.as_deref().unwrap_or_default());
                    }
                    Some(_) => {}
                }
            }
        }
        if state.refused.is_some() {
            return None;
        }
        let registries = state.registries.as_ref()?;
        // Every read of this snapshot goes through one page cache (see `PageCache`).
        let snap = PageCache::new(self.mem);
        let heads = match registries.lists {
            Some(debug) => TaskListHeads {
                thread_states: super::thread_states(
                    &snap,
                    &self.offsets,
                    self.interpreter.runtime_addr,
                    debug.tstate_running_task,
                )
                .into_iter()
                .map(|(tstate, _)| tstate)
                .collect(),
                interpreter: crate::python::thread_names::main_interpreter(
                    &snap,
                    &self.offsets,
                    self.interpreter.runtime_addr,
                ),
            },
            None => TaskListHeads::default(),
        };
        let mut reader = Reader { mem: &snap, o: &self.offsets, l, types: &mut state.types };
        let mut raw: Vec<RawTask> = reader::read_tasks(&mut reader, registries, &heads);
        // A running task's coroutines are executing: their frames are on the thread's stack,
        // above the task's coroutine frame, with the functions they call.
        if raw.iter().any(|t| t.state == TaskState::Running) {
            let stacks = self.thread_stacks(&mut reader);
            for task in raw.iter_mut().filter(|t| t.state == TaskState::Running) {
                let Some(frame) = task.coro_frame else { continue };
                for stack in &stacks {
                    if let Some(at) = stack.iter().position(|(addr, _)| *addr == frame) {
                        task.chain = stack[..=at].iter().rev().map(|(_, rec)| *rec).collect();
                        break;
                    }
                }
            }
        }
        // Task groups: the parent waits in `TaskGroup.__aexit__`, whose `self._tasks` are the
        // children (3.11+; its `self` is the frame's first local).
        let mut group_children: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut chains = Vec::with_capacity(raw.len());
        for task in &raw {
            let frames: Vec<PyFrame> = task
                .chain
                .iter()
                .filter_map(|rec| match self.resolve(rec) {
                    Resolved::Frame(f) => Some(f),
                    _ => None,
                })
                .collect();
            chains.push(frames);
        }
        let mut reader = Reader { mem: &snap, o: &self.offsets, l, types: &mut state.types };
        let mut fds: HashMap<u64, i32> = HashMap::new();
        // Before 3.11 a frame names its function, not its class: which lock it is comes from
        // the type of the method's `self`.
        let mut sync_kinds: HashMap<u64, &'static str> = HashMap::new();
        for (task, frames) in raw.iter().zip(&chains) {
            let (Some(inner), Some(this)) = (frames.last(), task.innermost_self) else { continue };
            // 3.14 moved the wait into `TaskGroup._aexit`, called by `__aexit__`.
            if inner.function.ends_with("TaskGroup.__aexit__") || inner.function.ends_with("TaskGroup._aexit") {
                group_children.insert(task.addr, reader.task_set_attribute(this, "_tasks"));
                continue;
            }
            if task.state != TaskState::Awaiting {
                continue;
            }
            match stdlib_wait(&inner.function, &inner.file) {
                Some("stream") => {
                    if let Some(fd) = reader.socket_fd(this) {
                        fds.insert(task.addr, fd);
                    }
                }
                Some(_) if inner.file.ends_with("asyncio/locks.py") && !inner.function.contains('.') => {
                    if let Some(kind) = reader.type_name(this).and_then(sync_kind) {
                        sync_kinds.insert(task.addr, kind);
                    }
                }
                _ => {}
            }
        }
        log::trace!("pid {}: asyncio snapshot read {} pages", self.mem.pid, snap.pages());
        let names: HashMap<u64, String> = raw.iter().map(|t| (t.addr, t.name.clone())).collect();
        // child → the task awaiting it.
        let mut parent: HashMap<u64, u64> = HashMap::new();
        for task in &raw {
            let children: &[u64] = match &task.waiter {
                Waiter::Task(child) => std::slice::from_ref(child),
                Waiter::Gather(children) => children,
                _ => group_children.get(&task.addr).map(Vec::as_slice).unwrap_or_default(),
            };
            for &child in children {
                if child != task.addr {
                    parent.entry(child).or_insert(task.addr);
                }
            }
        }
        let index: HashMap<u64, usize> = raw.iter().enumerate().map(|(i, t)| (t.addr, i)).collect();
        let samples = raw
            .drain(..)
            .enumerate()
            .map(|(i, task)| {
                let mut ancestors = Vec::new();
                let mut seen = HashSet::from([task.addr]);
                let mut at = task.addr;
                while let Some(&up) = parent.get(&at) {
                    if ancestors.len() >= MAX_ANCESTORS || !seen.insert(up) {
                        break;
                    }
                    ancestors.push(up);
                    at = up;
                }
                let mut frames = Vec::new();
                for up in ancestors.iter().rev() {
                    if let Some(&j) = index.get(up) {
                        frames.extend(chains[j].iter().cloned());
                    }
                }
                frames.extend(chains[i].iter().cloned());
                let target = (task.state == TaskState::Awaiting).then(|| match sync_kinds.get(&task.addr) {
                    Some(kind) => kind.to_string(),
                    None => target(&task.waiter, chains[i].last(), &names, group_children.contains_key(&task.addr)),
                });
                let fd = fds.get(&task.addr).copied();
                TaskSample { name: task.name, frames, state: task.state, target, fd }
            })
            .collect();
        Some(samples)
    }
}

impl PythonProcess {
    /// Every thread's Python frames, innermost first, with their addresses.
    fn thread_stacks<M: crate::host::memory::ReadMemory>(
        &self,
        reader: &mut Reader<'_, M>,
    ) -> Vec<Vec<(u64, profiler_common::PyFrameRecord)>> {
        let o = &self.offsets;
        let Ok(key) = u64::try_from(o.tstate_frame) else { return Vec::new() };
        super::thread_states(reader.mem, o, self.interpreter.runtime_addr, key)
            .into_iter()
            .filter_map(|(_, frame)| {
                // 3.11–3.12: the thread state points to a `_PyCFrame`, which points to the frame.
                if o.cframe_current_frame >= 0 {
                    reader.mem.u64(frame.checked_add(o.cframe_current_frame as u64)?)
                } else {
                    Some(frame)
                }
            })
            .filter(|&frame| frame != 0)
            .map(|frame| reader.thread_frames(frame))
            .collect()
    }
}

/// What an awaiting task waits on, from the future it waits on and its innermost coroutine.
fn target(waiter: &Waiter, innermost: Option<&PyFrame>, names: &HashMap<u64, String>, group: bool) -> String {
    match waiter {
        Waiter::Task(t) => {
            return format!("task {}", names.get(t).map_or("[unknown]", |name| aggregate_name(name)));
        }
        Waiter::Gather(_) => return "gather".to_string(),
        _ if group => return "task group".to_string(),
        _ => {}
    }
    innermost.and_then(|f| stdlib_wait(&f.function, &f.file)).unwrap_or("future").to_string()
}

/// The kind of an asyncio synchronization primitive, by its class name.
fn sync_kind(class: &str) -> Option<&'static str> {
    ["Event", "Condition", "Semaphore", "Lock"]
        .iter()
        .zip(["event", "condition", "semaphore", "lock"])
        .find(|(c, _)| class.contains(*c))
        .map(|(_, kind)| kind)
}

/// The kind of wait asyncio's own coroutines stand for (by function and file).
fn stdlib_wait(function: &str, file: &str) -> Option<&'static str> {
    let in_asyncio = |module: &str| file.ends_with(&format!("asyncio/{module}"));
    // Qualified names from 3.11; `co_name` alone before.
    let name = function.rsplit('.').next().unwrap_or(function);
    if in_asyncio("tasks.py") && name == "sleep" {
        Some("sleep")
    } else if in_asyncio("locks.py") {
        Some(if function.contains("Event") {
            "event"
        } else if function.contains("Condition") {
            "condition"
        } else if function.contains("Semaphore") {
            "semaphore"
        } else {
            "lock"
        })
    } else if in_asyncio("queues.py") {
        Some("queue")
    } else if in_asyncio("streams.py") || file.ends_with("aiohttp/streams.py") {
        Some("stream")
    } else {
        None
    }
}

/// A task name for aggregation: asyncio's default names (`Task-123`) only count tasks, and
/// would make every request's task a stack of its own; they become `Task-*`.
pub fn aggregate_name(name: &str) -> &str {
    match name.strip_prefix("Task-") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => "Task-*",
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_aggregate() {
        assert_eq!(aggregate_name("Task-17"), "Task-*");
        assert_eq!(aggregate_name("Task-"), "Task-");
        assert_eq!(aggregate_name("fetcher"), "fetcher");
    }

    #[test]
    fn stdlib_waits_are_named() {
        let f = "/usr/lib/python3.11/asyncio/locks.py";
        assert_eq!(stdlib_wait("Event.wait", f), Some("event"));
        assert_eq!(stdlib_wait("Lock.acquire", f), Some("lock"));
        assert_eq!(stdlib_wait("sleep", "/x/lib/python3.8/asyncio/tasks.py"), Some("sleep"));
        assert_eq!(stdlib_wait("Queue.get", "/x/asyncio/queues.py"), Some("queue"));
        assert_eq!(stdlib_wait("handler", "/srv/app.py"), None);
        assert_eq!(sync_kind("BoundedSemaphore"), Some("semaphore"));
        assert_eq!(sync_kind("Event"), Some("event"));
        assert_eq!(sync_kind("dict"), None);
    }
}
