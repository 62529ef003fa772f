//! Is a process CPython, which version, and where is its `_PyRuntime`?
//!
//! The interpreter is the mapped file that defines `_PyRuntime`: `libpython3.X.so` for shared
//! builds (pyenv, uwsgi, embedders), or the executable itself for static ones (Debian's
//! python3). Files are opened through `/proc/PID/map_files`, which works across mount
//! namespaces and for deleted files. The version comes from the `Py_Version` symbol (3.11+),
//! else from the file name; for 3.13+ it is checked against `_Py_DebugOffsets`, which also
//! says whether the build is free-threaded and is kept for comparing the layout table with
//! (`offsets::for_process`).
use std::{collections::HashMap, fs::File, path::PathBuf};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadRef};
use procfs::process::{MMapPath, Process};

use super::{PyVersion, offsets};
use crate::host::memory::{Memory, ReadMemory};

/// What a process turned out to be.
#[derive(Debug, Clone)]
pub enum Inspection {
    NotPython,
    Python(Interpreter),
    /// CPython, but not one we can unwind (named version, and why).
    Unsupported {
        version: String,
        reason: String,
    },
}

/// A CPython interpreter as loaded in one process.
#[derive(Debug, Clone)]
pub struct Interpreter {
    pub version: PyVersion,
    /// `_PyRuntime` in the process's address space.
    pub runtime_addr: u64,
    /// Address ranges of the interpreter's own code, to tell interpreter frames from native
    /// code in C extensions and libraries.
    pub code_ranges: Vec<(u64, u64)>,
    /// Address ranges of the eval loop (`_PyEval_EvalFrameDefault` and its `.cold` part): the
    /// native frames that run Python frames, in mixed stacks (empty if the binary has no such
    /// symbols).
    pub eval_ranges: Vec<(u64, u64)>,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// 3.13+: the process's `_Py_DebugOffsets` (the start of `_PyRuntime`), as many bytes as
    /// the version's layout of it has.
    pub debug_offsets: Option<Vec<u8>>,
}

/// Facts about an ELF file that do not depend on where it is loaded.
#[derive(Debug, Clone)]
pub struct ElfFacts {
    pub runtime_vaddr: Option<u64>,
    pub py_version_hex: Option<u32>,
    /// Virtual address of the first loadable segment, page aligned: what file offset 0 maps to.
    pub base_vaddr: u64,
    /// (start, end) virtual addresses of the eval loop's code.
    pub eval_vaddrs: Vec<(u64, u64)>,
}

/// Caches ELF facts per (device, inode), so each interpreter binary is parsed once.
#[derive(Default)]
pub struct Inspector {
    elf_cache: HashMap<(u64, u64), Option<ElfFacts>>,
}

fn is_libpython(name: &str) -> bool {
    name.starts_with("libpython3") && name.contains(".so")
}

fn is_python_exe(name: &str) -> bool {
    name.starts_with("python")
}

/// "3.X" from a file name like `python3.11`, `libpython3.12.so.1.0`, `libpython3.13d.so`.
pub fn version_from_name(name: &str) -> Option<(u8, u8)> {
    let rest = &name[name.find("python3.")? + "python3.".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((3, digits.parse().ok()?))
}

/// Files are mapped, not read: libpython with DWARF is tens of MB, of which only the symbol
/// tables (1-2 MB) are touched, page by page. A read cache (`object::ReadCache`) did one read
/// syscall per symbol name: 56 ms per libpython on this host, 14 s under emulation. The mapping
/// is private and read-only, and dropped when the facts are out; a file truncated meanwhile
/// would fault, but these are the files of running interpreters, which nothing rewrites in place
/// (package managers replace them by rename).
fn read_elf_facts(file: File) -> Option<ElfFacts> {
    // SAFETY: read-only private mapping of a file in use as code by a live process (above).
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    parse_elf_facts(&map[..])
}

/// [`ElfFacts`] of an ELF image in memory (the fuzzer's entry point).
pub fn elf_facts(data: &[u8]) -> Option<ElfFacts> {
    parse_elf_facts(data)
}

fn parse_elf_facts<'a, R: ReadRef<'a>>(data: R) -> Option<ElfFacts> {
    let elf = object::File::parse(data).ok()?;
    let mut runtime_vaddr = None;
    let mut py_version_hex = None;
    let mut eval_vaddrs = Vec::new();
    for sym in elf.dynamic_symbols().chain(elf.symbols()) {
        if let Ok(name) = sym.name()
            && (name == EVAL_FUNCTION || name.strip_prefix(EVAL_FUNCTION).is_some_and(|rest| rest.starts_with(".cold")))
            && sym.address() != 0
            && !eval_vaddrs.contains(&(sym.address(), sym.address() + sym.size().max(1)))
        {
            eval_vaddrs.push((sym.address(), sym.address() + sym.size().max(1)));
        }
        match sym.name() {
            Ok("_PyRuntime") if runtime_vaddr.is_none() => runtime_vaddr = Some(sym.address()),
            Ok("Py_Version") if py_version_hex.is_none() => {
                py_version_hex = sym
                    .section_index()
                    .and_then(|i| elf.section_by_index(i).ok())
                    .and_then(|s| s.data_range(sym.address(), 4).ok().flatten())
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
            _ => {}
        }
    }
    let base_vaddr = elf.segments().map(|s| s.address()).min()? & !0xfff;
    Some(ElfFacts { runtime_vaddr, py_version_hex, base_vaddr, eval_vaddrs })
}

/// The eval loop: each of its calls runs Python frames (one per call before 3.11).
const EVAL_FUNCTION: &str = "_PyEval_EvalFrameDefault";

impl Inspector {
    fn elf_facts(&mut self, path: &std::path::Path) -> Option<ElfFacts> {
        use std::os::unix::fs::MetadataExt;
        let file = File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        self.elf_cache
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| {
                let started = std::time::Instant::now();
                let facts = read_elf_facts(file);
                log::debug!("{}: ELF symbols read in {:?}", path.display(), started.elapsed());
                facts
            })
            .clone()
    }

    pub fn inspect(&mut self, pid: u32) -> Inspection {
        let Ok(process) = Process::new(pid as i32) else { return Inspection::NotPython };
        let Ok(maps) = process.maps() else { return Inspection::NotPython };
        let exe_name = process
            .exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();

        // Candidate files, each with the mappings that belong to it.
        let mut candidates: Vec<(PathBuf, String)> = Vec::new();
        for m in maps.iter() {
            if let MMapPath::Path(path) = &m.pathname {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let wanted = is_libpython(&name) || (name == exe_name && is_python_exe(&name));
                if wanted && !candidates.iter().any(|(p, _)| p == path) {
                    candidates.push((path.clone(), name));
                }
            }
        }
        // Shared libpython first: a python executable linked against it has no _PyRuntime.
        candidates.sort_by_key(|(_, name)| !is_libpython(name));

        for (path, name) in candidates {
            let mappings: Vec<_> =
                maps.iter().filter(|m| matches!(&m.pathname, MMapPath::Path(p) if *p == path)).collect();
            let Some(first) = mappings.iter().find(|m| m.offset == 0) else { continue };
            // An interpreter runs its code: a libpython mapped without any executable part is
            // only being read (another profiler's symbolizer, a file scanner), not run.
            if !mappings.iter().any(|m| m.perms.contains(procfs::process::MMPermissions::EXECUTE)) {
                continue;
            }
            // map_files opens the very file that is mapped, in whatever mount namespace.
            let via_map_files =
                PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", first.address.0, first.address.1));
            let via_root = PathBuf::from(format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(&path));
            let Some(facts) = self.elf_facts(&via_map_files).or_else(|| self.elf_facts(&via_root)) else { continue };
            let Some(runtime_vaddr) = facts.runtime_vaddr else { continue };
            let bias = first.address.0.wrapping_sub(facts.base_vaddr);
            let runtime_addr = runtime_vaddr.wrapping_add(bias);

            let (version, debug_offsets) =
                match interpreter_version(facts.py_version_hex, &name, &path, &Memory::new(pid), runtime_addr) {
                    Ok(found) => found,
                    Err(unsupported) => return unsupported,
                };
            let code_ranges = mappings
                .iter()
                .filter(|m| m.perms.contains(procfs::process::MMPermissions::EXECUTE))
                .map(|m| (m.address.0, m.address.1))
                .collect();
            let eval_ranges =
                facts.eval_vaddrs.iter().map(|&(lo, hi)| (lo.wrapping_add(bias), hi.wrapping_add(bias))).collect();
            return Inspection::Python(Interpreter {
                version,
                runtime_addr,
                code_ranges,
                eval_ranges,
                path,
                debug_offsets,
            });
        }
        Inspection::NotPython
    }
}

/// The interpreter's version: `Py_Version` (3.11+), else the file name; for 3.13+ checked
/// against (and made exact by) `_Py_DebugOffsets` read from the process's memory, whose bytes
/// come back too. An interpreter we cannot handle is the `Inspection` to report.
pub fn interpreter_version(
    py_version_hex: Option<u32>,
    name: &str,
    path: &std::path::Path,
    mem: &impl ReadMemory,
    runtime_addr: u64,
) -> Result<(PyVersion, Option<Vec<u8>>), Inspection> {
    let mut version = match py_version_hex {
        Some(hex) => PyVersion::from_hex(hex),
        None => match version_from_name(name) {
            Some((major, minor)) => PyVersion { major, minor, patch: None, free_threaded: false },
            None => {
                return Err(Inspection::Unsupported {
                    version: "unknown".into(),
                    reason: format!("cannot tell the CPython version of {}", path.display()),
                });
            }
        },
    };
    let mut debug_offsets = None;
    if version.minor >= 13 {
        match read_debug_offsets(mem, runtime_addr, version) {
            Ok((hex, free_threaded, bytes)) => {
                version = PyVersion { free_threaded, ..PyVersion::from_hex(hex as u32) };
                debug_offsets = Some(bytes);
            }
            Err(reason) => return Err(Inspection::Unsupported { version: version.to_string(), reason }),
        }
    }
    Ok((version, debug_offsets))
}

/// 3.13+ starts `_PyRuntime` with `_Py_DebugOffsets`: cookie "xdebugpy", the exact version,
/// and whether the build is free-threaded (its own layout). Returns the version, the build and
/// the struct's bytes (only its head for a version without a known layout of it).
fn read_debug_offsets(
    mem: &impl ReadMemory,
    runtime_addr: u64,
    version: PyVersion,
) -> Result<(u64, bool, Vec<u8>), String> {
    let mut head = [0u8; 24];
    if !mem.read(runtime_addr, &mut head) {
        return Err("cannot read _Py_DebugOffsets".into());
    }
    let (hex, free_threaded) = check_debug_head(&head)?;
    let size = offsets::debug_layout(version.major, version.minor, free_threaded)
        .map_or(head.len(), |l| usize::from(l.size))
        .max(head.len());
    let mut bytes = vec![0u8; size];
    if !mem.read(runtime_addr, &mut bytes) {
        return Err("cannot read _Py_DebugOffsets".into());
    }
    Ok((hex, free_threaded, bytes))
}

/// (version, free-threaded) from the head of `_Py_DebugOffsets`.
fn check_debug_head(head: &[u8; 24]) -> Result<(u64, bool), String> {
    if &head[..8] != b"xdebugpy" {
        return Err("_PyRuntime does not start with the _Py_DebugOffsets cookie".into());
    }
    let version = u64::from_ne_bytes(head[8..16].try_into().unwrap());
    match u64::from_ne_bytes(head[16..24].try_into().unwrap()) {
        0 => Ok((version, false)),
        1 => Ok((version, true)),
        other => Err(format!("_Py_DebugOffsets.free_threaded is {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_from_name("python3.11"), Some((3, 11)));
        assert_eq!(version_from_name("libpython3.12.so.1.0"), Some((3, 12)));
        assert_eq!(version_from_name("libpython3.13d.so"), Some((3, 13)));
        assert_eq!(version_from_name("python3"), None);
        assert_eq!(version_from_name("ls"), None);
    }

    #[test]
    fn this_process_is_not_python() {
        assert!(matches!(Inspector::default().inspect(std::process::id()), Inspection::NotPython));
    }
}
