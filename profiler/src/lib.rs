//! pyebpf as a library: the binary in main.rs is a thin shell over `run`.
pub mod aggregate;
pub mod bpf;
pub mod cli;
pub mod error;
pub mod events;
pub mod flamegraph;
pub mod kernel_btf;
pub mod output;
pub mod privileges;
pub mod procinfo;
pub mod profile;
pub mod python;
pub mod run;
pub mod summary;
pub mod symbols;
pub mod target;
