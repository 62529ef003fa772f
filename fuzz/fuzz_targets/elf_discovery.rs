//! Interpreter discovery on an arbitrary ELF file: `_PyRuntime`, `Py_Version` and the load base
//! from the symbol tables (object crate), then the version check, which for 3.13+ reads
//! `_Py_DebugOffsets` from the process's memory (here: the file's bytes mapped at the load base,
//! as a static python's data would be). Seeds are small real shared objects (`cargo xtask fuzz`
//! compiles them). Also the 3.14+ `.AsyncioDebug` section's lookup in the same file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::{
    host::memory::ImageMemory,
    python::{asyncio::debug_section::AsyncioDebugOffsets, discover},
};

const NAMES: [&str; 4] = ["libpython3.13.so.1.0", "python3.11", "python3", "libpython3.8d.so"];

fuzz_target!(|data: &[u8]| {
    let _ = discover::version_from_name(&String::from_utf8_lossy(&data[..data.len().min(32)]));
    let _ = AsyncioDebugOffsets::from_elf(data);
    let Some(facts) = discover::elf_facts(data) else { return };
    let Some(runtime_vaddr) = facts.runtime_vaddr else { return };
    let load = 0x5500_0000_0000u64;
    let mem = ImageMemory { base: load, image: data.to_vec() };
    let runtime_addr = runtime_vaddr.wrapping_sub(facts.base_vaddr).wrapping_add(load);
    for name in NAMES {
        let _ =
            discover::interpreter_version(facts.py_version_hex, name, std::path::Path::new(name), &mem, runtime_addr);
    }
});
