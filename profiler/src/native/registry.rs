//! Which binaries have unwind tables in the kernel, where, and which processes use them.
//!
//! Tables are built once per binary (keyed by device, inode, size and mtime, so processes in
//! other mount namespaces share them) when a process that maps it is first registered, and are
//! shared by every process that maps it. The kernel's arrays have a fixed size: rows, page
//! entries, table slots and mapping slots are allocated first-fit from free ranges; a table no
//! process has used for a while is evicted when space is needed. Nothing the kernel may be
//! reading is rewritten in place: a process's new mapping list goes to a new range before its
//! entry points there, and freed ranges are reused only after a grace period (a walk holds an
//! index for microseconds).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use object::{Object as _, ObjectSegment as _};
use profiler_common::{
    map_size,
    unwind::{MAX_PROC_MAPPINGS, Mapping, NO_TABLE, PageEntry, ProcMaps, RuleRec, TableInfo, UnwindRow, mapping_flags},
};

use super::{
    procmaps::{self, Backing, ExecMapping, FileKey},
    table::{self, Compact, Dict},
};

/// Where the tables go: the kernel's maps (`crate::bpf::UnwindMaps`), or a test's arrays.
pub trait TableSink {
    fn set_rows(&mut self, first: u32, rows: &[UnwindRow]) -> anyhow::Result<()>;
    fn set_pages(&mut self, first: u32, pages: &[PageEntry]) -> anyhow::Result<()>;
    fn set_rule(&mut self, index: u32, rule: &RuleRec) -> anyhow::Result<()>;
    fn set_table(&mut self, index: u32, table: &TableInfo) -> anyhow::Result<()>;
    fn set_mapping(&mut self, index: u32, mapping: &Mapping) -> anyhow::Result<()>;
    fn set_process(&mut self, pid: u32, maps: &ProcMaps) -> anyhow::Result<()>;
    fn remove_process(&mut self, pid: u32);
}

/// How long a freed range stays unused: far longer than any walk holds an index.
const GRACE: Duration = Duration::from_secs(1);
/// A process's mappings are read again at most this often (on walks that hit an address in
/// no known mapping: a library loaded since).
const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// First-fit allocator of index ranges in one of the kernel's arrays.
#[derive(Debug)]
struct Ranges {
    /// Free (start, len), sorted by start, never adjacent.
    free: Vec<(u32, u32)>,
}

impl Ranges {
    fn new(len: u32) -> Self {
        Self { free: vec![(0, len)] }
    }

    fn alloc(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return Some(0);
        }
        let i = self.free.iter().position(|&(_, l)| l >= len)?;
        let (start, l) = self.free[i];
        if l == len {
            self.free.remove(i);
        } else {
            self.free[i] = (start + len, l - len);
        }
        Some(start)
    }

    fn free(&mut self, start: u32, len: u32) {
        if len == 0 {
            return;
        }
        let i = self.free.partition_point(|&(s, _)| s < start);
        self.free.insert(i, (start, len));
        // Merge with the next, then the previous.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    fn free_total(&self) -> u64 {
        self.free.iter().map(|&(_, l)| l as u64).sum()
    }
}

/// A binary, as the tables know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BinKey {
    File(FileKey),
    Vdso,
}

/// A table in the kernel.
struct Loaded {
    slot: u32,
    rows: (u32, u32),
    pages: (u32, u32),
    bytes: usize,
}

/// A binary seen: its load segments (for the bias of each mapping) and its table, if it has
/// one.
struct Binary {
    /// (p_offset, p_vaddr, p_filesz) of its executable PT_LOAD segments.
    loads: Vec<(u64, u64, u64)>,
    table: Option<Loaded>,
    /// Processes mapping it now.
    refs: u32,
    /// When `refs` last fell to 0.
    unused_since: Option<Instant>,
    /// Why there is no table (logged once).
    missing: Option<String>,
}

struct Proc {
    base: u32,
    count: u32,
    bins: Vec<BinKey>,
    read_at: Instant,
}

/// Sizes and timings, for logs and the benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct RegistryStats {
    pub tables: u64,
    pub table_bytes: u64,
    pub rules: u64,
    pub build_time: Duration,
    pub evicted: u64,
}

pub struct Registry {
    dict: Dict,
    /// Dictionary entries already in the kernel.
    rules_published: usize,
    bins: HashMap<BinKey, Binary>,
    procs: HashMap<u32, Proc>,
    rows: Ranges,
    pages: Ranges,
    slots: Ranges,
    mappings: Ranges,
    /// Freed mapping ranges waiting out the grace period: (when, start, len). (A table is only
    /// evicted once unused for the grace period, so its ranges are free at once.)
    quarantine: Vec<(Instant, u32, u32)>,
    pub stats: RegistryStats,
}

impl Registry {
    /// A registry for kernel arrays holding `rows` rows (the other arrays as compiled).
    pub fn new(rows: u64) -> Self {
        Self {
            dict: Dict::default(),
            rules_published: 0,
            bins: HashMap::new(),
            procs: HashMap::new(),
            rows: Ranges::new(rows.min(u32::MAX as u64) as u32),
            pages: Ranges::new(map_size::UNWIND_PAGES),
            slots: Ranges::new(map_size::UNWIND_TABLES),
            mappings: Ranges::new(map_size::UNWIND_MAPPINGS),
            quarantine: Vec::new(),
            stats: RegistryStats::default(),
        }
    }

    pub fn is_registered(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// Reads `pid`'s executable mappings, builds the tables of binaries not seen before, and
    /// hands the kernel the process's mapping list. Returns false if the process is gone.
    pub fn register(&mut self, pid: u32, sink: &mut dyn TableSink) -> anyhow::Result<bool> {
        self.release_quarantine();
        let Some(mut exec) = procmaps::exec_mappings(pid) else { return Ok(false) };
        exec.truncate(MAX_PROC_MAPPINGS as usize);
        let mut list = Vec::with_capacity(exec.len());
        let mut bins = Vec::new();
        for m in &exec {
            let mapping = self.mapping(pid, m, sink)?;
            if let Backing::File { key, .. } = &m.backing {
                bins.push(BinKey::File(*key));
            } else if m.backing == Backing::Vdso {
                bins.push(BinKey::Vdso);
            }
            list.push(mapping);
        }
        let count = list.len() as u32;
        let Some(base) = self.mappings.alloc(count) else {
            anyhow::bail!("no room for pid {pid}'s {count} mappings");
        };
        for (i, m) in list.iter().enumerate() {
            sink.set_mapping(base + i as u32, m)?;
        }
        sink.set_process(pid, &ProcMaps { base, count })?;
        for b in &bins {
            if let Some(bin) = self.bins.get_mut(b) {
                bin.refs += 1;
                bin.unused_since = None;
            }
        }
        if let Some(old) = self.procs.insert(pid, Proc { base, count, bins, read_at: Instant::now() }) {
            self.drop_proc(old);
        }
        Ok(true)
    }

    /// A walk of `pid` hit an address in no known mapping: read its mappings again (at most
    /// every [`REFRESH_EVERY`]).
    pub fn refresh(&mut self, pid: u32, sink: &mut dyn TableSink) -> anyhow::Result<()> {
        if self.procs.get(&pid).is_some_and(|p| p.read_at.elapsed() < REFRESH_EVERY) {
            return Ok(());
        }
        self.register(pid, sink).map(|_| ())
    }

    /// `pid` exited or exec'd: its mappings no longer hold.
    pub fn forget(&mut self, pid: u32, sink: &mut dyn TableSink) {
        sink.remove_process(pid);
        if let Some(p) = self.procs.remove(&pid) {
            self.drop_proc(p);
        }
    }

    fn drop_proc(&mut self, p: Proc) {
        self.quarantine.push((Instant::now(), p.base, p.count));
        for b in p.bins {
            if let Some(bin) = self.bins.get_mut(&b) {
                bin.refs = bin.refs.saturating_sub(1);
                if bin.refs == 0 {
                    bin.unused_since = Some(Instant::now());
                }
            }
        }
    }

    fn release_quarantine(&mut self) {
        let now = Instant::now();
        let (done, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.quarantine).into_iter().partition(|(at, ..)| now.duration_since(*at) >= GRACE);
        self.quarantine = wait;
        for (_, start, len) in done {
            self.mappings.free(start, len);
        }
    }

    /// The kernel's entry for one mapping, building its binary's table if needed.
    fn mapping(&mut self, pid: u32, m: &ExecMapping, sink: &mut dyn TableSink) -> anyhow::Result<Mapping> {
        let none = Mapping { start: m.start, end: m.end, bias: m.start, table: NO_TABLE, flags: 0 };
        let key = match &m.backing {
            Backing::File { key, .. } => BinKey::File(*key),
            Backing::Vdso => BinKey::Vdso,
            Backing::Anonymous => return Ok(Mapping { flags: mapping_flags::FRAME_POINTERS, ..none }),
            Backing::Unusable => return Ok(none),
        };
        if !self.bins.contains_key(&key) {
            let bin = self.load(pid, m, sink)?;
            self.bins.insert(key, bin);
        }
        let bin = &self.bins[&key];
        let Some(table) = &bin.table else { return Ok(none) };
        // The load segment that holds the mapping's file offset gives the bias.
        let Some(&(p_offset, p_vaddr, _)) =
            bin.loads.iter().find(|&&(off, _, size)| (off & !0xfff) <= m.offset && m.offset < off + size.max(1))
        else {
            return Ok(none);
        };
        let bias = m.start.wrapping_sub(m.offset).wrapping_add(p_offset).wrapping_sub(p_vaddr);
        Ok(Mapping { bias, table: table.slot, ..none })
    }

    /// Builds a binary's table and puts it in the kernel.
    fn load(&mut self, pid: u32, m: &ExecMapping, sink: &mut dyn TableSink) -> anyhow::Result<Binary> {
        let started = Instant::now();
        let mut bin = Binary { loads: Vec::new(), table: None, refs: 0, unused_since: None, missing: None };
        let image: Option<Vec<u8>>;
        let file;
        let mapped;
        let bytes: &[u8] = match &m.backing {
            Backing::Vdso => {
                use crate::host::memory::ReadMemory as _;
                image = crate::host::memory::Memory::new(pid).bytes(m.start, (m.end - m.start) as usize);
                match &image {
                    Some(b) => b,
                    None => return Ok(Binary { missing: Some("vDSO unreadable".into()), ..bin }),
                }
            }
            _ => {
                file = procmaps::open_mapped(pid, m.start, m.end);
                mapped = file.as_ref().and_then(procmaps::MappedFile::new);
                match &mapped {
                    Some(f) => f.bytes(),
                    None => return Ok(Binary { missing: Some("cannot open".into()), ..bin }),
                }
            }
        };
        let Ok(obj) = object::File::parse(bytes) else {
            return Ok(Binary { missing: Some("not ELF".into()), ..bin });
        };
        // Only executable segments: the page an executable mapping starts at may also hold the
        // end of the read-only segment before it (lld lays text out at p_vaddr = p_offset +
        // 0x1000), whose vaddr-to-offset difference is not the text's.
        bin.loads = obj
            .segments()
            .filter(|s| matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0))
            .map(|s| {
                let (off, size) = s.file_range();
                (off, s.address(), size)
            })
            .collect();
        let built = match table::build(bytes) {
            Ok(t) if !t.rows.is_empty() => t,
            Ok(_) => return Ok(Binary { missing: Some("no CFI".into()), ..bin }),
            Err(e) => return Ok(Binary { missing: Some(e), ..bin }),
        };
        let compact = Compact::from_table(&built, &mut self.dict);
        self.publish_rules(sink)?;
        match self.install(&compact, sink)? {
            Some(loaded) => bin.table = Some(loaded),
            None => bin.missing = Some("no room left for unwind tables (see --native-table-mib)".into()),
        }
        let took = started.elapsed();
        self.stats.build_time += took;
        if let Some(why) = &bin.missing {
            log::info!("pid {pid}: no unwind table for {:?}: {why}", m.backing);
        } else {
            log::debug!(
                "unwind table for {:?}: {} rows, {} pages, {:.1} ms",
                m.backing,
                compact.rows.len(),
                compact.pages.len(),
                took.as_secs_f64() * 1e3
            );
        }
        Ok(bin)
    }

    fn publish_rules(&mut self, sink: &mut dyn TableSink) -> anyhow::Result<()> {
        for i in self.rules_published..self.dict.recs.len() {
            sink.set_rule(i as u32, &self.dict.recs[i])?;
        }
        self.rules_published = self.dict.recs.len();
        self.stats.rules = self.rules_published as u64;
        Ok(())
    }

    /// Allocates and writes a table (evicting unused ones if needed); None if it cannot fit.
    fn install(&mut self, c: &Compact, sink: &mut dyn TableSink) -> anyhow::Result<Option<Loaded>> {
        let (n_rows, n_pages) = (c.rows.len() as u32, c.pages.len() as u32);
        let first_page = u32::try_from(c.first_page).ok();
        let Some(first_page) = first_page else { return Ok(None) };
        loop {
            let rows = self.rows.alloc(n_rows);
            let pages = self.pages.alloc(n_pages);
            let slot = self.slots.alloc(1);
            if let (Some(rows), Some(pages), Some(slot)) = (rows, pages, slot) {
                sink.set_rows(rows, &c.rows)?;
                sink.set_pages(pages, &c.pages)?;
                // Published last: from here on the kernel may use the rows and pages above.
                let info = TableInfo { first_page, n_pages, page_base: pages, row_base: rows };
                sink.set_table(slot, &info)?;
                self.stats.tables += 1;
                self.stats.table_bytes += c.bytes() as u64;
                return Ok(Some(Loaded { slot, rows: (rows, n_rows), pages: (pages, n_pages), bytes: c.bytes() }));
            }
            // Give back what was taken, then make room.
            if let Some(r) = rows {
                self.rows.free(r, n_rows);
            }
            if let Some(p) = pages {
                self.pages.free(p, n_pages);
            }
            if let Some(s) = slot {
                self.slots.free(s, 1);
            }
            if !self.evict_one() {
                return Ok(None);
            }
        }
    }

    /// Frees the table unused for longest (and for at least the grace period). False if none.
    fn evict_one(&mut self) -> bool {
        let now = Instant::now();
        let victim = self
            .bins
            .iter()
            .filter(|(_, b)| b.table.is_some() && b.refs == 0)
            .filter_map(|(k, b)| Some((*k, b.unused_since?)))
            .filter(|(_, since)| now.duration_since(*since) >= GRACE)
            .min_by_key(|(_, since)| *since)
            .map(|(k, _)| k);
        let Some(key) = victim else { return false };
        let Some(bin) = self.bins.remove(&key) else { return false };
        if let Some(t) = bin.table {
            self.rows.free(t.rows.0, t.rows.1);
            self.pages.free(t.pages.0, t.pages.1);
            self.slots.free(t.slot, 1);
            self.stats.tables -= 1;
            self.stats.table_bytes -= t.bytes as u64;
            self.stats.evicted += 1;
        }
        true
    }

    /// Rows still free in the kernel's array.
    pub fn free_rows(&self) -> u64 {
        self.rows.free_total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_first_fit_and_merge_when_freed() {
        let mut r = Ranges::new(100);
        assert_eq!(r.alloc(30), Some(0));
        assert_eq!(r.alloc(30), Some(30));
        assert_eq!(r.alloc(50), None);
        r.free(0, 30);
        assert_eq!(r.alloc(10), Some(0));
        r.free(30, 30);
        r.free(0, 10);
        assert_eq!(r.free, vec![(0, 100)]);
    }

    /// Arrays in memory, as the kernel's would hold them.
    #[derive(Default)]
    pub struct Arrays {
        pub rows: HashMap<u32, UnwindRow>,
        pub pages: HashMap<u32, PageEntry>,
        pub rules: HashMap<u32, RuleRec>,
        pub tables: HashMap<u32, TableInfo>,
        pub mappings: HashMap<u32, Mapping>,
        pub procs: HashMap<u32, ProcMaps>,
    }

    impl TableSink for Arrays {
        fn set_rows(&mut self, first: u32, rows: &[UnwindRow]) -> anyhow::Result<()> {
            self.rows.extend(rows.iter().enumerate().map(|(i, r)| (first + i as u32, *r)));
            Ok(())
        }
        fn set_pages(&mut self, first: u32, pages: &[PageEntry]) -> anyhow::Result<()> {
            self.pages.extend(pages.iter().enumerate().map(|(i, p)| (first + i as u32, *p)));
            Ok(())
        }
        fn set_rule(&mut self, index: u32, rule: &RuleRec) -> anyhow::Result<()> {
            self.rules.insert(index, *rule);
            Ok(())
        }
        fn set_table(&mut self, index: u32, table: &TableInfo) -> anyhow::Result<()> {
            self.tables.insert(index, *table);
            Ok(())
        }
        fn set_mapping(&mut self, index: u32, mapping: &Mapping) -> anyhow::Result<()> {
            self.mappings.insert(index, *mapping);
            Ok(())
        }
        fn set_process(&mut self, pid: u32, maps: &ProcMaps) -> anyhow::Result<()> {
            self.procs.insert(pid, *maps);
            Ok(())
        }
        fn remove_process(&mut self, pid: u32) {
            self.procs.remove(&pid);
        }
    }

    #[test]
    fn registering_ourselves_gives_every_executable_mapping_and_shared_tables() {
        let mut reg = Registry::new(1 << 22);
        let mut arrays = Arrays::default();
        let pid = std::process::id();
        assert!(reg.register(pid, &mut arrays).unwrap());
        let p = arrays.procs[&pid];
        assert!(p.count >= 2, "{p:?}");
        let maps: Vec<Mapping> = (p.base..p.base + p.count).map(|i| arrays.mappings[&i]).collect();
        assert!(maps.windows(2).all(|w| w[0].end <= w[1].start), "sorted, disjoint");
        // Our own code has a table, and its bias maps a function's address to its ELF address.
        let here = ranges_are_first_fit_and_merge_when_freed as *const () as u64;
        let m = maps.iter().find(|m| m.start <= here && here < m.end).expect("our code is mapped");
        assert_ne!(m.table, NO_TABLE);
        let tables = reg.stats.tables;
        // A second registration reuses the tables.
        assert!(reg.register(pid, &mut arrays).unwrap());
        assert_eq!(reg.stats.tables, tables);
        reg.forget(pid, &mut arrays);
        assert!(!arrays.procs.contains_key(&pid));
    }
}
