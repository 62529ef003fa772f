//! `pyebpf dump`: every thread of each process at one moment, as it is now (no time, no
//! weights): what it is doing, waiting for, and the Python stack it is in.
use serde::Serialize;

/// One process.
#[derive(Debug, Clone, Serialize)]
pub struct DumpProcess {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Option<String>,
    /// The CPython version, None for a process that is not Python (given by `--pid`).
    pub python_version: Option<String>,
    pub threads: Vec<DumpThread>,
}

/// One thread, now.
#[derive(Debug, Clone, Serialize)]
pub struct DumpThread {
    pub tid: u32,
    /// OS thread name.
    pub name: String,
    /// `threading.Thread.name`.
    pub python_name: Option<String>,
    /// `running` (on a CPU), `runnable` (waiting for one: preempted, or woken and not yet
    /// run), `sleeping`, `disk-sleep`, `stopped`, ... Where the kernel cannot tell the first two
    /// apart (no task iterator, no `task_struct.on_cpu`), `running` means either, as `cpu` null.
    pub state: String,
    /// The syscall it is blocked in (or, runnable, is in), its target and the category of the
    /// wait (`runqueue` for a runnable thread).
    pub syscall: Option<String>,
    pub target: Option<String>,
    pub category: Option<String>,
    /// How long it has been off the CPU (seconds), when blocked.
    pub blocked_s: Option<f64>,
    /// `holding` or `waiting` for the GIL, when known.
    pub gil: Option<String>,
    /// Python frames, innermost first.
    pub frames: Vec<DumpFrame>,
    /// Kernel frames, innermost first (from the task iterator).
    pub kernel_frames: Vec<String>,
    /// With `--native`: the user stack, innermost first, native frames with the Python frames
    /// in place of the interpreter's eval-loop frames that run them (as `profile --native`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native: Option<Vec<DumpStackFrame>>,
    /// With `--native`: why `native` is empty or where its walk stopped short
    /// ("running, no native stack", "unwind stopped: no unwind info", ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_note: Option<String>,
    /// `running`: the CPU it is on; `runnable`: the CPU whose run queue it waits on.
    pub cpu: Option<u32>,
    /// `runnable`: how long it has waited for a CPU so far (seconds; the run queue's clock,
    /// which lags by up to a tick); None where the kernel does not keep it (CONFIG_SCHED_INFO).
    pub runqueue_s: Option<f64>,
    /// `runnable` and not in a syscall: it was preempted (interrupted in user code).
    pub preempted: bool,
}

/// A frame of a mixed stack (`--native`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DumpStackFrame {
    /// A native function: its symbol (None when it has none), the file mapped there
    /// (`libc.so.6`), the address and its offset in that file (for `addr2line`).
    Native {
        function: Option<String>,
        library: Option<String>,
        address: u64,
        offset: Option<u64>,
    },
    Python(DumpFrame),
}

/// A Python frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DumpFrame {
    pub function: String,
    pub file: String,
    pub line: Option<i32>,
}

/// The JSON document `dump --json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Dump {
    pub format: &'static str,
    pub version: u32,
    pub processes: Vec<DumpProcess>,
}
