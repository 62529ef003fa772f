//! asyncio's tasks read from a target's memory (`python::asyncio::reader`): registries (weak
//! sets, sets, `_current_tasks`), 3.14+ per-thread and per-interpreter task lists, each task's
//! await chain through its coroutines' frames, gathers, and the attribute walks from a
//! coroutine's `self` (a stream's socket, a task group's tasks), and a stream object whose socket
//! is reached through attributes, a `__slots__` member's descriptor or uvloop's libuv handle. The memory is a valid graph of
//! the chosen version, corrupted by the fuzzer's pokes (cycles in lists and chains, wild
//! pointers, huge sizes); the `.AsyncioDebug` section's parser gets raw bytes.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use profiler::host::memory::PageCache;
use profiler::python::{
    asyncio::{
        debug_section::AsyncioDebugOffsets,
        layout,
        reader::{MAX_TASKS, Reader, TypeCache, read_tasks},
    },
    offsets::for_version,
};
use pyebpf_fuzz::{
    Objects, Poke,
    asyncio::{FuzzTask, StreamKind, asyncio_graph, stream_graph},
};

#[derive(Arbitrary, Debug)]
struct Input {
    version: u8,
    free_threaded: bool,
    tasks: Vec<FuzzTask>,
    /// A stream object (each way its socket is reached, uvloop's libuv handle included).
    stream: StreamKind,
    pokes: Vec<Poke>,
    section: Vec<u8>,
    /// Pages the snapshot's page cache may keep (from 1: most reads then go past it).
    cache_pages: u8,
}

fuzz_target!(|input: Input| {
    let _ = AsyncioDebugOffsets::parse(&input.section);
    let minor = 8 + input.version % 8;
    let ft = input.free_threaded;
    let (Some(o), Some(l)) = (for_version(3, minor, ft), layout::for_version(minor, ft)) else { return };
    let Some(mut objs) = Objects::new(o, 1 << 17) else { return };
    let Some(graph) = asyncio_graph(&mut objs, l, &input.tasks) else { return };
    let Some(stream) = stream_graph(&mut objs, l, input.stream, 9) else { return };
    for poke in &input.pokes {
        objs.img.poke(poke);
    }
    let mem = objs.img.memory();
    let mut types = TypeCache::default();
    let mut reader = Reader { mem: &mem, o, l, types: &mut types };
    if let Some(fd) = reader.socket_fd(stream) {
        assert!((0..1 << 24).contains(&fd));
    }
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
    // A snapshot reads through a page cache (`PageCache`): the same tasks, whatever its size.
    let cached = PageCache::with_capacity(mem.clone(), usize::from(input.cache_pages) + 1);
    let mut types = TypeCache::default();
    let mut reader = Reader { mem: &cached, o, l, types: &mut types };
    assert_eq!(read_tasks(&mut reader, &graph.registries, &graph.heads), raw);
});
