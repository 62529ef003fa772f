//! A native stack walked from userspace (`native::stack`, `pyebpf dump --native`): the
//! fuzzer's own unwind tables (real CFI, built once), with the stack the walk reads made of
//! arbitrary bytes and arbitrary registers: garbage return addresses and saved rbps,
//! rbp-based and dereferenced CFAs, signal frames, cycles, stacks cut by the image's end.
#![no_main]
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use profiler::{
    host::memory::ImageMemory,
    native::stack::{MAX_FRAMES, StackRegs as Regs, Unwinder},
};

/// Where the stack image is mapped.
const STACK: u64 = 0x7ff0_0000_0000;

#[derive(Arbitrary, Debug)]
struct Input {
    /// pc relative to a function of ours (so that it lands in code with rows, or near it).
    pc_delta: i32,
    exact_leaf: bool,
    sp_offset: u16,
    bp: u64,
    max: u8,
    stack: Vec<u8>,
}

fn unwinder() -> &'static Unwinder {
    static U: OnceLock<Unwinder> = OnceLock::new();
    U.get_or_init(|| {
        let mut u = Unwinder::default();
        assert!(u.register(std::process::id()));
        u
    })
}

fuzz_target!(|input: Input| {
    let here = unwinder as *const () as u64;
    let pc = here.wrapping_add_signed(i64::from(input.pc_delta)).wrapping_add(u64::from(!input.exact_leaf));
    let regs = Regs { pc, sp: STACK + u64::from(input.sp_offset), bp: input.bp };
    let mem = ImageMemory { base: STACK, image: input.stack };
    let max = usize::from(input.max).min(MAX_FRAMES);
    let walk = unwinder().walk(std::process::id(), regs, &mem, max);
    assert!(walk.frames.len() <= max.max(1));
});
