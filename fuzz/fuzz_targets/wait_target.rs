//! The kernel's wait-target records (offcpu/kernel_target.rs): decoded from ring-buffer bytes
//! and named as reports show them (socket addresses, dentry names joined into paths). And every
//! other ring-buffer record through `engine::events::decode`: samples carry only their stacks'
//! filled parts, laid out from lengths in their head (`profiler_common::sample_record`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::offcpu::kernel_target::{KernelTarget, KernelTargets};

fuzz_target!(|data: &[u8]| {
    let _ = profiler::engine::events::decode(data);
    if let Some(t) = KernelTarget::decode(data) {
        let mut names = KernelTargets::default();
        if let Some(target) = names.name(&t) {
            let _ = target.to_string();
        }
        names.record(&t);
        let _ = names.take(t.tid, t.syscall_nr, t.arg0);
    }
});
