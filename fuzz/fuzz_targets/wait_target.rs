//! The kernel's wait-target records (offcpu/kernel_target.rs): decoded from ring-buffer bytes
//! and named as reports show them (socket addresses, dentry names joined into paths). And every
//! other ring-buffer record through `engine::events::decode`: samples carry only their stacks'
//! filled parts, laid out from lengths in their head (`profiler_common::sample_record`), and an
//! off-CPU record's repeat key is read from its bytes (`engine::repeats::key_of`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::{
    engine::{
        events::{Event, decode},
        repeats::key_of,
    },
    offcpu::kernel_target::{KernelTarget, KernelTargets},
};

fuzz_target!(|data: &[u8]| {
    // An off-CPU record is only checked by `decode`: its parts are read when it is worked out
    // (`sample`) or looked up as a repeat (`key_of`).
    if let Ok(Event::OffCpu(rec)) = decode(data) {
        let sample = rec.sample();
        let mut key = Vec::new();
        key_of(&rec, &mut key);
        // The key is part of the head and the whole body: shorter than the record, and
        // starting with the pid the sample has.
        assert!(key.len() < rec.bytes.len());
        assert_eq!(sample.pid.to_ne_bytes(), key[..4]);
    }
    if let Some(t) = KernelTarget::decode(data) {
        let mut names = KernelTargets::default();
        if let Some(target) = names.name(&t) {
            let _ = target.to_string();
        }
        names.record(&t);
        let _ = names.take(t.tid, t.syscall_nr, t.arg0);
    }
});
