//! The TCG threading mode `test-kernels` boots its guests with: one host thread per vCPU
//! (`thread=multi`) only on a qemu that keeps cross-modifying code coherent.
//!
//! Before 8.1, qemu translated a block of guest code without locking the guest pages it read
//! (fixed upstream by "accel/tcg: Always lock pages before translation", deba78709a, in 8.1.0).
//! With a host thread per vCPU, one vCPU can read the bytes of a block while another vCPU
//! writes them and invalidates that page's blocks; the block translated from the old bytes is
//! linked after the invalidation went by and is run from then on. The kernel writes its own
//! text whenever a static key flips: attaching or detaching a tracepoint's first or last user
//! (a BPF program, a perf event, a tracefs `enable`) re-patches every site of that key with
//! `text_poke_bp`, an int3 first and the int3 restored last. A block holding the int3 outlives
//! the restore, and the next CPU through it oopses (`Oops: int3`, with the memory already back
//! to the `jmp` or `nop`). Debian 12's qemu is 7.2: with `thread=multi` the 6.12 guest oopsed
//! in tracefs toggles alone, no BPF loaded (DESIGN, "The 6.12 guest's Oops: int3").
//! `thread=single` runs every vCPU on one host thread, so no vCPU translates while another
//! writes, and the guest still has two CPUs (IPIs, migration, concurrent BPF runs).

/// How the vCPUs share host threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Threading {
    /// One host thread runs every vCPU in turn.
    Single,
    /// A host thread per vCPU.
    Multi,
}

/// The first qemu whose translator locks the pages it reads (deba78709a).
const COHERENT_SINCE: (u32, u32) = (8, 1);

/// `(major, minor)` out of `qemu-system-x86_64 --version` ("QEMU emulator version 7.2.22 (...)").
pub fn qemu_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.lines().next()?.split("version ").nth(1)?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The mode to boot with and why: the one asked for, else `Multi` only on a qemu known to be
/// coherent (an unreadable version counts as old).
pub fn choose(requested: Option<Threading>, version: Option<(u32, u32)>) -> (Threading, String) {
    let shown = version.map_or("an unknown version".to_string(), |(a, b)| format!("{a}.{b}"));
    match requested {
        Some(t) => (t, "asked for".to_string()),
        None if version.is_some_and(|v| v >= COHERENT_SINCE) => {
            (Threading::Multi, format!("qemu {shown} translates under page locks"))
        }
        None => (
            Threading::Single,
            format!("qemu {shown} < 8.1 can run stale code after the kernel patches its text (DESIGN)"),
        ),
    }
}

/// The `-accel` argument.
pub fn accel(t: Threading) -> &'static str {
    match t {
        Threading::Single => "tcg,thread=single",
        Threading::Multi => "tcg,thread=multi",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_qemu_runs_one_thread_unless_asked() {
        let v = qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright");
        assert_eq!(v, Some((7, 2)));
        assert_eq!(choose(None, v).0, Threading::Single);
        assert_eq!(choose(Some(Threading::Multi), v).0, Threading::Multi);
        assert_eq!(choose(None, qemu_version("QEMU emulator version 8.1.0")).0, Threading::Multi);
        assert_eq!(
            choose(None, qemu_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1)")).0,
            Threading::Multi
        );
        assert_eq!(choose(None, qemu_version("QEMU emulator version 8.0.4")).0, Threading::Single);
        assert_eq!(choose(None, qemu_version("no version here")).0, Threading::Single);
        assert_eq!(accel(Threading::Single), "tcg,thread=single");
    }
}
