//! One binary's unwind table: built from `.eh_frame` (and `.debug_frame` for code `.eh_frame`
//! does not cover), flattened to a sorted list of (address, rule) rows where each row holds
//! until the next one, identical consecutive rows merged, and gaps between FDEs marked
//! invalid. Addresses are the ELF's own virtual addresses (`pc - bias` at run time).
//!
//! [`Compact`] is the kernel's form (`profiler_common::unwind`): 4-byte rows indexing a
//! host-wide [`Dict`] of rules, push/pop runs folded into one row, and a directory of 64 KiB
//! pages that bounds the kernel's binary search.
use std::collections::HashMap;

use gimli::{BaseAddresses, CieOrFde, DebugFrame, EhFrame, LittleEndian, UnwindContext, UnwindSection};
use object::{Object, ObjectSection};
use profiler_common::unwind::{self as contract, PAGE_BITS, PageEntry, RuleRec, UnwindRow, kind};

use super::rules::{self, Cfa, Rbp, Rule};

/// Gaps between FDEs shorter than this are alignment padding (never executed): no marker row.
pub const PADDING_GAP: u64 = 16;
const PAGE_MASK: u64 = (1 << PAGE_BITS) - 1;

/// What a build found, for logs and the benchmark.
#[derive(Default, Debug, Clone)]
pub struct BuildStats {
    pub eh_fdes: u64,
    pub debug_fdes: u64,
    /// CFI rows before flattening and merging.
    pub raw_rows: u64,
    /// Rows whose rule the kernel cannot evaluate (they stop the walk, marked).
    pub unsupported: u64,
    pub errors: u64,
}

/// A binary's rules, uncompressed.
pub struct Table {
    /// Sorted by address; each rule holds from its address to the next row's.
    pub rows: Vec<(u64, Rule)>,
    pub stats: BuildStats,
}

struct Span {
    start: u64,
    end: u64,
    rule: Rule,
}

type R<'a> = gimli::EndianSlice<'a, LittleEndian>;

/// Builds the table of an ELF image (a file, or the vDSO read from memory).
pub fn build(data: &[u8]) -> Result<Table, String> {
    let obj = object::File::parse(data).map_err(|e| e.to_string())?;
    let mut stats = BuildStats::default();
    let mut spans: Vec<Span> = Vec::new();
    let addr_of = |name: &str| obj.section_by_name(name).map(|s| s.address()).unwrap_or(0);

    let mut eh_ranges: Vec<(u64, u64)> = Vec::new();
    if let Some(sec) = obj.section_by_name(".eh_frame") {
        let data = sec.data().map_err(|e| e.to_string())?;
        let mut eh = EhFrame::new(data, LittleEndian);
        eh.set_address_size(8);
        let bases = BaseAddresses::default()
            .set_eh_frame(sec.address())
            .set_eh_frame_hdr(addr_of(".eh_frame_hdr"))
            .set_text(addr_of(".text"))
            .set_got(addr_of(".got"));
        walk(&eh, &bases, &mut spans, &mut stats, None, &mut eh_ranges);
        stats.eh_fdes = eh_ranges.len() as u64;
    }
    eh_ranges.sort_unstable();

    // .debug_frame: only where .eh_frame says nothing (some binaries keep their CFI there only).
    if let Some(sec) = obj.section_by_name(".debug_frame") {
        match sec.uncompressed_data() {
            Ok(data) => {
                let mut df = DebugFrame::new(&data, LittleEndian);
                df.set_address_size(8);
                let mut ranges = Vec::new();
                walk(&df, &BaseAddresses::default(), &mut spans, &mut stats, Some(&eh_ranges), &mut ranges);
                stats.debug_fdes = ranges.len() as u64;
            }
            Err(_) => stats.errors += 1,
        }
    }
    Ok(Table { rows: flatten(spans), stats })
}

fn overlaps(sorted: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = sorted.partition_point(|&(_, e)| e <= start);
    sorted.get(i).is_some_and(|&(s, _)| s < end)
}

fn walk<'a, S: UnwindSection<R<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    spans: &mut Vec<Span>,
    stats: &mut BuildStats,
    shadow: Option<&[(u64, u64)]>,
    ranges: &mut Vec<(u64, u64)>,
) {
    let mut ctx = UnwindContext::new();
    let mut entries = section.entries(bases);
    loop {
        let entry = match entries.next() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(_) => {
                stats.errors += 1;
                break;
            }
        };
        let CieOrFde::Fde(partial) = entry else { continue };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            stats.errors += 1;
            continue;
        };
        let (start, end) = (fde.initial_address(), fde.end_address());
        // Zero-length FDEs, and .debug_frame FDEs of discarded (address 0) sections.
        if start == 0 || end <= start {
            continue;
        }
        if shadow.is_some_and(|sh| overlaps(sh, start, end)) {
            continue;
        }
        ranges.push((start, end));
        if fde.is_signal_trampoline() {
            spans.push(Span { start, end, rule: Rule::SIGNAL });
            continue;
        }
        let Ok(mut rows) = fde.rows(section, bases, &mut ctx) else {
            stats.errors += 1;
            continue;
        };
        loop {
            match rows.next_row() {
                Ok(Some(row)) => {
                    stats.raw_rows += 1;
                    let rule = rules::convert(row, section).unwrap_or_else(|_| {
                        stats.unsupported += 1;
                        Rule::INVALID
                    });
                    spans.push(Span { start: row.start_address(), end: row.end_address(), rule });
                }
                Ok(None) => break,
                Err(_) => {
                    stats.errors += 1;
                    break;
                }
            }
        }
    }
}

/// Sorted spans to rows: a gap of at least [`PADDING_GAP`] after a span gets an invalid row,
/// and a row equal to the one before it is dropped.
fn flatten(mut spans: Vec<Span>) -> Vec<(u64, Rule)> {
    spans.sort_by_key(|s| s.start);
    let mut out: Vec<(u64, Rule)> = Vec::with_capacity(spans.len() + 1);
    let mut cur_end = 0u64;
    let push = |out: &mut Vec<(u64, Rule)>, addr: u64, rule: Rule| {
        if let Some(last) = out.last_mut() {
            if last.0 == addr {
                last.1 = rule;
                // May now equal the row before it.
                if out.len() >= 2 && out[out.len() - 2].1 == rule {
                    out.pop();
                }
                return;
            }
            if last.1 == rule {
                return;
            }
        }
        out.push((addr, rule));
    };
    for s in spans {
        if !out.is_empty() && s.start >= cur_end + PADDING_GAP {
            push(&mut out, cur_end, Rule::INVALID);
        }
        push(&mut out, s.start, s.rule);
        cur_end = s.end;
    }
    if !out.is_empty() {
        push(&mut out, cur_end, Rule::INVALID);
    }
    out
}

impl Table {
    /// The rule at `addr` by a plain binary search over the uncompressed rows (what the compact
    /// form is checked against).
    pub fn lookup(&self, addr: u64) -> Rule {
        let i = self.rows.partition_point(|&(a, _)| a <= addr);
        if i == 0 { Rule::INVALID } else { self.rows[i - 1].1 }
    }
}

/// The host-wide rule dictionary (append-only: the kernel may hold an index at any time).
pub struct Dict {
    pub recs: Vec<RuleRec>,
    index: HashMap<RuleRec, u16>,
    /// Rules refused because the dictionary was full (they became invalid).
    pub overflow: u64,
}

impl Default for Dict {
    fn default() -> Self {
        let mut d = Dict { recs: Vec::new(), index: HashMap::new(), overflow: 0 };
        d.intern(RuleRec::default()); // index 0: invalid
        d
    }
}

impl Dict {
    pub const CAPACITY: usize = 1 << 16;

    fn intern(&mut self, r: RuleRec) -> u16 {
        if let Some(&i) = self.index.get(&r) {
            return i;
        }
        if self.recs.len() >= Self::CAPACITY {
            self.overflow += 1;
            return 0;
        }
        let i = self.recs.len() as u16;
        self.recs.push(r);
        self.index.insert(r, i);
        i
    }
}

/// A table in the kernel's form.
#[derive(Debug, Clone, Default)]
pub struct Compact {
    /// Page number (vaddr >> 16) of `pages[0]`.
    pub first_page: u64,
    pub pages: Vec<PageEntry>,
    pub rows: Vec<UnwindRow>,
}

/// A rule packed for the kernel; `None` if it does not fit (it becomes invalid).
pub fn pack_rule(rule: Rule) -> Option<RuleRec> {
    use kind::*;
    let mut p = RuleRec::default();
    match rule.cfa {
        Cfa::Invalid => p.kind = INVALID,
        Cfa::End => p.kind = END,
        Cfa::Signal => p.kind = SIGNAL,
        Cfa::Plt(th) => {
            p.kind = PLT;
            p.cfa_off = th as i32;
        }
        Cfa::Rsp(n) => {
            p.kind = RSP;
            p.cfa_off = n;
        }
        Cfa::Rbp(n) => {
            p.kind = RBP;
            p.cfa_off = n;
        }
        Cfa::DerefRsp { pre, post } | Cfa::DerefRbp { pre, post } => {
            p.kind = if matches!(rule.cfa, Cfa::DerefRsp { .. }) { DEREF_RSP } else { DEREF_RBP };
            if pre % 8 != 0 || post % 8 != 0 || !(0..64).contains(&post) {
                return None;
            }
            p.cfa_off = pre | (post / 8);
        }
    }
    if matches!(rule.cfa, Cfa::Invalid | Cfa::End | Cfa::Signal) {
        return Some(p); // rbp does not matter: keep such rows identical so they merge
    }
    match rule.rbp {
        Rbp::Same => p.kind |= RBP_SAME,
        Rbp::Lost => p.kind |= RBP_LOST,
        Rbp::AtCfa(n) => {
            p.kind |= RBP_AT_CFA;
            p.rbp_off = i16::try_from(n).ok()?;
        }
        Rbp::AtRbp(n) => {
            p.kind |= RBP_AT_RBP;
            p.rbp_off = i16::try_from(n).ok()?;
        }
    }
    Some(p)
}

/// Can `next` (at `gap` bytes after `cur`) be folded into `cur`? The fold byte, else 0.
fn fold_of(cur: &RuleRec, next: &RuleRec, gap: u64) -> u8 {
    let k = cur.kind & kind::CFA_MASK;
    if !(1..=2).contains(&gap) || cur.kind != next.kind || cur.rbp_off != next.rbp_off || cur.fold != 0 {
        return 0;
    }
    if k != kind::RSP && k != kind::RBP {
        return 0;
    }
    match next.cfa_off.checked_sub(cur.cfa_off) {
        Some(8) => gap as u8,
        Some(-8) => gap as u8 | kind::FOLD_NEGATIVE,
        _ => 0,
    }
}

impl Compact {
    pub fn from_table(t: &Table, dict: &mut Dict) -> Compact {
        // Pack, re-merge (an unpackable rule turns invalid and may equal its neighbour), fold.
        let mut packed: Vec<(u64, RuleRec)> = Vec::with_capacity(t.rows.len());
        for &(addr, rule) in &t.rows {
            let p = pack_rule(rule).unwrap_or_default();
            if packed.last().is_some_and(|(_, q)| *q == p) {
                continue;
            }
            packed.push((addr, p));
        }
        let mut rows: Vec<(u64, UnwindRow)> = Vec::with_capacity(packed.len());
        let mut i = 0;
        while i < packed.len() {
            let (addr, mut rec) = packed[i];
            i += 1;
            if i < packed.len() {
                let f = fold_of(&rec, &packed[i].1, packed[i].0 - addr);
                if f != 0 {
                    rec.fold = f;
                    i += 1;
                }
            }
            rows.push((addr, UnwindRow { addr_lo: (addr & PAGE_MASK) as u16, rule: dict.intern(rec) }));
        }
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else { return Compact::default() };
        let first_page = first.0 >> PAGE_BITS;
        let n_pages = (last.0 >> PAGE_BITS) - first_page + 1;
        let mut pages = vec![PageEntry::default(); n_pages as usize];
        // A page with no rows points where its rows would be, so that the row before `first`
        // is the one that covers it.
        let mut i = 0usize;
        for (p, page) in pages.iter_mut().enumerate() {
            let page_no = first_page + p as u64;
            while i < rows.len() && (rows[i].0 >> PAGE_BITS) < page_no {
                i += 1;
            }
            let start = i;
            while i < rows.len() && (rows[i].0 >> PAGE_BITS) == page_no {
                i += 1;
            }
            page.first = start as u32;
            // At most one row per byte of a page, and a page's last byte never starts a row of
            // its own in compiled code; a count that does not fit is cut (the search then
            // misses the page's last rows: they stop the walk, marked).
            page.count = u16::try_from(i - start).unwrap_or(u16::MAX);
        }
        Compact { first_page, pages, rows: rows.into_iter().map(|(_, r)| r).collect() }
    }

    /// Bytes in the kernel: rows and page directory (the dictionary is shared).
    pub fn bytes(&self) -> usize {
        self.rows.len() * size_of::<UnwindRow>() + self.pages.len() * size_of::<PageEntry>()
    }

    /// The rule at `addr` and how far past its row, as the kernel finds it
    /// ([`contract::find_row`] over this table's own arrays).
    pub fn lookup(&self, dict: &Dict, addr: u64) -> Option<(RuleRec, u32)> {
        let info = contract::TableInfo {
            first_page: self.first_page as u32,
            n_pages: self.pages.len() as u32,
            page_base: 0,
            row_base: 0,
        };
        let (row, diff) = contract::find_row(
            &info,
            addr,
            |p| self.pages.get(p as usize).copied(),
            |r| self.rows.get(r as usize).copied(),
        )?;
        Some((dict.recs.get(row.rule as usize).copied()?, diff))
    }
}

/// The rule a packed record stands for `diff` bytes past its row (the reference the tests
/// compare the kernel's form with).
pub fn unpack_rule(p: &RuleRec, diff: u32) -> Rule {
    use kind::*;
    let off = p.cfa_off_at(diff);
    let cfa = match p.kind & CFA_MASK {
        END => Cfa::End,
        SIGNAL => Cfa::Signal,
        PLT => Cfa::Plt(p.cfa_off as u8),
        RSP => Cfa::Rsp(off),
        RBP => Cfa::Rbp(off),
        DEREF_RSP => Cfa::DerefRsp { pre: p.cfa_off & !7, post: (p.cfa_off & 7) * 8 },
        DEREF_RBP => Cfa::DerefRbp { pre: p.cfa_off & !7, post: (p.cfa_off & 7) * 8 },
        _ => Cfa::Invalid,
    };
    if matches!(cfa, Cfa::Invalid | Cfa::End | Cfa::Signal) {
        return Rule { cfa, rbp: Rbp::Same };
    }
    let rbp = match p.kind & RBP_MASK {
        RBP_AT_CFA => Rbp::AtCfa(p.rbp_off as i32),
        RBP_AT_RBP => Rbp::AtRbp(p.rbp_off as i32),
        RBP_LOST => Rbp::Lost,
        _ => Rbp::Same,
    };
    Rule { cfa, rbp }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a rule becomes once packed (invalid if it does not fit).
    fn as_packed(rule: Rule) -> Rule {
        pack_rule(rule).map(|p| unpack_rule(&p, 0)).unwrap_or(Rule::INVALID)
    }

    /// The kernel's bounded page search gives what a plain search over the uncompressed rows
    /// gives, at every row boundary, around it, and at pseudo-random addresses.
    fn check_against_plain_search(t: &Table) {
        let mut dict = Dict::default();
        let c = Compact::from_table(t, &mut dict);
        let (Some(lo), Some(hi)) = (t.rows.first().map(|r| r.0), t.rows.last().map(|r| r.0)) else { return };
        let mut probes: Vec<u64> = t.rows.iter().flat_map(|r| [r.0, r.0.saturating_sub(1), r.0 + 1, r.0 + 2]).collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            probes.push(lo.saturating_sub(64) + x % (hi - lo + 128).max(1));
        }
        for a in probes {
            let want = as_packed(t.lookup(a));
            let got = c.lookup(&dict, a).map(|(r, d)| unpack_rule(&r, d)).unwrap_or(Rule::INVALID);
            assert_eq!(got, want, "at {a:#x}");
        }
    }

    #[test]
    fn compact_lookup_matches_plain_search_on_real_binaries() {
        let mut checked = 0;
        for path in ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3.11", "/proc/self/exe"] {
            let Ok(data) = std::fs::read(path) else { continue };
            let t = build(&data).unwrap();
            assert!(t.rows.len() > 100, "{path}: {} rows", t.rows.len());
            check_against_plain_search(&t);
            checked += 1;
        }
        assert!(checked >= 2, "no binaries to check");
    }

    #[test]
    fn empty_pages_and_rows_straddling_pages_resolve_to_the_covering_row() {
        let r = |n| Rule { cfa: Cfa::Rsp(n), rbp: Rbp::Same };
        // A row covering three whole pages, rows at page boundaries, push/pop folding.
        let rows = vec![
            (0x1_0000, r(8)),
            (0x1_0001, r(16)),
            (0x1_0010, r(8)),
            (0x4_0000, r(24)),
            (0x4_fffe, r(32)),
            (0x5_0000, r(40)),
            (0x5_0002, Rule::INVALID),
        ];
        let t = Table { rows, stats: BuildStats::default() };
        check_against_plain_search(&t);
        let mut dict = Dict::default();
        let c = Compact::from_table(&t, &mut dict);
        // Pushes one or two bytes after a row fold into it.
        assert_eq!(c.rows.len(), 5);
        let (rule, diff) = c.lookup(&dict, 0x3_1234).unwrap();
        // The distance is exact within 64 KiB, and at least 64 KiB beyond (all a fold needs).
        assert_eq!(unpack_rule(&rule, diff), r(8));
        assert!(diff >= 1 << 16);
        assert_eq!(c.lookup(&dict, 0x1_0013).unwrap().1, 3);
    }
}
