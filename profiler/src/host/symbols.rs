//! Native symbols: user frames per process and kernel frames, through blazesym.
//!
//! Addresses are collected as samples arrive and symbolized in batches (one blazesym call per
//! process per batch), then cached for the rest of the run. Batches run every few hundred
//! milliseconds, so a process that exits soon after it was sampled has usually been symbolized
//! already; if not, its frames stay `[unknown]`.
//!
//! A user address is first checked against the process's executable mappings (its
//! /proc/PID/maps, cached per process, read again when an address falls outside them: a library
//! loaded since; see [`MapsCache`] for how often). Frame-pointer walks through code built without frame pointers return data
//! addresses too; symbolized, they took the name of the nearest symbol, even a variable's
//! (`_PyRuntime`). An address outside every executable mapping is [`UserSymbol::NotCode`].
//!
//! blazesym keeps every binary it parsed (keyed by device and inode, shared by the processes
//! that map it) and is handed each process's mappings once, when they are first or newly
//! read here, instead of reading /proc/PID/maps on every batch. When a process exits or
//! execs, its files are released ([`Symbols::forget`]): a file's parsed symbols live as long as
//! a process we symbolized maps it, so memory follows the live processes, and a long-running
//! session no longer has to drop everything now and then (which re-parsed libc, libpython and
//! kallsyms every ten seconds).
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer, cache,
        evict::{self, Evict},
        source::{Kernel, Process, Source},
    },
};
use foldhash::HashMap as FastMap;

use crate::host::procinfo::{self, Mapping};

/// What an address of a process is: its symbol, else the file mapped there (when known) and
/// the address's offset in that file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NativeSymbol {
    pub name: Option<String>,
    pub module: Option<String>,
    pub offset: Option<u64>,
}

/// A user stack entry, symbolized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSymbol {
    /// In an executable mapping.
    Code(NativeSymbol),
    /// Outside every executable mapping of the process, by a read of its maps made after the
    /// address was seen: not a return address.
    NotCode,
}

pub struct Symbols {
    symbolizer: Symbolizer,
    /// pid → address as looked up → what it is (per process, so that forgetting one is not a
    /// walk of every process's addresses).
    /// foldhash, not SipHash: every event's frames are looked up here (a kernel stack is ~15
    /// look-ups), thousands of events a second on a `--all` host.
    user: FastMap<u32, FastMap<u64, UserSymbol>>,
    /// pid → its mappings as last read, and when they may be read again.
    maps: HashMap<u32, MapsCache>,
    /// Kernel address → its symbol (None: not in kallsyms).
    kernel: FastMap<u64, Option<String>>,
    pending_user: HashMap<u32, BTreeSet<u64>>,
    pending_kernel: BTreeSet<u64>,
    /// Processes whose mappings blazesym holds (as last read here).
    vmas_given: HashSet<u32>,
    /// Those of them that were in our mount namespace then: the paths their maps list name
    /// the same files here (see [`symbolize_exited`]).
    same_mount_ns: HashSet<u32>,
    /// Our own mount namespace (`/proc/self/ns/mnt`'s link).
    own_mount_ns: Option<std::path::PathBuf>,
}

/// Return addresses point after the call; look up the call itself (the leaf is a real IP).
fn lookup_addr(addr: u64, is_leaf: bool) -> u64 {
    if is_leaf { addr } else { addr.saturating_sub(1) }
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbols {
    pub fn new() -> Self {
        let symbolizer =
            Symbolizer::builder().enable_code_info(false).enable_inlined_fns(false).enable_demangling(true).build();
        Self {
            symbolizer,
            user: FastMap::default(),
            maps: HashMap::new(),
            kernel: FastMap::default(),
            pending_user: HashMap::new(),
            pending_kernel: BTreeSet::new(),
            vmas_given: HashSet::new(),
            same_mount_ns: HashSet::new(),
            own_mount_ns: std::fs::read_link("/proc/self/ns/mnt").ok(),
        }
    }

    /// Remembers one user address (`leaf`: the sampled instruction, else a return address).
    pub fn note_user(&mut self, pid: u32, addr: u64, leaf: bool) {
        let addr = lookup_addr(addr, leaf);
        if !self.user.get(&pid).is_some_and(|known| known.contains_key(&addr)) {
            self.pending_user.entry(pid).or_default().insert(addr);
        }
    }

    pub fn note_kernel_stack(&mut self, stack: &[u64]) {
        for (i, &addr) in stack.iter().enumerate() {
            let a = lookup_addr(addr, i == 0);
            if !self.kernel.contains_key(&a) {
                self.pending_kernel.insert(a);
            }
        }
    }

    /// Symbolizes everything noted since the last call, but for addresses outside the known
    /// mappings of a process whose maps were read too recently (see [`MapsCache`]): those wait
    /// for a later call.
    pub fn resolve_pending(&mut self) {
        self.resolve(false);
    }

    /// Symbolizes everything noted so far, reading maps again wherever an address needs it:
    /// before a profile is built, so that no address waits past it.
    pub fn resolve_all(&mut self) {
        self.resolve(true);
    }

    fn resolve(&mut self, no_wait: bool) {
        let now = Instant::now();
        for (pid, addrs) in std::mem::take(&mut self.pending_user) {
            let cached = self.maps.remove(&pid);
            let mut maps = ProcessMaps { pid, cached, read: MapsRead::NotYet, now, new_code: false, no_wait };
            let mut code = Vec::with_capacity(addrs.len());
            let mut deferred = BTreeSet::new();
            let known = self.user.entry(pid).or_default();
            for addr in addrs {
                match maps.place(addr) {
                    Place::NotCode => {
                        known.insert(addr, UserSymbol::NotCode);
                    }
                    Place::Code | Place::Unknown => code.push(addr),
                    Place::Later => {
                        deferred.insert(addr);
                    }
                }
            }
            if !deferred.is_empty() {
                self.pending_user.insert(pid, deferred);
            }
            if !code.is_empty() {
                // blazesym reads the maps itself unless given them: once, and again when they
                // were read again here and list new code (a library loaded since).
                if !self.vmas_given.contains(&pid) || maps.new_code {
                    let mut vmas = cache::Process::new(Pid::from(pid));
                    vmas.cache_perf_map = false;
                    if self.symbolizer.cache(&vmas.into()).is_ok() {
                        self.vmas_given.insert(pid);
                        let mount_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
                        if mount_ns.is_some() && mount_ns == self.own_mount_ns {
                            self.same_mount_ns.insert(pid);
                        }
                    }
                }
                let src = Source::Process(Process::new(Pid::from(pid)));
                let results = self.symbolizer.symbolize(&src, Input::AbsAddr(&code)).ok().or_else(|| {
                    self.same_mount_ns.contains(&pid).then(|| symbolize_exited(&self.symbolizer, pid, &code)).flatten()
                });
                for (i, &addr) in code.iter().enumerate() {
                    let symbol = match results.as_ref().and_then(|r| r.get(i)) {
                        Some(Symbolized::Sym(sym)) => {
                            NativeSymbol { name: Some(sym.name.to_string()), module: None, offset: None }
                        }
                        // Name the module and the offset in it, so "[unknown] (libfoo.so+0x1234)"
                        // still says where (and `addr2line -e libfoo.so` can say more).
                        _ => match maps.exec_mapping(addr) {
                            Some(m) => NativeSymbol {
                                name: None,
                                module: m.file.clone(),
                                offset: m.file.as_ref().map(|_| addr - m.start + m.offset),
                            },
                            None => NativeSymbol::default(),
                        },
                    };
                    known.insert(addr, UserSymbol::Code(symbol));
                }
            }
            if let Some(cached) = maps.cached {
                self.maps.insert(pid, cached);
            }
            if known.is_empty() {
                self.user.remove(&pid);
            }
        }
        if !self.pending_kernel.is_empty() {
            let addrs: Vec<u64> = std::mem::take(&mut self.pending_kernel).into_iter().collect();
            let src = Source::Kernel(Kernel::default());
            let results = self.symbolizer.symbolize(&src, Input::AbsAddr(&addrs)).ok();
            for (i, &addr) in addrs.iter().enumerate() {
                let name = match results.as_ref().and_then(|r| r.get(i)) {
                    Some(Symbolized::Sym(sym)) => Some(sym.name.to_string()),
                    _ => None,
                };
                self.kernel.insert(addr, name);
            }
        }
    }

    /// What a user stack entry is (index 0 = leaf); None when it was never resolved.
    pub fn user_symbol(&self, pid: u32, addr: u64, index: usize) -> Option<&UserSymbol> {
        self.user.get(&pid)?.get(&lookup_addr(addr, index == 0))
    }

    /// The symbol of a kernel stack entry (index 0 = leaf).
    pub fn kernel_symbol(&self, addr: u64, index: usize) -> Option<&str> {
        self.kernel.get(&lookup_addr(addr, index == 0)).and_then(|s| s.as_deref())
    }

    /// Drops blazesym's parsed files (symbol tables of every binary and library seen), keeping
    /// the names already resolved. A long-running session calls this now and then: on a host
    /// where processes come and go, those files are mostly gone.
    pub fn drop_file_caches(&mut self) {
        self.symbolizer = Self::new().symbolizer;
        self.vmas_given.clear();
        self.same_mount_ns.clear();
    }

    /// Entries per table (per-process symbols, maps, pending addresses, processes handed to
    /// blazesym; kernel symbols), for the session's debug log of what it keeps.
    pub fn sizes(&self) -> [usize; 5] {
        [self.user.len(), self.maps.len(), self.pending_user.len(), self.vmas_given.len(), self.kernel.len()]
    }

    /// Drops a process's cached symbols (after an exec its addresses mean other things, after
    /// its exit nothing), and releases its files in blazesym: a file no other process we
    /// symbolized maps is dropped with its parsed symbols.
    pub fn forget(&mut self, pid: u32) {
        self.user.remove(&pid);
        self.pending_user.remove(&pid);
        self.same_mount_ns.remove(&pid);
        if self.vmas_given.remove(&pid) {
            // blazesym names each file by the process's /proc/PID/map_files entry.
            let mappings = self.maps.get(&pid).map(|c| c.mappings.as_slice()).unwrap_or_default();
            for m in mappings.iter().filter(|m| m.executable && m.file.is_some()) {
                let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                let _ = self.symbolizer.evict(&Evict::Elf(evict::Elf::new(path)));
            }
            let _ = self.symbolizer.evict(&Evict::Process(evict::Process::new(Pid::from(pid))));
        }
        self.maps.remove(&pid);
    }
}

/// The symbols of `addrs` in process `pid` when symbolizing them through its
/// `/proc/PID/map_files` entries failed: it exited meanwhile (blazesym fails the whole batch
/// when one entry is gone). Under emulation, parsing libc's debug file takes seconds, and a
/// command that ran a few seconds lost every name (`kernel_core_native_frame_pointer_chain`
/// on 5.10, main and lifecycle alike). blazesym still holds the mappings it was handed while
/// the process lived: their files are opened by the paths the maps listed, which name the
/// same files here only in the mount namespace the process was in when they were handed
/// over (the caller checks). vDSO and perf-map lookups need the live process: off.
fn symbolize_exited<'a>(symbolizer: &'a Symbolizer, pid: u32, addrs: &[u64]) -> Option<Vec<Symbolized<'a>>> {
    let mut by_path = Process::new(Pid::from(pid));
    by_path.map_files = false;
    by_path.vdso = false;
    by_path.perf_map = false;
    symbolizer.symbolize(&Source::Process(by_path), Input::AbsAddr(addrs)).ok()
}

/// Re-reading the maps of a process: at least this long after the last read...
const REREAD_MIN: Duration = Duration::from_secs(1);
/// ...doubling, up to this, while re-reads find no new code.
const REREAD_MAX: Duration = Duration::from_secs(32);

/// A process's mappings as last read, and how long to wait before reading them again.
///
/// Frame-pointer walks through code built without frame pointers (a compiler, most C++
/// services) end on data addresses, a new handful in every batch; each one sent a process's
/// /proc/PID/maps to be read again, here and by blazesym, several times a second (a fifth of
/// the daemon's CPU beside a few busy `rustc`s). A read that finds no new executable mapping
/// doubles the wait before the next one (from [`REREAD_MIN`] up to [`REREAD_MAX`]); one that
/// finds new code (a library loaded since) brings the wait back down. Addresses outside the
/// known mappings wait for the next allowed read to be told code from data, so a library
/// loaded a moment ago is named at most [`REREAD_MAX`] late, never called not-code.
struct MapsCache {
    mappings: Vec<Mapping>,
    read_at: Instant,
    wait: Duration,
}

/// A process's mappings during one batch: the cached ones, read again at most once, when an
/// address is in none of their executable mappings and the cache's wait is over.
struct ProcessMaps {
    pid: u32,
    cached: Option<MapsCache>,
    read: MapsRead,
    now: Instant,
    /// The maps read in this batch list executable mappings the previous read did not.
    new_code: bool,
    /// Read them again if an address needs it, however recent the last read.
    no_wait: bool,
}

#[derive(PartialEq, Eq)]
enum MapsRead {
    NotYet,
    /// Read in this batch, after every address of the batch was recorded.
    Fresh,
    /// Could not be read (the process is gone): stale maps cannot say an address is not code.
    Failed,
    /// Not read again in this batch: the last read was too recent.
    Deferred,
}

/// Where an address is, as far as one batch can tell.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// In an executable mapping.
    Code,
    /// Outside every executable mapping of maps read after the address was seen.
    NotCode,
    /// The maps cannot be read (the process is gone): symbolize it anyway.
    Unknown,
    /// Outside the cached mappings, which may not be read again yet: ask in a later batch.
    Later,
}

impl ProcessMaps {
    fn place(&mut self, addr: u64) -> Place {
        if self.exec_mapping(addr).is_some() {
            return Place::Code;
        }
        if self.read == MapsRead::NotYet {
            self.read = match &self.cached {
                Some(c) if !self.no_wait && self.now.saturating_duration_since(c.read_at) < c.wait => {
                    MapsRead::Deferred
                }
                _ => self.read_again(),
            };
            if self.exec_mapping(addr).is_some() {
                return Place::Code;
            }
        }
        match self.read {
            MapsRead::Fresh => Place::NotCode,
            MapsRead::Deferred => Place::Later,
            _ => Place::Unknown,
        }
    }

    fn read_again(&mut self) -> MapsRead {
        let Some(mappings) = procinfo::mappings(self.pid) else { return MapsRead::Failed };
        let code = |maps: &[Mapping]| -> HashSet<(u64, u64)> {
            maps.iter().filter(|m| m.executable).map(|m| (m.start, m.end)).collect()
        };
        let wait = match &self.cached {
            Some(old) => {
                self.new_code = !code(&mappings).is_subset(&code(&old.mappings));
                if self.new_code { REREAD_MIN } else { (old.wait * 2).min(REREAD_MAX) }
            }
            None => {
                self.new_code = true;
                REREAD_MIN
            }
        };
        self.cached = Some(MapsCache { mappings, read_at: self.now, wait });
        MapsRead::Fresh
    }

    fn exec_mapping(&self, addr: u64) -> Option<&Mapping> {
        self.cached.as_ref()?.mappings.iter().find(|m| m.executable && m.contains(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DATA_SYMBOL: [u64; 512] = [7; 512];

    #[test]
    fn addresses_outside_executable_mappings_are_not_code_and_get_no_symbol() {
        let this: fn() = addresses_outside_executable_mappings_are_not_code_and_get_no_symbol;
        let pid = std::process::id();
        let code = this as usize as u64;
        let data = DATA_SYMBOL.as_ptr() as u64 + 8;
        let mut symbols = Symbols::new();
        // Leaf first: a real return address, then a data address a frame pointer led to.
        symbols.note_user(pid, code + 4, true);
        symbols.note_user(pid, data + 1, false);
        symbols.resolve_pending();
        match symbols.user_symbol(pid, code + 4, 0) {
            Some(UserSymbol::Code(s)) => {
                assert!(s.name.as_deref().is_some_and(|n| n.contains("addresses_outside")), "{s:?}")
            }
            other => panic!("code address: {other:?}"),
        }
        // DATA_SYMBOL has a symbol of its own, which the address must not take.
        assert_eq!(symbols.user_symbol(pid, data + 1, 1), Some(&UserSymbol::NotCode));
    }

    #[test]
    fn a_process_that_exits_before_its_addresses_are_symbolized_is_named_from_its_files() {
        let first: fn() = addresses_outside_executable_mappings_are_not_code_and_get_no_symbol;
        let later: fn() = a_process_that_exits_before_its_addresses_are_symbolized_is_named_from_its_files;
        let (first, later) = (first as usize as u64 + 4, later as usize as u64 + 4);
        // A forked child has this process's layout: the same addresses name the same code.
        // SAFETY: the child only sleeps and exits (async-signal-safe calls), nothing else.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            // SAFETY: as above.
            unsafe {
                libc::sleep(30);
                libc::_exit(0);
            }
        }
        let pid = child as u32;
        let name = |symbols: &Symbols, addr: u64| match symbols.user_symbol(pid, addr, 0) {
            Some(UserSymbol::Code(s)) => s.name.clone(),
            other => panic!("{addr:#x}: {other:?}"),
        };
        let mut symbols = Symbols::new();
        // Alive: its maps are read and handed to blazesym.
        symbols.note_user(pid, first, true);
        symbols.resolve_pending();
        assert!(name(&symbols, first).is_some_and(|n| n.contains("addresses_outside")));
        // Gone (reaped) before the next batch: its map_files entries with it.
        // SAFETY: plain syscalls on our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        symbols.note_user(pid, later, true);
        symbols.resolve_pending();
        let named = name(&symbols, later);
        assert!(named.as_deref().is_some_and(|n| n.contains("exits_before_its_addresses")), "{named:?}");
    }

    #[test]
    fn a_forgotten_process_is_symbolized_again_from_scratch() {
        let this: fn() = a_forgotten_process_is_symbolized_again_from_scratch;
        let (pid, code) = (std::process::id(), this as usize as u64 + 4);
        let mut symbols = Symbols::new();
        let named = |symbols: &Symbols| match symbols.user_symbol(pid, code, 0) {
            Some(UserSymbol::Code(s)) => s.name.as_deref().is_some_and(|n| n.contains("a_forgotten_process")),
            _ => false,
        };
        symbols.note_user(pid, code, true);
        symbols.resolve_pending();
        assert!(named(&symbols));
        assert!(symbols.vmas_given.contains(&pid), "blazesym was handed the maps");
        // Exit or exec: names, maps and blazesym's files of the process go...
        symbols.forget(pid);
        assert!(symbols.user_symbol(pid, code, 0).is_none() && !symbols.vmas_given.contains(&pid));
        // ...and come back on the next sample.
        symbols.note_user(pid, code, true);
        symbols.resolve_pending();
        assert!(named(&symbols));
    }

    #[test]
    fn maps_are_read_again_for_an_unknown_address_only_after_a_wait_that_grows() {
        let this: fn() = maps_are_read_again_for_an_unknown_address_only_after_a_wait_that_grows;
        let (pid, code) = (std::process::id(), this as usize as u64 + 4);
        let data = DATA_SYMBOL.as_ptr() as u64 + 16;
        let mut symbols = Symbols::new();
        symbols.note_user(pid, code, true);
        symbols.resolve_pending();
        let read_at = symbols.maps[&pid].read_at;
        // A data address right after: the maps were just read, so it waits for a later batch
        // instead of sending them to be read again.
        symbols.note_user(pid, data, true);
        symbols.resolve_pending();
        assert_eq!(symbols.user_symbol(pid, data, 0), None);
        assert_eq!(symbols.maps[&pid].read_at, read_at, "not read again");
        assert!(symbols.pending_user[&pid].contains(&data), "still pending");
        // A profile is about to be built: no address waits past it.
        let mut before_a_profile = Symbols::new();
        before_a_profile.note_user(pid, code, true);
        before_a_profile.resolve_pending();
        before_a_profile.note_user(pid, data, true);
        before_a_profile.resolve_all();
        assert_eq!(before_a_profile.user_symbol(pid, data, 0), Some(&UserSymbol::NotCode));
        // Once the wait is over, the next batch reads them: not code; nothing new was mapped,
        // so the next wait is twice as long.
        symbols.maps.get_mut(&pid).unwrap().read_at = read_at - REREAD_MIN;
        symbols.resolve_pending();
        assert_eq!(symbols.user_symbol(pid, data, 0), Some(&UserSymbol::NotCode));
        assert_eq!(symbols.maps[&pid].wait, REREAD_MIN * 2);
    }

    #[test]
    fn maps_that_cannot_be_read_say_nothing() {
        let now = Instant::now();
        let mut gone = ProcessMaps {
            pid: u32::MAX,
            cached: Some(MapsCache {
                mappings: vec![Mapping { start: 0x1000, end: 0x2000, offset: 0, executable: true, file: None }],
                read_at: now - REREAD_MAX,
                wait: REREAD_MIN,
            }),
            read: MapsRead::NotYet,
            now,
            new_code: false,
            no_wait: false,
        };
        assert_eq!(gone.place(0x1800), Place::Code);
        assert_eq!(gone.place(0x5000), Place::Unknown);
        assert_eq!(gone.place(0x6000), Place::Unknown);
    }
}
