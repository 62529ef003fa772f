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
    /// `running` (on a CPU or waiting for one), `sleeping`, `disk-sleep`, `stopped`, ...
    pub state: String,
    /// The syscall it is blocked in, its target and the category of the wait.
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
