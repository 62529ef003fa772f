//! The machine pyebpf runs on: processes in /proc, their cgroups and containers, native
//! symbols, other processes' memory, the kernel's clock, and the privileges pyebpf needs.
pub mod cgroup;
pub mod clock;
pub mod memory;
pub mod privileges;
pub mod procinfo;
pub mod symbols;
