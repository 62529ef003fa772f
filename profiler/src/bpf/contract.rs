//! The built eBPF object against `profiler_common`: every map, program and global userspace
//! addresses by name exists in the object with the shape userspace expects, and the object has
//! nothing the lists do not name. The kernel side names these by its statics' and functions'
//! identifiers, which no compiler checks against the strings in `names`: a rename on one side
//! fails here, not at load time on a user's machine.
use std::collections::BTreeMap;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};
use profiler_common::{
    InFlight, OffCpuKey, OffCpuSum, PyProcInfo, ThreadTimes, TstateEntry, UnwindScratch,
    exit_gate::ExitGate,
    map_size, names,
    sample_record::SampleRecord,
    scratch_slot, task_iter,
    unwind::{Mapping, PageEntry, ProcMaps, RuleRec, TableInfo},
};

use super::EBPF_OBJECT;

/// `bpf_map_def` (aya-ebpf's legacy `maps` section): type, key size, value size, max entries,
/// flags, id, pinning; `u32` each.
const MAP_DEF_LEN: usize = 28;

// linux/bpf.h `enum bpf_map_type`.
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

#[derive(Debug, PartialEq, Eq)]
struct MapDef {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

/// What is in the object, by symbol: maps with their definitions, programs with their
/// sections, globals with their sizes.
#[derive(Default)]
struct Contents {
    maps: BTreeMap<String, MapDef>,
    programs: BTreeMap<String, String>,
    globals: BTreeMap<String, usize>,
}

fn contents() -> Contents {
    let file = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object parses as ELF");
    let mut out = Contents::default();
    for symbol in file.symbols() {
        let (Ok(name), Some(index)) = (symbol.name(), symbol.section_index()) else { continue };
        let section = file.section_by_index(index).expect("a symbol's section exists");
        let section_name = section.name().expect("section names are UTF-8");
        match (symbol.kind(), section_name) {
            (SymbolKind::Data, "maps") => {
                let data = section.data().expect("the maps section has data");
                let at = symbol.address() as usize;
                let def = data.get(at..at + MAP_DEF_LEN).unwrap_or_else(|| panic!("map {name}'s definition"));
                let word = |i: usize| u32::from_ne_bytes(def[i * 4..i * 4 + 4].try_into().unwrap());
                let def = MapDef { map_type: word(0), key_size: word(1), value_size: word(2), max_entries: word(3) };
                out.maps.insert(name.to_owned(), def);
            }
            (SymbolKind::Data, ".maps") => panic!("map {name} is BTF-defined: teach this test to read .maps"),
            (SymbolKind::Data, ".rodata" | ".data" | ".bss") => {
                out.globals.insert(name.to_owned(), symbol.size() as usize);
            }
            // Program sections; `.text` holds helpers the programs call (memset, memcpy...).
            (SymbolKind::Text, section) if section != ".text" => {
                out.programs.insert(name.to_owned(), section.to_owned());
            }
            _ => {}
        }
    }
    out
}

#[test]
fn every_map_is_named_and_shaped_as_userspace_reads_it() {
    let u32_size = size_of::<u32>() as u32;
    let size = |n: usize| n as u32;
    // The key and value types are the ones `Bpf` opens each map with.
    let expected = BTreeMap::from([
        (names::MAP_EVENTS, (BPF_MAP_TYPE_RINGBUF, 0, 0, map_size::EVENTS_DEFAULT_BYTES)),
        (names::MAP_STATS, (BPF_MAP_TYPE_PERCPU_ARRAY, u32_size, size(size_of::<u64>()), map_size::STATS)),
        (names::MAP_TARGET_PIDS, (BPF_MAP_TYPE_HASH, u32_size, size(size_of::<u8>()), map_size::TARGET_PIDS)),
        (names::MAP_FOLLOWED, (BPF_MAP_TYPE_HASH, u32_size, size(size_of::<u8>()), map_size::FOLLOWED)),
        (names::MAP_PY_PROCS, (BPF_MAP_TYPE_HASH, u32_size, size(size_of::<PyProcInfo>()), map_size::PY_PROCS)),
        (
            names::MAP_TSTATE_CACHE,
            (BPF_MAP_TYPE_LRU_HASH, u32_size, size(size_of::<TstateEntry>()), map_size::TSTATE_CACHE),
        ),
        (
            names::MAP_OFFCPU_SUMS,
            (BPF_MAP_TYPE_HASH, size(size_of::<OffCpuKey>()), size(size_of::<OffCpuSum>()), map_size::OFFCPU_SUMS),
        ),
        (
            names::MAP_THREAD_TIMES,
            (BPF_MAP_TYPE_LRU_HASH, u32_size, size(size_of::<ThreadTimes>()), map_size::THREAD_TIMES),
        ),
        (names::MAP_IN_FLIGHT, (BPF_MAP_TYPE_LRU_HASH, u32_size, size(size_of::<InFlight>()), map_size::IN_FLIGHT)),
        (names::MAP_EXIT_GATE, (BPF_MAP_TYPE_PERCPU_ARRAY, u32_size, size(size_of::<ExitGate>()), map_size::EXIT_GATE)),
        (names::MAP_UNWIND_ROWS, (BPF_MAP_TYPE_ARRAY, u32_size, size(size_of::<u64>()), map_size::UNWIND_ROW_PAIRS)),
        (names::MAP_UNWIND_PAGES, (BPF_MAP_TYPE_ARRAY, u32_size, size(size_of::<PageEntry>()), map_size::UNWIND_PAGES)),
        (names::MAP_UNWIND_RULES, (BPF_MAP_TYPE_ARRAY, u32_size, size(size_of::<RuleRec>()), map_size::UNWIND_RULES)),
        (
            names::MAP_UNWIND_TABLES,
            (BPF_MAP_TYPE_ARRAY, u32_size, size(size_of::<TableInfo>()), map_size::UNWIND_TABLES),
        ),
        (
            names::MAP_UNWIND_MAPPINGS,
            (BPF_MAP_TYPE_ARRAY, u32_size, size(size_of::<Mapping>()), map_size::UNWIND_MAPPINGS),
        ),
        (names::MAP_UNWIND_PROCS, (BPF_MAP_TYPE_HASH, u32_size, size(size_of::<ProcMaps>()), map_size::UNWIND_PROCS)),
        (
            names::MAP_UNWIND_SCRATCH,
            (BPF_MAP_TYPE_PERCPU_ARRAY, u32_size, size(size_of::<UnwindScratch>()), map_size::UNWIND_SCRATCH),
        ),
        (names::MAP_UNWIND_PROGS_PERF, (BPF_MAP_TYPE_PROG_ARRAY, u32_size, u32_size, map_size::UNWIND_PROGS)),
        (names::MAP_UNWIND_PROGS_RAW_TP, (BPF_MAP_TYPE_PROG_ARRAY, u32_size, u32_size, map_size::UNWIND_PROGS)),
        // profiler-ebpf's python::FrameWindow: `lo`, `hi` and a 1 KiB window.
        (names::MAP_PY_WINDOWS, (BPF_MAP_TYPE_PERCPU_ARRAY, u32_size, size(2 * 8 + 1024), scratch_slot::COUNT)),
        (
            names::MAP_SAMPLE_OUT,
            (BPF_MAP_TYPE_PERCPU_ARRAY, u32_size, size(size_of::<SampleRecord>()), scratch_slot::COUNT),
        ),
        (
            task_iter::MAP_TASK_SCRATCH,
            (BPF_MAP_TYPE_PERCPU_ARRAY, u32_size, size(size_of::<task_iter::TaskRecord>()), 1),
        ),
    ]);
    let names: Vec<&str> = expected.keys().copied().collect();
    let mut listed = names::MAPS.to_vec();
    listed.extend(task_iter::MAPS);
    listed.sort_unstable();
    assert_eq!(names, listed, "names::MAPS and this test's table list different maps");

    let found = contents().maps;
    let in_object: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(in_object, names, "maps in the object vs names::MAPS");
    for (name, (map_type, key_size, value_size, max_entries)) in expected {
        assert_eq!(found[name], MapDef { map_type, key_size, value_size, max_entries }, "map {name}");
    }
}

#[test]
fn every_program_is_named_and_in_its_section() {
    let found = contents().programs;
    let mut in_object: Vec<&str> = found.keys().map(String::as_str).collect();
    let mut listed = names::PROGRAMS.to_vec();
    listed.extend(task_iter::PROGRAMS);
    in_object.sort_unstable();
    listed.sort_unstable();
    assert_eq!(in_object, listed, "programs in the object vs names::PROGRAMS");
    // aya-ebpf puts a raw tracepoint program in `raw_tp/TRACEPOINT`; userspace attaches it to
    // the tracepoint `names::RAW_TRACEPOINTS` gives, which must be that one.
    for (program, tracepoint) in names::RAW_TRACEPOINTS {
        assert_eq!(found[program], format!("raw_tp/{tracepoint}"), "program {program}");
    }
    assert_eq!(found[names::PROG_ON_CPU], "perf_event");
    // The unwinders are tail-called, never attached: a program array holds programs of its
    // caller's type only.
    assert_eq!(found[names::PROG_UNWIND_PERF], "perf_event");
    for (program, _) in names::RAW_TP_UNWINDERS {
        assert_eq!(found[program], "raw_tp", "program {program}");
    }
    for program in task_iter::PROGRAMS {
        assert_eq!(found[program], format!("iter/{}", task_iter::ITER_TARGET), "program {program}");
    }
}

#[test]
fn every_global_is_named_with_its_size() {
    let found = contents().globals;
    let listed: BTreeMap<String, usize> =
        names::GLOBALS.iter().chain(&task_iter::GLOBALS).map(|&(name, size)| (name.to_owned(), size)).collect();
    // A global userspace does not set would keep its zero initialiser; one it sets that the
    // object lacks fails the load (`override_global` with `must_exist`).
    assert_eq!(found, listed, "globals in the object vs names::GLOBALS");
}
