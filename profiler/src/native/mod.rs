//! Native stacks without frame pointers: unwind tables built from DWARF CFI for the kernel's
//! unwinder (`profiler_common::unwind` has the format and the walk), and mixed Python and
//! native stacks merged from what it recorded.
//!
//! - [`rules`]: a CFI row as one of the few x86-64 rules the kernel evaluates.
//! - [`table`]: one binary's table, and its compact (kernel) form.
//! - [`procmaps`]: a process's executable mappings and the files behind them.
//! - [`registry`]: which tables are in the kernel, for which processes, within a fixed budget.
//! - [`merge`]: Python frames put in place of the eval-loop frames that ran them.
//! - [`stack`]: a blocked thread's stack walked from userspace with the same tables (`dump`).
pub mod merge;
pub mod procmaps;
pub mod registry;
pub mod rules;
pub mod stack;
pub mod table;
