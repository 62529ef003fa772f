//! asyncio's tasks read from a target's memory (`python::asyncio::reader`): registries (weak
//! sets, sets, `_current_tasks`), 3.14+ per-thread and per-interpreter task lists, each task's
//! await chain through its coroutines' frames, gathers, and the attribute walks from a
//! coroutine's `self` (a stream's socket, a task group's tasks). The memory is a valid graph of
//! the chosen version, corrupted by the fuzzer's pokes (cycles in lists and chains, wild
//! pointers, huge sizes); the `.AsyncioDebug` section's parser gets raw bytes.
#![no_main]
use std::collections::HashMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use profiler::python::{
    asyncio::{
        debug_section::AsyncioDebugOffsets,
        layout,
        reader::{MAX_TASKS, Reader, read_tasks},
    },
    offsets::for_version,
};
use pyebpf_fuzz::{
    Objects, Poke,
    asyncio::{FuzzTask, asyncio_graph},
};

#[derive(Arbitrary, Debug)]
struct Input {
    version: u8,
    tasks: Vec<FuzzTask>,
    pokes: Vec<Poke>,
    section: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let _ = AsyncioDebugOffsets::parse(&input.section);
    let minor = 8 + input.version % 8;
    let (Some(o), Some(l)) = (for_version(3, minor, false), layout::for_version(minor, false)) else { return };
    let Some(mut objs) = Objects::new(o, 1 << 17) else { return };
    let Some(graph) = asyncio_graph(&mut objs, l, &input.tasks) else { return };
    for poke in &input.pokes {
        objs.img.poke(poke);
    }
    let mem = objs.img.memory();
    let mut type_names = HashMap::new();
    let mut reader = Reader { mem: &mem, o, l, type_names: &mut type_names };
    let raw = read_tasks(&mut reader, &graph.registries, &graph.heads);
    assert!(raw.len() <= MAX_TASKS);
    for task in &raw {
        assert!(task.chain.len() <= 64);
        if let Some(this) = task.innermost_self {
            let _ = reader.socket_fd(this);
            assert!(reader.task_set_attribute(this, "_tasks").len() <= 4096);
        }
        if let Some(frame) = task.coro_frame {
            assert!(reader.thread_frames(frame).len() <= 256);
        }
    }
});
