//! Checks that we may load BPF programs, before trying, so the error says what to do.
use crate::error::{ExitCode, fatal};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability mask of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Loading tracing BPF programs and opening system-wide perf events needs CAP_BPF and
/// CAP_PERFMON (or CAP_SYS_ADMIN, which root has). Reading other processes' memory maps for
/// symbols needs root-like access too, so we ask for the same.
pub fn check() -> anyhow::Result<()> {
    let caps = effective_caps().unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    Err(fatal(
        ExitCode::Permission,
        "pyebpf needs root (or the CAP_BPF and CAP_PERFMON capabilities) to load its eBPF programs: run it with sudo",
    ))
}
