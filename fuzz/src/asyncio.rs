//! asyncio task graphs for the `asyncio_tasks` target: tasks (each with a chain of suspended
//! coroutines and their frames, in the chosen version's layout), registered in the places the
//! reader looks: a `WeakSet`'s table of weak references, a plain set, `_current_tasks`, and
//! the 3.14+ per-thread and per-interpreter linked lists, with awaits between tasks and a
//! gather. The graph is valid; the target then corrupts it.
use arbitrary::Arbitrary;
use profiler::python::asyncio::{
    debug_section::AsyncioDebugOffsets,
    layout::{AsyncioLayout, SET_ENTRY_SIZE},
    reader::{Registries, TaskListHeads},
};

use crate::{Objects, Text};

/// One task of the graph.
#[derive(Arbitrary, Debug, Clone)]
pub struct FuzzTask {
    pub name: Text,
    /// Coroutines in its await chain (1–8).
    pub depth: u8,
    /// Where it is registered: 0 a `WeakSet`, 1 a set, 2 its thread's list, 3 the
    /// interpreter's list.
    pub registry: u8,
    /// The index of a task it awaits (or, with `gather`, gathers).
    pub awaits: Option<u8>,
    pub gather: bool,
    /// `_current_tasks` (and its thread's running task) name it.
    pub running: bool,
}

/// What the reader is given, and what it should find.
pub struct AsyncioGraph {
    pub registries: Registries,
    pub heads: TaskListHeads,
    pub tasks: Vec<u64>,
}

/// Offsets of a made-up `_AsyncioDebug` that agree with `l` (as the reader requires): the
/// list node and the is-task flag after the name, the thread state's fields at its start.
pub fn debug_offsets(l: &AsyncioLayout) -> AsyncioDebugOffsets {
    let name = l.task_name as u64;
    AsyncioDebugOffsets {
        task_name: name,
        task_is_task: name + 8,
        task_coro: l.task_coro as u64,
        task_node: name + 16,
        interp_tasks_head: 0,
        tstate_running_loop: 24,
        tstate_running_task: 16,
        tstate_tasks_head: 0,
    }
}

/// Writes a circular doubly linked list of `nodes` headed at `head` (`llist_node`s).
fn link(objs: &mut Objects, head: u64, nodes: &[u64]) {
    let mut ring = vec![head];
    ring.extend_from_slice(nodes);
    for (i, &node) in ring.iter().enumerate() {
        let next = ring[(i + 1) % ring.len()];
        let prev = ring[(i + ring.len() - 1) % ring.len()];
        objs.img.put_u64(node, 0, next);
        objs.img.put_u64(node, 8, prev);
    }
}

/// A set (`PySetObject`) holding `keys`.
fn set_object(objs: &mut Objects, l: &AsyncioLayout, keys: &[u64]) -> Option<u64> {
    let slots = (keys.len() + 1).next_power_of_two().max(8);
    let table = objs.img.alloc(slots * SET_ENTRY_SIZE)?;
    for (i, &key) in keys.iter().enumerate() {
        objs.img.put_u64(table, (i * SET_ENTRY_SIZE) as i64, key);
        objs.img.put_u64(table, (i * SET_ENTRY_SIZE + 8) as i64, key >> 4);
    }
    let set = objs.img.alloc(l.set_table() as usize + 8)?;
    objs.img.put_u64(set, l.set_mask() as i64, slots as u64 - 1);
    objs.img.put_u64(set, l.set_table() as i64, table);
    Some(set)
}

/// A suspended coroutine awaiting `awaited` (0: nothing), with `self_obj` as its first local.
fn coroutine(objs: &mut Objects, l: &AsyncioLayout, ty: u64, code: u64, awaited: u64, self_obj: u64) -> Option<u64> {
    let o = objs.o;
    if l.gen_iframe >= 0 {
        let base = l.gen_iframe + l.frame_localsplus;
        let coro = objs.img.alloc(base as usize + 8 * (2 + l.awaited_below_top as usize))?;
        objs.img.put_u64(coro, o.object_type, ty);
        // FRAME_SUSPENDED_YIELD_FROM: -1 up to 3.14, 2 in 3.15.
        let suspended: i8 = if l.frame_state_executing > 0 { 2 } else { -1 };
        objs.img.put(coro, l.gen_frame_state, &suspended.to_ne_bytes());
        let frame = coro + l.gen_iframe as u64;
        objs.img.put_u64(frame, o.frame_code, code);
        if o.frame_instr_ptr >= 0 {
            objs.img.put_u64(frame, o.frame_instr_ptr, code + o.code_code_adaptive.max(0) as u64);
        }
        objs.img.put(frame, o.frame_owner, &[1]);
        objs.img.put_u64(coro, base, self_obj);
        if awaited != 0 {
            objs.img.put_u64(coro, base + 8, awaited);
            if l.frame_stackpointer >= 0 {
                let sp = frame + l.frame_localsplus as u64 + 8 * (1 + l.awaited_below_top);
                objs.img.put_u64(frame, l.frame_stackpointer, sp);
            } else {
                objs.img.put_i32(frame, l.frame_stacktop, 2);
            }
        }
        Some(coro)
    } else {
        let head = [o.frame_code, o.frame_lasti, l.frame_stacktop, l.frame_valuestack, l.frame_localsplus];
        let frame = objs.img.alloc(head.into_iter().max()? as usize + 8 + 16)?;
        objs.img.put_u64(frame, o.frame_code, code);
        objs.img.put_u64(frame, l.frame_localsplus, self_obj);
        let slot = frame + l.frame_localsplus as u64 + 8;
        if awaited != 0 {
            objs.img.put_u64(slot, 0, awaited);
            if l.frame_valuestack >= 0 {
                objs.img.put_u64(frame, l.frame_valuestack, slot);
                objs.img.put_i32(frame, l.frame_stacktop, 1);
            } else {
                objs.img.put_u64(frame, l.frame_stacktop, slot + 8);
            }
        }
        let coro = objs.img.alloc(l.gen_frame_ptr as usize + 8)?;
        objs.img.put_u64(coro, o.object_type, ty);
        objs.img.put_u64(coro, l.gen_frame_ptr, frame);
        Some(coro)
    }
}

/// Builds `tasks` (at most 16) in `objs`' image.
pub fn asyncio_graph(objs: &mut Objects, l: &AsyncioLayout, tasks: &[FuzzTask]) -> Option<AsyncioGraph> {
    let o = objs.o;
    let tasks = &tasks[..tasks.len().min(16)];
    let debug = debug_offsets(l);
    let task_type = objs.type_object(0, "_asyncio.Task", 0)?;
    let coro_type = objs.type_object(0, "coroutine", 0)?;
    let gather_type = objs.type_object(0, "_GatheringFuture", 16)?;
    let weakref_type = objs.type_object(0, "weakref", 0)?;
    let code = objs.code_object(
        &Text { kind: 0, bytes: b"handler".to_vec() },
        &Text { kind: 0, bytes: b"/app/handlers.py".to_vec() },
        10,
        0x80,
        &[0, 1],
        0,
        4,
    )?;
    let task_size = (debug.task_node + 16).max(l.task_name as u64 + 8) as usize;
    let addrs: Vec<u64> = (0..tasks.len()).map(|_| objs.img.alloc(task_size)).collect::<Option<_>>()?;
    let (mut weak, mut plain, mut thread_list, mut interp_list, mut current) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let tstate = objs.img.alloc(32)?;
    let interp = objs.img.alloc(16)?;
    for (i, (t, &task)) in tasks.iter().zip(&addrs).enumerate() {
        objs.img.put_u64(task, o.object_type, task_type);
        objs.img.put_i32(task, l.future_state, 0);
        objs.img.put(task, debug.task_is_task as i64, &[1]);
        let name = objs.str_object(&t.name)?;
        objs.img.put_u64(task, l.task_name, name);
        // The waiter: another task, or a gather of it.
        let waiter = match t.awaits.map(|a| addrs[usize::from(a) % addrs.len()]) {
            Some(other) if t.gather => {
                let list = objs.img.alloc(l.list_items() as usize + 8)?;
                let items = objs.img.alloc(8)?;
                objs.img.put_u64(items, 0, other);
                objs.img.put_u64(list, l.list_size() as i64, 1);
                objs.img.put_u64(list, l.list_items() as i64, items);
                let key = objs.ascii("_children")?;
                let attrs = objs.dict_object(&[(key, list)])?;
                let gather = objs.img.alloc(l.future_state as usize + 8)?;
                objs.img.put_u64(gather, o.object_type, gather_type);
                objs.img.put_u64(gather, 16, attrs);
                gather
            }
            Some(other) => other,
            None => 0,
        };
        objs.img.put_u64(task, l.task_fut_waiter, waiter);
        // The chain, innermost first: the last coroutine awaits the waiter.
        let mut next = waiter;
        for _ in 0..t.depth.clamp(1, 8) {
            next = coroutine(objs, l, coro_type, code, next, task)?;
        }
        objs.img.put_u64(task, l.task_coro, next);
        match t.registry % 4 {
            0 => {
                let weakref = objs.img.alloc(l.weakref_object as usize + 8)?;
                objs.img.put_u64(weakref, o.object_type, weakref_type);
                objs.img.put_u64(weakref, l.weakref_object, task);
                weak.push(weakref);
            }
            1 => plain.push(task),
            2 => thread_list.push(task + debug.task_node),
            _ => interp_list.push(task + debug.task_node),
        }
        if t.running {
            let key = objs.int_object(i as i64)?;
            current.push((key, task));
            objs.img.put_u64(tstate, debug.tstate_running_task as i64, task);
        }
    }
    link(objs, tstate + debug.tstate_tasks_head, &thread_list);
    link(objs, interp + debug.interp_tasks_head, &interp_list);
    let weak_set = set_object(objs, l, &weak)?;
    let set = set_object(objs, l, &plain)?;
    let current = objs.dict_object(&current)?;
    Some(AsyncioGraph {
        registries: Registries {
            weak_sets: vec![weak_set],
            sets: vec![set],
            current: Some(current),
            lists: Some(debug),
        },
        heads: TaskListHeads { thread_states: vec![tstate], interpreter: Some(interp) },
        tasks: addrs,
    })
}

/// How a stream's socket is reached in [`stream_graph`].
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// asyncio's `StreamReader._transport._sock`, a `socket.socket`.
    Asyncio,
    /// aiohttp's `ResponseHandler`: `transport` a `__slots__` member of its base, then `_sock`.
    AiohttpSlot,
    /// aiohttp's on uvloop: the slot holds a uvloop transport with a libuv TCP handle.
    Uvloop,
    /// asyncio's over TLS: `StreamReader._transport` is an `_SSLProtocolTransport`, whose
    /// `_ssl_protocol._transport` holds `_sock`.
    AsyncioTls,
    /// aiohttp's on uvloop over TLS: the slot holds uvloop's `_SSLProtocolTransport`, a `cdef`
    /// object pointing to an `SSLProtocol` that points to the TCP transport (and back to it).
    UvloopTls,
}

/// Offsets of `PyTypeObject.tp_dict` and `tp_base` (before `tp_dictoffset`, every version).
fn type_dict_and_base(objs: &Objects) -> (i64, i64) {
    (objs.o.type_dictoffset - 24, objs.o.type_dictoffset - 32)
}

/// An instance of a new type `name` with a `__dict__` (at the first field) holding `attrs`.
fn instance(objs: &mut Objects, l: &AsyncioLayout, name: &str, attrs: &[(&str, u64)], size: u64) -> Option<(u64, u64)> {
    let header = l.header() as i64;
    let ty = objs.type_object(0, name, header)?;
    objs.img.put_u64(ty, objs.o.type_name + 8, size);
    let mut items = Vec::new();
    for &(key, value) in attrs {
        items.push((objs.ascii(key)?, value));
    }
    let dict = objs.dict_object(&items)?;
    let obj = objs.img.alloc(size as usize)?;
    objs.img.put_u64(obj, objs.o.object_type, ty);
    objs.img.put_u64(obj, header, dict);
    Some((obj, ty))
}

/// A stream object whose socket is descriptor `fd`, reached as `kind` says (what
/// `Reader::socket_fd` follows): the objects, types (with `tp_dict` and `tp_base` for the
/// slot), member descriptor and libuv handle each path needs.
pub fn stream_graph(objs: &mut Objects, l: &AsyncioLayout, kind: StreamKind, fd: i32) -> Option<u64> {
    let o = objs.o;
    let header = l.header() as i64;
    let uvloop = matches!(kind, StreamKind::Uvloop | StreamKind::UvloopTls);
    let mut transport = if uvloop {
        // Cython's struct: the vtable pointer, then `uv_handle_t *_handle`; the handle's
        // `data` points back at the transport, its `type` is UV_TCP, its fd in `io_watcher`.
        let ty = objs.type_object(0, "uvloop.loop.TCPTransport", 0)?;
        let transport = objs.img.alloc(header as usize + 64)?;
        objs.img.put_u64(transport, o.object_type, ty);
        let vtable = objs.img.alloc(16)?;
        objs.img.put_u64(vtable, 0, vtable + 8);
        let handle = objs.img.alloc(192)?;
        objs.img.put_u64(handle, 0, transport);
        objs.img.put_u64(handle, 8, vtable);
        objs.img.put_i32(handle, 16, 12);
        objs.img.put_i32(handle, 184, fd);
        objs.img.put_u64(transport, header, vtable);
        objs.img.put_u64(transport, header + 8, handle);
        transport
    } else {
        let sock_type = objs.type_object(0, "socket", 0)?;
        let sock = objs.img.alloc(header as usize + 8)?;
        objs.img.put_u64(sock, o.object_type, sock_type);
        objs.img.put_i32(sock, header, fd);
        instance(objs, l, "_SelectorSocketTransport", &[("_sock", sock)], header as u64 + 8)?.0
    };
    if kind == StreamKind::AsyncioTls {
        let (protocol, _) = instance(objs, l, "SSLProtocol", &[("_transport", transport)], header as u64 + 8)?;
        transport = instance(objs, l, "_SSLProtocolTransport", &[("_ssl_protocol", protocol)], header as u64 + 8)?.0;
    }
    if kind == StreamKind::UvloopTls {
        // `_SSLProtocolTransport`: `_loop`, `_ssl_protocol`, ...; `SSLProtocol`: its vtable,
        // then fields, `_app_transport` (back to the TLS transport) before `_transport`.
        let tls_type = objs.type_object(0, "uvloop.loop._SSLProtocolTransport", 0)?;
        let protocol_type = objs.type_object(0, "uvloop.loop.SSLProtocol", 0)?;
        let loop_type = objs.type_object(0, "uvloop.loop.Loop", 0)?;
        let event_loop = objs.img.alloc(header as usize + 8)?;
        objs.img.put_u64(event_loop, o.object_type, loop_type);
        let tls = objs.img.alloc(header as usize + 32)?;
        objs.img.put_u64(tls, o.object_type, tls_type);
        let protocol = objs.img.alloc(header as usize + 8 * 16)?;
        objs.img.put_u64(protocol, o.object_type, protocol_type);
        objs.img.put_u64(tls, header, event_loop);
        objs.img.put_u64(tls, header + 8, protocol);
        objs.img.put_u64(protocol, header + 8 * 7, event_loop);
        objs.img.put_u64(protocol, header + 8 * 8, tls);
        objs.img.put_u64(protocol, header + 8 * 10, transport);
        transport = tls;
    }
    if matches!(kind, StreamKind::Asyncio | StreamKind::AsyncioTls) {
        let limit = objs.int_object(1 << 16)?;
        return Some(
            instance(objs, l, "StreamReader", &[("_transport", transport), ("_limit", limit)], header as u64 + 8)?.0,
        );
    }
    // `ResponseHandler(BaseProtocol, ...)`: `transport` is BaseProtocol's slot, right after
    // the instance's dict pointer.
    let slot = header + 8;
    let eof = objs.int_object(0)?;
    let (protocol, protocol_type) = instance(objs, l, "ResponseHandler", &[("_eof", eof)], slot as u64 + 8)?;
    objs.img.put_u64(protocol, slot, transport);
    let (tp_dict, tp_base) = type_dict_and_base(objs);
    let base = objs.type_object(0, "BaseProtocol", 0)?;
    objs.img.put_u64(protocol_type, tp_base, base);
    let own_dict = objs.dict_object(&[])?;
    objs.img.put_u64(protocol_type, tp_dict, own_dict);
    let member_def = objs.img.alloc(32)?;
    objs.img.put_i32(member_def, 8, 16);
    objs.img.put_u64(member_def, 16, slot as u64);
    let descr_type = objs.type_object(0, "member_descriptor", 0)?;
    let descr = objs.img.alloc(header as usize + 32)?;
    objs.img.put_u64(descr, o.object_type, descr_type);
    objs.img.put_u64(descr, header + 24, member_def);
    let key = objs.ascii("transport")?;
    let base_dict = objs.dict_object(&[(key, descr)])?;
    objs.img.put_u64(base, tp_dict, base_dict);
    Some(protocol)
}

/// Built graphs read back as the tasks that were put in, in every version with a task layout.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use profiler::python::{
        asyncio::{
            layout,
            reader::{Reader, TaskState, TypeCache, Waiter, read_tasks},
        },
        offsets::for_version,
    };

    use super::*;

    fn task(name: &str, depth: u8, registry: u8, awaits: Option<u8>, gather: bool, running: bool) -> FuzzTask {
        FuzzTask { name: Text { kind: 0, bytes: name.as_bytes().to_vec() }, depth, registry, awaits, gather, running }
    }

    /// Every version with a task layout: (minor, free-threaded).
    const VERSIONS: [(u8, bool); 9] = [
        (8, false),
        (9, false),
        (10, false),
        (11, false),
        (12, false),
        (13, false),
        (14, false),
        (15, false),
        (13, true),
    ];

    #[test]
    fn task_graphs_read_back() {
        for (minor, ft) in VERSIONS {
            let (Some(o), Some(l)) = (for_version(3, minor, ft), layout::for_version(minor, ft)) else {
                panic!("3.{minor}: no layout")
            };
            let mut objs = Objects::new(o, 1 << 18).unwrap();
            let tasks = [
                task("awaiter", 2, 0, Some(1), false, false),
                task("runner", 1, 1, None, false, true),
                task("gatherer", 3, 2, Some(3), true, false),
                task("child", 1, 3, None, false, false),
            ];
            let graph = asyncio_graph(&mut objs, l, &tasks).unwrap();
            let mem = objs.img.memory();
            let mut types = TypeCache::default();
            let mut reader = Reader { mem: &mem, o, l, types: &mut types };
            let raw = read_tasks(&mut reader, &graph.registries, &graph.heads);
            let by_name: HashMap<&str, _> = raw.iter().map(|t| (t.name.as_str(), t)).collect();
            assert_eq!(by_name.len(), 4, "3.{minor}: {raw:?}");
            let (awaiter, runner, gatherer, child) =
                (by_name["awaiter"], by_name["runner"], by_name["gatherer"], by_name["child"]);
            assert_eq!(awaiter.chain.len(), 2, "3.{minor}");
            assert_eq!(gatherer.chain.len(), 3, "3.{minor}");
            assert_eq!(awaiter.waiter, Waiter::Task(graph.tasks[1]), "3.{minor}");
            assert_eq!(gatherer.waiter, Waiter::Gather(vec![graph.tasks[3]]), "3.{minor}");
            assert_eq!(
                [awaiter.state, runner.state, gatherer.state, child.state],
                [TaskState::Awaiting, TaskState::Running, TaskState::Awaiting, TaskState::Ready],
                "3.{minor}"
            );
            // The innermost coroutine's first local is the task (what `self` would be).
            assert_eq!(child.innermost_self, Some(graph.tasks[3]), "3.{minor}");
        }
    }

    /// A stream's socket is found along each path, on every version; a uvloop handle that
    /// does not point back at its transport gives none.
    #[test]
    fn stream_sockets_read_back() {
        for (minor, ft) in VERSIONS {
            let (o, l) = (for_version(3, minor, ft).unwrap(), layout::for_version(minor, ft).unwrap());
            let kinds = [
                StreamKind::Asyncio,
                StreamKind::AiohttpSlot,
                StreamKind::Uvloop,
                StreamKind::AsyncioTls,
                StreamKind::UvloopTls,
            ];
            for (i, kind) in kinds.into_iter().enumerate() {
                let mut objs = Objects::new(o, 1 << 16).unwrap();
                let fd = 40 + i as i32;
                let stream = stream_graph(&mut objs, l, kind, fd).unwrap();
                let (mem, mut types) = (objs.img.memory(), TypeCache::default());
                let mut reader = Reader { mem: &mem, o, l, types: &mut types };
                assert_eq!(reader.socket_fd(stream), Some(fd), "3.{minor} ft={ft} {kind:?}");
                // Cached slot offsets give the same.
                assert_eq!(reader.socket_fd(stream), Some(fd), "3.{minor} ft={ft} {kind:?}, cached");
            }
            let mut objs = Objects::new(o, 1 << 16).unwrap();
            let stream = stream_graph(&mut objs, l, StreamKind::Uvloop, 7).unwrap();
            // The slot's transport, then its handle pointer (the second word past the header).
            let slot = l.header() + 8;
            let transport =
                u64::from_ne_bytes(objs.img.bytes[(stream - crate::BASE + slot) as usize..][..8].try_into().unwrap());
            let handle_at = transport + l.header() + 8;
            let handle =
                u64::from_ne_bytes(objs.img.bytes[(handle_at - crate::BASE) as usize..][..8].try_into().unwrap());
            objs.img.put_u64(handle, 0, handle);
            let (mem, mut types) = (objs.img.memory(), TypeCache::default());
            let mut reader = Reader { mem: &mem, o, l, types: &mut types };
            assert_eq!(reader.socket_fd(stream), None, "3.{minor} ft={ft}: a handle not pointing back");
        }
    }
}
