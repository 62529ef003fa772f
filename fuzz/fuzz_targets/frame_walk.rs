//! A thread's Python frame chain walked from userspace (`python::walk`), as for threads
//! blocked all along and `pyebpf dump`: the layout of the chosen version over raw bytes, with
//! the thread state and the chain's frames anywhere in them (wild pointers, cycles, chains
//! longer than the bound, frames cut by the image's end).
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use profiler::{
    host::memory::ImageMemory,
    python::{proc_info, walk},
};
use pyebpf_fuzz::{BASE, offsets};

#[derive(Arbitrary, Debug)]
struct Input {
    version: u8,
    tstate: u32,
    depth: u8,
    image: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let (_, o) = offsets(input.version);
    let info = proc_info(BASE, o);
    let mem = ImageMemory { base: BASE, image: input.image };
    let (frames, _) = walk::walk(&mem, &info, BASE + u64::from(input.tstate), usize::from(input.depth));
    assert!(frames.len() <= usize::from(input.depth));
});
