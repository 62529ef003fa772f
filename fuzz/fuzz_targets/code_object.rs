//! Code objects read out of a target's memory, as `PythonProcess::resolve` reads them: type
//! check, fields, name and file strings, line table, then the line of a frame's instruction.
//! The memory is a valid code object of the chosen version, corrupted by the fuzzer's pokes, or
//! raw bytes.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use profiler::{
    host::memory::ImageMemory,
    python::{PyVersion, code},
};
use pyebpf_fuzz::{BASE, Objects, Poke, Text, offsets};

#[derive(Arbitrary, Debug)]
struct Input {
    version: u8,
    name: Text,
    filename: Text,
    firstlineno: i32,
    flags: i32,
    linetable: Vec<u8>,
    first_traceable: i32,
    code_units: u8,
    /// The frame's instruction: relative to the first code unit from 3.11, `f_lasti` before.
    instr: i64,
    generator: bool,
    pokes: Vec<Poke>,
    /// Instead of the built image, these bytes.
    raw: Option<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    let (minor, o) = offsets(input.version);
    let mut objects = match Objects::new(o, 1 << 16) {
        Some(objects) => objects,
        None => return,
    };
    let Some(addr) = objects.code_object(
        &input.name,
        &input.filename,
        input.firstlineno,
        input.flags,
        &input.linetable,
        input.first_traceable,
        input.code_units as usize,
    ) else {
        return;
    };
    for poke in &input.pokes {
        objects.img.poke(poke);
    }
    let mem = match input.raw {
        Some(image) => ImageMemory { base: BASE, image },
        None => objects.img.memory(),
    };
    let mut code_type = None;
    if !code::is_code(&mem, o, addr, &mut code_type) {
        return;
    }
    let Some(code) = code::read_code(&mem, o, addr) else { return };
    let instr = if o.code_code_adaptive >= 0 {
        addr.wrapping_add(o.code_code_adaptive as u64).wrapping_add(input.instr as u64)
    } else {
        input.instr as u64
    };
    let version = PyVersion { major: 3, minor, patch: None, free_threaded: false };
    let _ = code.line(version, instr, input.generator);
    let _ = code.is_coroutine();
});
