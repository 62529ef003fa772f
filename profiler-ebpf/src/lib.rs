#![no_std]
// The programs live in main.rs (the `profiler` binary for the BPF target). This library target
// exists so that `profiler` can name this crate as a build-dependency and be rebuilt when it changes.
