//! Native symbols: user frames per process and kernel frames, through blazesym.
//!
//! Addresses are collected as samples arrive and symbolized in batches (one blazesym call per
//! process per batch), then cached for the rest of the run. Batches run every few hundred
//! milliseconds, so a process that exits soon after it was sampled has usually been symbolized
//! already; if not, its frames stay `[unknown]`.
use std::collections::{BTreeSet, HashMap};

use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Kernel, Process, Source},
    },
};

use crate::host::procinfo;

/// What an address of a process is: its symbol, else the file mapped there (when known) and
/// the address's offset in that file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NativeSymbol {
    pub name: Option<String>,
    pub module: Option<String>,
    pub offset: Option<u64>,
}

pub struct Symbols {
    symbolizer: Symbolizer,
    /// (pid, address as looked up) → its symbol.
    user: HashMap<(u32, u64), NativeSymbol>,
    /// Kernel address → its symbol (None: not in kallsyms).
    kernel: HashMap<u64, Option<String>>,
    pending_user: HashMap<u32, BTreeSet<u64>>,
    pending_kernel: BTreeSet<u64>,
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
            user: HashMap::new(),
            kernel: HashMap::new(),
            pending_user: HashMap::new(),
            pending_kernel: BTreeSet::new(),
        }
    }

    /// Remembers one user address (`leaf`: the sampled instruction, else a return address).
    pub fn note_user(&mut self, pid: u32, addr: u64, leaf: bool) {
        let key = (pid, lookup_addr(addr, leaf));
        if !self.user.contains_key(&key) {
            self.pending_user.entry(pid).or_default().insert(key.1);
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

    /// Symbolizes everything noted since the last call.
    pub fn resolve_pending(&mut self) {
        for (pid, addrs) in std::mem::take(&mut self.pending_user) {
            let addrs: Vec<u64> = addrs.into_iter().collect();
            let src = Source::Process(Process::new(Pid::from(pid)));
            let results = self.symbolizer.symbolize(&src, Input::AbsAddr(&addrs)).ok();
            let mut mappings = None;
            for (i, &addr) in addrs.iter().enumerate() {
                let symbol = match results.as_ref().and_then(|r| r.get(i)) {
                    Some(Symbolized::Sym(sym)) => {
                        NativeSymbol { name: Some(sym.name.to_string()), module: None, offset: None }
                    }
                    _ => {
                        // Name the module and the offset in it, so "[unknown] (libfoo.so+0x1234)"
                        // still says where (and `addr2line -e libfoo.so` can say more).
                        let maps = mappings.get_or_insert_with(|| procinfo::mapped_files(pid));
                        match maps.iter().find(|m| (m.start..m.end).contains(&addr)) {
                            Some(m) => NativeSymbol {
                                name: None,
                                module: Some(m.name.clone()),
                                offset: Some(addr - m.start + m.offset),
                            },
                            None => NativeSymbol::default(),
                        }
                    }
                };
                self.user.insert((pid, addr), symbol);
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

    /// The symbol of a user stack entry (index 0 = leaf); None when it was never resolved.
    pub fn user_symbol(&self, pid: u32, addr: u64, index: usize) -> Option<&NativeSymbol> {
        self.user.get(&(pid, lookup_addr(addr, index == 0)))
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
    }

    /// Drops a process's cached symbols: after an exec its addresses mean other things.
    pub fn forget(&mut self, pid: u32) {
        self.user.retain(|(p, _), _| *p != pid);
        self.pending_user.remove(&pid);
    }
}
