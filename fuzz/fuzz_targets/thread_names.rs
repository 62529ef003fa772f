//! Python thread names and thread-state lists read out of a target's memory: `_PyRuntime` →
//! interpreters → `sys.modules` → `threading` → `_active` → each `Thread`'s attributes, plus the
//! `PyThreadState` list walk and the GIL's location. The memory is a valid graph of the chosen
//! version (plain or managed instance dicts), corrupted by the fuzzer's pokes (which make
//! cycles, wild pointers, resized tables...).
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use profiler::python::{PyVersion, gil_range, thread_names, thread_states};
use pyebpf_fuzz::{Objects, Poke, PyThread, offsets, threading_graph};

#[derive(Arbitrary, Debug)]
struct Input {
    version: u8,
    threads: Vec<PyThread>,
    /// 3.11+: instance attributes in a managed dict (pre-header) instead of `tp_dictoffset`.
    managed: bool,
    pokes: Vec<Poke>,
}

fuzz_target!(|input: Input| {
    let (minor, o) = offsets(input.version);
    let Some(mut objs) = Objects::new(o, 1 << 16) else { return };
    let Some(runtime_addr) = threading_graph(&mut objs, &input.threads, input.managed) else { return };
    for poke in &input.pokes {
        objs.img.poke(poke);
    }
    let mem = objs.img.memory();
    let version = PyVersion { major: 3, minor, patch: None, free_threaded: false };
    let _ = thread_names::thread_names(&mem, o, version, runtime_addr);
    let key = if o.tstate_native_thread_id >= 0 { o.tstate_native_thread_id } else { o.tstate_thread_id };
    let _ = thread_states(&mem, o, runtime_addr, key as u64);
    let _ = gil_range(&mem, o, runtime_addr);
});
