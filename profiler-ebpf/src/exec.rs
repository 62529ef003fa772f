//! Exec of a profiled process: its old program's layout is void. Drop it from `PY_PROCS` and
//! `UNWIND_PROCS` at once (so the unwinders never walk the new program with the old offsets or
//! mappings) and tell userspace.
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext};
use profiler_common::{EventKind, ExecEvent, stat};

use crate::maps::{EVENTS, PY_PROCS, UNWIND_PROCS, bump, is_target};

/// A raw tracepoint: attaching needs no tracefs mount.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_target(tgid) {
        return 0;
    }
    let _ = PY_PROCS.remove(&tgid);
    // Its mappings are the old program's too.
    let _ = UNWIND_PROCS.remove(&tgid);
    let event = ExecEvent { kind: EventKind::Exec as u32, pid: tgid };
    if EVENTS.output::<ExecEvent>(&event, 0).is_err() {
        bump(stat::LOST);
    }
    0
}
