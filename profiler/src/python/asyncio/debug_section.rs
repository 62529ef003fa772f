//! CPython 3.14+'s own map of where asyncio keeps its tasks: the `_AsyncioDebug` struct
//! (`Py_AsyncioModuleDebugOffsets` in `Modules/_asynciomodule.c`) that the `_asyncio` module
//! places in an ELF section of its own, `.AsyncioDebug`, for out-of-process readers such as
//! `python -m asyncio ps`. From 3.14 native tasks are no longer in `asyncio.tasks`' registries:
//! each lives in a linked list (`llist_node` `task_node`) headed in its thread's
//! `_PyThreadStateImpl.asyncio_tasks_head`, or in the interpreter's list once that thread has
//! finished; the thread state also holds the task it is running (`asyncio_running_task`).
//!
//! Where the section is depends on the build: Debian's 3.14 builds `_asyncio` as an extension
//! module (`lib-dynload/_asyncio.cpython-314-*.so`, mapped once asyncio is imported), its 3.15
//! links it into the `python3.15` executable. Both are found the same way: every mapped file
//! whose name says it may hold it is opened through `/proc/PID/map_files` (the very file mapped,
//! in whatever mount namespace) and its section table read. The struct is constant data
//! initialised at build time, so the file's bytes are the process's.
//!
//! Its values are offsets into structs whose sizes it also gives; each is checked against them
//! (and against sizes no real build has) before anything is read with it.
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

/// The section's name.
pub const SECTION: &str = ".AsyncioDebug";
/// Thirteen `uint64_t`s: the task object's (size, name, awaited_by, is_task,
/// awaited_by_is_set, coro, node), the interpreter's (size, tasks head), the thread state's
/// (size, running loop, running task, tasks head). Later versions may append.
pub const SECTION_LEN: usize = 13 * 8;

/// Sizes no real build comes near: a larger value is not an offset table.
const MAX_TASK_SIZE: u64 = 4096;
const MAX_THREAD_STATE_SIZE: u64 = 1 << 16;
const MAX_INTERPRETER_SIZE: u64 = 1 << 24;

/// Offsets of `_AsyncioDebug`, each checked to lie inside its struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncioDebugOffsets {
    /// `TaskObj.task_name`.
    pub task_name: u64,
    /// `TaskObj.task_is_task` (a char, 1 for tasks: a future has none).
    pub task_is_task: u64,
    /// `TaskObj.task_coro`.
    pub task_coro: u64,
    /// `TaskObj.task_node`: the task's `llist_node {next, prev}` in its list.
    pub task_node: u64,
    /// `PyInterpreterState.asyncio_tasks_head`: tasks of threads that have finished.
    pub interp_tasks_head: u64,
    /// `_PyThreadStateImpl.asyncio_running_loop`.
    pub tstate_running_loop: u64,
    /// `_PyThreadStateImpl.asyncio_running_task`.
    pub tstate_running_task: u64,
    /// `_PyThreadStateImpl.asyncio_tasks_head`: the list head (an `llist_node`).
    pub tstate_tasks_head: u64,
}

impl AsyncioDebugOffsets {
    /// The section's bytes, read as the struct; None when they cannot be one (too short, an
    /// offset outside its struct, a size no build has).
    pub fn parse(section: &[u8]) -> Option<Self> {
        let word =
            |i: usize| -> Option<u64> { Some(u64::from_le_bytes(section.get(i * 8..i * 8 + 8)?.try_into().ok()?)) };
        let task_size = word(0).filter(|&s| (16..=MAX_TASK_SIZE).contains(&s))?;
        let interp_size = word(7).filter(|&s| (16..=MAX_INTERPRETER_SIZE).contains(&s))?;
        let tstate_size = word(9).filter(|&s| (16..=MAX_THREAD_STATE_SIZE).contains(&s))?;
        // A field of `width` bytes that fits in a struct of `size`, past the object header.
        let inside = |at: u64, width: u64, size: u64| (16..=size.checked_sub(width)?).contains(&at).then_some(at);
        Some(AsyncioDebugOffsets {
            task_name: inside(word(1)?, 8, task_size)?,
            task_is_task: inside(word(3)?, 1, task_size)?,
            task_coro: inside(word(5)?, 8, task_size)?,
            task_node: inside(word(6)?, 16, task_size)?,
            interp_tasks_head: inside(word(8)?, 16, interp_size)?,
            tstate_running_loop: inside(word(10)?, 8, tstate_size)?,
            tstate_running_task: inside(word(11)?, 8, tstate_size)?,
            tstate_tasks_head: inside(word(12)?, 16, tstate_size)?,
        })
    }

    /// The offsets in an ELF image's `.AsyncioDebug` section, if it has one.
    pub fn from_elf(data: &[u8]) -> Option<Self> {
        let elf = object::File::parse(data).ok()?;
        let section = elf.section_by_name(SECTION)?;
        Self::parse(section.data().ok()?)
    }

    /// Looks for the section in the files process `pid` maps: its `_asyncio` extension module,
    /// libpython, or its interpreter executable (`interpreter`: the path it was found at).
    pub fn find(pid: u32, interpreter: &Path) -> Option<Self> {
        let maps = procfs::process::Process::new(pid as i32).ok()?.maps().ok()?;
        let mut tried: Vec<PathBuf> = Vec::new();
        for m in maps.iter().filter(|m| m.offset == 0) {
            let procfs::process::MMapPath::Path(path) = &m.pathname else { continue };
            let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
            let candidate = (name.starts_with("_asyncio.") && name.contains(".so"))
                || name.starts_with("libpython3")
                || path == interpreter;
            if !candidate || tried.contains(path) {
                continue;
            }
            tried.push(path.clone());
            let file = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.address.0, m.address.1));
            let Ok(file) = std::fs::File::open(&file) else { continue };
            // SAFETY: a read-only private mapping of a file a live process has mapped (its own
            // code), dropped before returning; such files are replaced by rename, not rewritten.
            let Ok(map) = (unsafe { memmap2::Mmap::map(&file) }) else { continue };
            if let Some(found) = Self::from_elf(&map[..]) {
                log::debug!("pid {pid}: asyncio's debug offsets from {}: {found:?}", path.display());
                return Some(found);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian sid's `_asyncio.cpython-314-x86_64-linux-gnu.so` (3.14.x), as its section reads.
    const DEBIAN_314: [u64; 13] = [168, 136, 96, 108, 109, 128, 152, 0x37248, 0x2a80, 0x3a8, 0x360, 0x368, 0x370];

    fn bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn section_of_3_14_parses() {
        let o = AsyncioDebugOffsets::parse(&bytes(&DEBIAN_314)).expect("parses");
        assert_eq!((o.task_name, o.task_coro, o.task_node, o.task_is_task), (136, 128, 152, 108));
        assert_eq!((o.tstate_running_task, o.tstate_tasks_head, o.interp_tasks_head), (0x368, 0x370, 0x2a80));
    }

    #[test]
    fn offsets_outside_their_struct_are_refused() {
        assert!(AsyncioDebugOffsets::parse(&bytes(&DEBIAN_314[..12])).is_none());
        let mut w = DEBIAN_314;
        w[6] = 160; // task_node's 16 bytes past the 168-byte task
        assert!(AsyncioDebugOffsets::parse(&bytes(&w)).is_none());
        let mut w = DEBIAN_314;
        w[9] = 1 << 40; // no thread state is that big
        assert!(AsyncioDebugOffsets::parse(&bytes(&w)).is_none());
        assert!(AsyncioDebugOffsets::from_elf(b"not an ELF file").is_none());
    }
}
