//! pyebpf's eBPF programs. Kept small and bounded: they record, userspace interprets.
#![no_std]
#![no_main]

mod exec;
mod maps;
mod off_cpu;
mod on_cpu;
mod python;
mod stacks;

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
