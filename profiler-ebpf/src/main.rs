//! pyebpf's eBPF programs. Kept small and bounded: they record, userspace interprets.
#![no_std]
#![no_main]
// Map keys and values go to aya-ebpf's map methods by reference on purpose: by value (as this
// lint suggests; they take `impl Borrow<K>`), each is copied to another stack slot, and the
// verifier's work grows: sched_switch took 186,557 verified instructions instead of 136,185.
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "by-value map keys cost the verifier 50K instructions in sched_switch"
)]
// Nearly every line here calls a BPF helper or dereferences a map value, all unsafe in Rust's
// terms, and the verifier checks the whole program's memory accesses at load time; a SAFETY
// comment on each would repeat that. (Map values are shared between CPUs: where that matters,
// the code says so, as in `maps::bump`.)
#![allow(clippy::undocumented_unsafe_blocks, reason = "the verifier checks memory safety; see above")]

mod exec;
mod lifecycle;
mod maps;
mod native;
mod off_cpu;
mod on_cpu;
mod python;
mod sample_out;
mod stacks;
mod syscall_regs;
mod task_iter;
mod task_life;
mod unseen_wakeup;
mod wait_target;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Panics cannot happen in a verified program; this only satisfies no_std.
    unsafe { core::hint::unreachable_unchecked() }
}

/// GPL-compatible: bpf_get_stack and bpf_probe_read_user are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
