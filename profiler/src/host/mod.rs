//! The machine pyebpf runs on: processes in /proc, their cgroups and containers, native
//! symbols, other processes' memory, the kernel's clock, the privileges pyebpf needs, and its
//! own heap.
pub mod cgroup;
pub mod clock;
pub mod heap;
pub mod mapped_files;
pub mod memory;
pub mod privileges;
pub mod procinfo;
pub mod symbols;
