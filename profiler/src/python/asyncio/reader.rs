//! Reads every live asyncio task of a CPython 3.8–3.14 process from outside, without running
//! code in it or pausing it: the tasks, which one each loop is running, each task's await
//! chain (frame records, resolved later like the kernel's) and what its innermost coroutine
//! waits on.
//!
//! The registries are asyncio's own, reached as Python objects from `sys.modules`:
//! `asyncio.tasks._all_tasks` (a `WeakSet`, 3.8–3.11), `_scheduled_tasks` (`WeakSet`) and
//! `_eager_tasks` (`set`, 3.12–3.13), and `_current_tasks` (dict loop → running task). Both the
//! C `_asyncio` module and the pure-Python fallback publish them there, and any loop (asyncio's,
//! uvloop's) registers its tasks in them. Their addresses are found once per process; each
//! snapshot then reads the sets' tables, the tasks, and each coroutine with its frame.
//!
//! From 3.14 the C module keeps native tasks out of those registries: each is a node of a
//! linked list headed in its thread's state (the interpreter's for tasks of finished threads),
//! and the task a thread runs is in its state too; `debug_section` says where. Those lists are
//! walked with the same bounds (a node count, a seen set: a cycle or a wild pointer ends the
//! list).
//!
//! Every read is bounded (table sizes, chain depth, task count) and every object is
//! type-checked by its type's `tp_name` before its fields are trusted; a garbage pointer ends
//! that part of the walk, never the snapshot.
use std::collections::{HashMap, HashSet};

use profiler_common::PyFrameRecord;

use super::debug_section::AsyncioDebugOffsets;
use super::layout::{AsyncioLayout, SET_ENTRY_SIZE, STATE_PENDING};
use crate::host::memory::{ReadMemory, field_i32, field_u64};
use crate::python::offsets::PyOffsets;
use crate::python::thread_names::{
    DictMark, attribute_items, dict_items, dict_lookup, dict_mark, find_str_keys, read_int, read_ptr, read_str,
};

/// Tasks read per snapshot at most (a leak of millions must not stall the profiler).
pub const MAX_TASKS: usize = 20_000;
/// Coroutines followed down one await chain.
const MAX_CHAIN: usize = 64;
/// Largest set table copied (slots).
const MAX_SET_SLOTS: u64 = 1 << 17;
/// Children read from a gather or a task group.
const MAX_CHILDREN: usize = 4096;
/// Frame stack slots we believe a suspended coroutine has.
const MAX_STACK_SLOTS: i64 = 1 << 16;

/// What a task's innermost coroutine waits on, as far as the objects say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiter {
    /// Nothing (running, or scheduled to run).
    None,
    /// Another task.
    Task(u64),
    /// `asyncio.gather`'s future, with the tasks it gathers.
    Gather(Vec<u64>),
    /// Some other future.
    Future,
}

/// A task's state (the three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskState {
    /// Its loop is running its step.
    Running,
    /// Its step is scheduled: it waits for the loop (not for a future).
    Ready,
    /// Suspended on a future that is not done.
    Awaiting,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Ready => "ready",
            TaskState::Awaiting => "awaiting",
        }
    }
}

/// One task as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawTask {
    pub addr: u64,
    pub name: String,
    pub state: TaskState,
    /// The task's coroutine first, then each coroutine it awaits.
    pub chain: Vec<PyFrameRecord>,
    pub waiter: Waiter,
    /// 3.11+: the innermost coroutine's first local (`self` of a method), for waits whose
    /// owner only that object knows (a `TaskGroup`'s tasks).
    pub innermost_self: Option<u64>,
    /// Address of the task's coroutine's frame: a running task's frames are found on its
    /// thread's frame stack above it.
    pub coro_frame: Option<u64>,
}

/// Frames walked down a thread's stack looking for a running coroutine's frame.
const MAX_THREAD_FRAMES: usize = 256;

/// Where a process keeps its task registries; found once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registries {
    /// Sets of weak references to tasks (`WeakSet.data`).
    pub weak_sets: Vec<u64>,
    /// Sets of tasks (`_eager_tasks`).
    pub sets: Vec<u64>,
    /// `_current_tasks`: loop → running task.
    pub current: Option<u64>,
    /// 3.14+: where the per-thread task lists are (the process's `_AsyncioDebug`).
    pub lists: Option<AsyncioDebugOffsets>,
}

/// Where a 3.14+ snapshot finds native tasks: every thread state (with its list head and
/// running task) and the interpreter (its list of tasks whose thread has finished).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskListHeads {
    pub thread_states: Vec<u64>,
    pub interpreter: Option<u64>,
}

/// Reads the live tasks of a snapshot: every registry and (3.14+) list, which task each loop
/// or thread runs, and each pending task. This is the whole walk of untrusted memory the
/// fuzzer drives (`fuzz/fuzz_targets/asyncio_tasks.rs`).
pub fn read_tasks<M: ReadMemory>(reader: &mut Reader<'_, M>, reg: &Registries, heads: &TaskListHeads) -> Vec<RawTask> {
    let mut running = reader.running(reg);
    let mut addresses = reader.task_addresses(reg);
    if let Some(debug) = &reg.lists {
        running.extend(reader.running_in_threads(debug, &heads.thread_states));
        let mut seen: HashSet<u64> = addresses.iter().copied().collect();
        let list_heads = heads
            .thread_states
            .iter()
            .filter_map(|t| t.checked_add(debug.tstate_tasks_head))
            .chain(heads.interpreter.and_then(|i| i.checked_add(debug.interp_tasks_head)));
        for head in list_heads {
            reader.listed_tasks(debug, head, &mut addresses, &mut seen);
        }
    }
    let found = addresses.len();
    let raw: Vec<RawTask> = addresses.into_iter().filter_map(|t| reader.task(t, &running)).collect();
    log::trace!("asyncio: {found} task addresses, {} tasks", raw.len());
    raw
}

/// Finds asyncio's registries; None while `asyncio.tasks` is not imported.
///
/// `absent_at` is `sys.modules`' mark when it was last read whole without `asyncio.tasks`:
/// while the mark is the same no module was added, so the look-up (one read per key: ~50
/// for a plain interpreter, every 2 s per process) is not made again. The mark is taken
/// before the look-up, so a module added meanwhile changes the next one.
pub fn find_registries(
    mem: &impl ReadMemory,
    o: &PyOffsets,
    runtime_addr: u64,
    absent_at: &mut Option<DictMark>,
) -> Option<Registries> {
    let interp = crate::python::thread_names::main_interpreter(mem, o, runtime_addr)?;
    let modules = read_ptr(mem, interp, o.interp_modules)?;
    let mark = dict_mark(mem, o, modules);
    if mark.is_some() && mark == *absent_at {
        return None;
    }
    let [tasks] = dict_lookup(mem, o, modules, ["asyncio.tasks"])?;
    let Some(tasks) = tasks else {
        *absent_at = mark;
        return None;
    };
    let globals = read_ptr(mem, tasks, o.module_dict)?;
    let [all, scheduled, eager, current] =
        dict_lookup(mem, o, globals, ["_all_tasks", "_scheduled_tasks", "_eager_tasks", "_current_tasks"])?;
    let mut found = Registries { current, ..Registries::default() };
    for weak_set in [all, scheduled].into_iter().flatten() {
        let attributes = attribute_items(mem, o, weak_set)?;
        let [data] = find_str_keys(mem, o, &attributes, ["data"]);
        found.weak_sets.push(data?);
    }
    found.sets.extend(eager);
    (!found.weak_sets.is_empty()).then_some(found)
}

/// The keys of a set, dummies and all (callers type-check what they get).
pub fn set_keys(mem: &impl ReadMemory, l: &AsyncioLayout, set: u64) -> Option<Vec<u64>> {
    let mask = mem.u64(set.checked_add(l.set_mask())?)?;
    let slots = mask.checked_add(1).filter(|s| s.is_power_of_two() && *s <= MAX_SET_SLOTS)?;
    let table = mem.u64(set.checked_add(l.set_table())?)?;
    let raw = mem.bytes(table, slots as usize * SET_ENTRY_SIZE)?;
    Some(raw.chunks_exact(SET_ENTRY_SIZE).filter_map(|e| field_u64(e, 0)).filter(|&k| k != 0).collect())
}

/// A list's items (bounded).
fn list_items(mem: &impl ReadMemory, l: &AsyncioLayout, list: u64, max: usize) -> Option<Vec<u64>> {
    let len = usize::try_from(mem.u64(list.checked_add(l.list_size())?)? as i64).ok()?.min(max);
    let items = mem.u64(list.checked_add(l.list_items())?)?;
    let raw = mem.bytes(items, len * 8)?;
    Some(raw.chunks_exact(8).filter_map(|c| field_u64(c, 0)).filter(|&p| p != 0).collect())
}

/// Reads objects with one process's layouts, caching what never changes (type names).
pub struct Reader<'a, M: ReadMemory> {
    pub mem: &'a M,
    pub o: &'a PyOffsets,
    pub l: &'a AsyncioLayout,
    /// What never changes about a type.
    pub types: &'a mut TypeCache,
}

/// What the reader learnt about a process's types, kept between snapshots. Bounded: heap types
/// come and go (a stale entry is caught by the checks on what it leads to).
#[derive(Debug, Default)]
pub struct TypeCache {
    /// type address → `tp_name`.
    names: HashMap<u64, String>,
    /// (type address, member name) → the member's offset in instances, None when the type has
    /// no such slot.
    pub(super) slots: HashMap<(u64, String), Option<u64>>,
}

/// Entries of each `TypeCache` map at most.
const MAX_CACHED_TYPES: usize = 4096;

impl TypeCache {
    pub(super) fn remember_slot(&mut self, key: (u64, String), offset: Option<u64>) {
        if self.slots.len() >= MAX_CACHED_TYPES {
            self.slots.clear();
        }
        self.slots.insert(key, offset);
    }
}

impl<M: ReadMemory> Reader<'_, M> {
    /// The `tp_name` of `obj`'s type.
    pub fn type_name(&mut self, obj: u64) -> Option<&str> {
        let ty = read_ptr(self.mem, obj, self.o.object_type)?;
        if !self.types.names.contains_key(&ty) {
            let name_ptr = read_ptr(self.mem, ty, self.o.type_name)?;
            let name = self.mem.c_string(name_ptr, 128)?;
            if self.types.names.len() >= MAX_CACHED_TYPES {
                self.types.names.clear();
            }
            self.types.names.insert(ty, name);
        }
        self.types.names.get(&ty).map(String::as_str)
    }

    fn is_task(&mut self, obj: u64) -> bool {
        self.type_name(obj).is_some_and(|n| n == "_asyncio.Task")
    }

    /// Every live task: the weak sets' referents and the eager set's members, each once.
    pub fn task_addresses(&mut self, reg: &Registries) -> Vec<u64> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for &set in &reg.weak_sets {
            for weak in set_keys(self.mem, self.l, set).unwrap_or_default() {
                let Some(task) = read_ptr(self.mem, weak, self.l.weakref_object) else { continue };
                if out.len() < MAX_TASKS && seen.insert(task) {
                    out.push(task);
                }
            }
        }
        for &set in &reg.sets {
            for task in set_keys(self.mem, self.l, set).unwrap_or_default() {
                if out.len() < MAX_TASKS && seen.insert(task) {
                    out.push(task);
                }
            }
        }
        out
    }

    /// 3.14+: the tasks of one list (`llist_node`s from `head`, each a task's `task_node`),
    /// added to `out` when not `seen`; a cycle or a wild pointer ends the list.
    pub fn listed_tasks(
        &mut self,
        debug: &AsyncioDebugOffsets,
        head: u64,
        out: &mut Vec<u64>,
        seen: &mut HashSet<u64>,
    ) {
        let mut nodes = HashSet::new();
        let mut node = self.mem.u64(head).unwrap_or(0);
        // An empty list points to itself; a thread that never ran a task may hold zeros.
        while node != 0 && node != head && out.len() < MAX_TASKS && nodes.insert(node) {
            let Some(task) = node.checked_sub(debug.task_node) else { break };
            if seen.insert(task) {
                out.push(task);
            }
            match self.mem.u64(node) {
                Some(next) => node = next,
                None => break,
            }
        }
    }

    /// 3.14+: the task each thread is running (`asyncio_running_task`).
    pub fn running_in_threads(&mut self, debug: &AsyncioDebugOffsets, thread_states: &[u64]) -> HashSet<u64> {
        thread_states
            .iter()
            .filter_map(|t| self.mem.u64(t.checked_add(debug.tstate_running_task)?))
            .filter(|&task| task != 0)
            .collect()
    }

    /// The tasks the loops are running now.
    pub fn running(&mut self, reg: &Registries) -> HashSet<u64> {
        reg.current
            .and_then(|d| dict_items(self.mem, self.o, d))
            .map(|items| items.into_iter().map(|(_, task)| task).collect())
            .unwrap_or_default()
    }

    /// One task, if `addr` is a pending task.
    pub fn task(&mut self, addr: u64, running: &HashSet<u64>) -> Option<RawTask> {
        if !self.is_task(addr) {
            return None;
        }
        let l = self.l;
        let raw = self.mem.bytes(addr, l.task_name as usize + 8)?;
        if field_i32(&raw, l.future_state)? != STATE_PENDING {
            return None;
        }
        let name = self.task_name(field_u64(&raw, l.task_name)?);
        let coro = field_u64(&raw, l.task_coro)?;
        let fut_waiter = field_u64(&raw, l.task_fut_waiter)?;
        let (chain, innermost_self) = self.chain(coro);
        let coro_frame = if l.gen_iframe >= 0 {
            coro.checked_add(l.gen_iframe as u64)
        } else {
            read_ptr(self.mem, coro, l.gen_frame_ptr)
        };
        let waiter = if fut_waiter == 0 { Waiter::None } else { self.waiter(fut_waiter) };
        let state = if running.contains(&addr) {
            TaskState::Running
        } else if fut_waiter != 0 && self.pending(fut_waiter) {
            TaskState::Awaiting
        } else {
            // No future, or one that is done: the task's wake-up is in the loop's ready queue.
            TaskState::Ready
        };
        Some(RawTask { addr, name, state, chain, waiter, innermost_self, coro_frame })
    }

    /// A task's name: its str, or `Task-n` for the int 3.12+ keep until the name is asked for.
    fn task_name(&mut self, name: u64) -> String {
        read_str(self.mem, self.o, name)
            .or_else(|| read_int(self.mem, self.o, name).map(|n| format!("Task-{n}")))
            .unwrap_or_else(|| "[unknown task]".to_string())
    }

    /// Is the future at `fut` still pending? A C future (or a subclass) has its state at the
    /// layout's offset; anything else is taken as pending.
    fn pending(&mut self, fut: u64) -> bool {
        match self.mem.bytes(fut.saturating_add(self.l.future_state as u64), 4) {
            Some(b) => {
                let state = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                !(1..=2).contains(&state)
            }
            None => true,
        }
    }

    /// What the future a task waits on is.
    fn waiter(&mut self, fut: u64) -> Waiter {
        match self.type_name(fut) {
            Some("_asyncio.Task") => Waiter::Task(fut),
            Some("_GatheringFuture") => {
                let children = attribute_items(self.mem, self.o, fut)
                    .and_then(|attrs| find_str_keys(self.mem, self.o, &attrs, ["_children"])[0])
                    .and_then(|list| list_items(self.mem, self.l, list, MAX_CHILDREN))
                    .unwrap_or_default();
                Waiter::Gather(children)
            }
            _ => Waiter::Future,
        }
    }

    /// The members of a set of tasks (a `TaskGroup`'s `_tasks`), read through `obj`'s
    /// attribute `attr`.
    pub fn task_set_attribute(&mut self, obj: u64, attr: &str) -> Vec<u64> {
        let Some(attrs) = attribute_items(self.mem, self.o, obj) else { return Vec::new() };
        let [set] = find_str_keys(self.mem, self.o, &attrs, [attr]);
        let mut tasks = set.and_then(|s| set_keys(self.mem, self.l, s)).unwrap_or_default();
        tasks.truncate(MAX_CHILDREN);
        tasks.retain(|&t| self.is_task(t));
        tasks
    }

    /// The await chain from `coro` down: one record per coroutine or generator.
    fn chain(&mut self, coro: u64) -> (Vec<PyFrameRecord>, Option<u64>) {
        let mut chain = Vec::new();
        let mut innermost_self = None;
        let mut obj = coro;
        for _ in 0..MAX_CHAIN {
            if !matches!(self.type_name(obj), Some("coroutine" | "generator")) {
                break;
            }
            let Some((record, awaited, first_local)) = self.gen_frame(obj) else { break };
            chain.push(record);
            innermost_self = first_local;
            match awaited {
                Some(next) if next != obj => obj = next,
                _ => break,
            }
        }
        (chain, innermost_self)
    }

    /// A coroutine's frame record, what it awaits (its top of stack) and its first local.
    fn gen_frame(&mut self, coro: u64) -> Option<(PyFrameRecord, Option<u64>, Option<u64>)> {
        let (l, o) = (self.l, self.o);
        if l.gen_iframe >= 0 {
            let state = self.mem.bytes(coro.checked_add(l.gen_frame_state as u64)?, 1)?[0] as i8;
            if !l.frame_alive(state) {
                return None;
            }
            let frame = coro.checked_add(l.gen_iframe as u64)?;
            let head = self.mem.bytes(frame, l.frame_localsplus as usize + 8)?;
            let code = field_u64(&head, o.frame_code)? & !(o.frame_code_tag_bits.max(0) as u64);
            let instr = field_u64(&head, o.frame_instr_ptr)?;
            let owner = u32::from(*head.get(usize::try_from(o.frame_owner).ok()?)?);
            let record = PyFrameRecord { code, instr, fingerprint: self.firstlineno(code)?, owner };
            let base = frame.checked_add(l.frame_localsplus as u64)?;
            // 3.14+: stack slots are `_PyStackRef`s, tagged as the frame's code is.
            let untag = !(o.frame_code_tag_bits.max(0) as u64);
            let top_slot = if l.frame_stackpointer >= 0 {
                let sp = field_u64(&head, l.frame_stackpointer)?;
                let below = l.awaited_below_top;
                sp.checked_sub(base)
                    .filter(|d| d.is_multiple_of(8) && (below..MAX_STACK_SLOTS as u64).contains(&(d / 8)))
                    .map(|_| sp - below * 8)
            } else {
                let top = i64::from(field_i32(&head, l.frame_stacktop)?);
                (1..MAX_STACK_SLOTS).contains(&top).then(|| base.checked_add((top as u64 - 1) * 8)).flatten()
            };
            let awaited = top_slot.and_then(|slot| self.mem.u64(slot)).map(|p| p & untag).filter(|&p| p != 0);
            let first_local = field_u64(&head, l.frame_localsplus).map(|p| p & untag).filter(|&p| p != 0);
            Some((record, awaited, first_local))
        } else {
            let frame = read_ptr(self.mem, coro, l.gen_frame_ptr)?;
            let len = [o.frame_code, o.frame_lasti, l.frame_stacktop, l.frame_valuestack, l.frame_localsplus]
                .into_iter()
                .max()? as usize
                + 8;
            let head = self.mem.bytes(frame, len)?;
            let code = field_u64(&head, o.frame_code)?;
            let instr = field_i32(&head, o.frame_lasti)? as u32 as u64;
            let record = PyFrameRecord { code, instr, fingerprint: self.firstlineno(code)?, owner: 0 };
            let top_slot = if l.frame_valuestack >= 0 {
                // 3.10: f_stackdepth slots from f_valuestack.
                let depth = i64::from(field_i32(&head, l.frame_stacktop)?);
                let stack = field_u64(&head, l.frame_valuestack)?;
                (1..MAX_STACK_SLOTS).contains(&depth).then(|| stack.checked_add((depth as u64 - 1) * 8)).flatten()
            } else {
                // 3.8–3.9: f_stacktop points past the top (NULL while running).
                field_u64(&head, l.frame_stacktop)?.checked_sub(8).filter(|&p| p > frame)
            };
            let awaited = top_slot.and_then(|slot| self.mem.u64(slot)).filter(|&p| p != 0);
            let first_local = field_u64(&head, l.frame_localsplus).filter(|&p| p != 0);
            Some((record, awaited, first_local))
        }
    }

    /// A thread's frames from `frame` (its innermost) outwards, as (frame address, record).
    pub fn thread_frames(&mut self, mut frame: u64) -> Vec<(u64, PyFrameRecord)> {
        let o = self.o;
        let mut out = Vec::new();
        while frame != 0 && out.len() < MAX_THREAD_FRAMES {
            let Some(record) = self.frame_record(frame) else { break };
            out.push((frame, record));
            match read_ptr(self.mem, frame, o.frame_previous) {
                Some(previous) => frame = previous,
                None => break,
            }
        }
        out
    }

    /// The record of a frame on a thread's stack (an interpreter frame 3.11+, a frame object
    /// before), as the kernel would record it.
    fn frame_record(&mut self, frame: u64) -> Option<PyFrameRecord> {
        let o = self.o;
        let code_at = u64::try_from(o.frame_code).ok()?;
        let code = self.mem.u64(frame.checked_add(code_at)?)? & !(o.frame_code_tag_bits.max(0) as u64);
        let (instr, owner) = if o.frame_instr_ptr >= 0 {
            let instr = self.mem.u64(frame.checked_add(o.frame_instr_ptr as u64)?)?;
            let owner = self.mem.bytes(frame.checked_add(u64::try_from(o.frame_owner).ok()?)?, 1)?[0];
            (instr, u32::from(owner))
        } else {
            let b = self.mem.bytes(frame.checked_add(u64::try_from(o.frame_lasti).ok()?)?, 4)?;
            (i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u32 as u64, 0)
        };
        // The entry frame of 3.13+ has no code object (None): a record that resolves to nothing.
        let fingerprint = self.firstlineno(code).unwrap_or(0);
        Some(PyFrameRecord { code, instr, fingerprint, owner })
    }

    fn firstlineno(&mut self, code: u64) -> Option<u32> {
        let at = code.checked_add(u64::try_from(self.o.code_firstlineno).ok()?)?;
        let b = self.mem.bytes(at, 4)?;
        Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u32)
    }
}
