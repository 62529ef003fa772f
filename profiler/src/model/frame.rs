//! One frame of a stack, typed: outputs decide how to show it (folded text, speedscope and
//! pprof's structured frames), and only [`fmt::Display`] here defines the text.
use std::fmt;

use serde::{Deserialize, Serialize};

use super::category::Wait;

/// A frame of a stack, root-first order in [`super::StackProfile::frames`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frame {
    /// A Python function, at the line it was executing.
    Python(PythonFrame),
    /// A native function in the process (a C extension, libc, the interpreter itself).
    Native(NativeFrame),
    /// A kernel function (`--kernel`); `None` when the address has no symbol.
    Kernel(Option<String>),
    /// Not a function: something the stack says about itself.
    Marker(Marker),
    /// The synthetic leaf of an off-CPU stack in wall-time views: what it waited in. Never
    /// stored in a stack's frames; see [`super::StackProfile::wait_frame`].
    Wait(Wait),
}

/// A Python frame: py-spy's `qualname (path/file.py:LINE)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PythonFrame {
    /// Qualified name (3.11+), else the function name; `<module>` for module-level code.
    pub function: String,
    pub file: String,
    pub line: Option<i32>,
    /// Line the function starts at (`co_firstlineno`).
    pub first_line: i32,
}

/// A native frame: its symbol, or where it is when it has none.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NativeFrame {
    pub symbol: Option<String>,
    /// The file mapped at the address (`libfoo.so`), when the symbol is unknown.
    pub module: Option<String>,
    /// With `module`: the address's offset in that file (`[unknown] (libfoo.so+0x1234)`).
    pub offset: Option<u64>,
}

/// Frames that are not functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Marker {
    /// At the root of a Python stack deeper than `--max-depth`: frames were left out.
    Truncated,
    /// The only frame of an on-CPU sample taken with no user context (add `--kernel` to see
    /// where): exec, exit, a page fault...
    NoUserStack,
    /// A Python frame whose code object could not be read.
    UnknownPython,
    /// At the root of a native stack: the frame-pointer walk reached an address outside any
    /// executable mapping (a frame pointer used as a general register, or data on the stack),
    /// so neither it nor anything the walk found beyond it is a caller.
    NotCode,
    /// At the root of a native stack the unwinder could not continue: the last frame's code has
    /// no unwind info (no CFI: JIT code, a generated trampoline, a binary without `.eh_frame`).
    UnwindNoInfo,
    /// ... or the stack could not be read there.
    UnwindUnreadable,
    /// ... or the next address is in no mapping known (yet) to the unwinder.
    UnwindUnmapped,
    /// ... or the frame did not look like one (garbage registers).
    UnwindBadFrame,
    /// ... or the stack is deeper than the unwinder walks.
    UnwindTruncated,
    /// The only frame of a thread's on-CPU time when no sample landed in it (a thread that ran
    /// for less than a few sampling periods in all): the time is exact, where it ran unknown.
    Unsampled,
}

/// What a native address with no symbol is shown as.
pub const UNKNOWN: &str = "[unknown]";
const KERNEL_PREFIX: &str = "[kernel] ";

impl Marker {
    pub const ALL: [Marker; 10] = [
        Marker::Truncated,
        Marker::NoUserStack,
        Marker::UnknownPython,
        Marker::NotCode,
        Marker::UnwindNoInfo,
        Marker::UnwindUnreadable,
        Marker::UnwindUnmapped,
        Marker::UnwindBadFrame,
        Marker::UnwindTruncated,
        Marker::Unsampled,
    ];

    pub fn text(self) -> &'static str {
        match self {
            Marker::Truncated => "[truncated]",
            Marker::NoUserStack => "[no user stack]",
            Marker::UnknownPython => "[unknown python frame]",
            Marker::NotCode => "[not code]",
            Marker::UnwindNoInfo => "[unwind stopped: no unwind info]",
            Marker::UnwindUnreadable => "[unwind stopped: stack unreadable]",
            Marker::UnwindUnmapped => "[unwind stopped: unmapped address]",
            Marker::UnwindBadFrame => "[unwind stopped: bad frame]",
            Marker::UnwindTruncated => "[unwind stopped: too deep]",
            Marker::Unsampled => "[on CPU, not sampled]",
        }
    }
}

impl PythonFrame {
    /// The frame without its line (`work (app.py)`): the same code path across edits.
    pub fn without_line(&self) -> PythonFrame {
        PythonFrame { line: None, ..self.clone() }
    }
}

impl fmt::Display for PythonFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} ({}:{line})", self.function, self.file),
            None => write!(f, "{} ({})", self.function, self.file),
        }
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Python(p) => p.fmt(f),
            Frame::Native(NativeFrame { symbol: Some(s), .. }) => f.write_str(s),
            Frame::Native(NativeFrame { symbol: None, module: Some(m), offset: Some(o) }) => {
                write!(f, "{UNKNOWN} ({m}+{o:#x})")
            }
            Frame::Native(NativeFrame { symbol: None, module: Some(m), offset: None }) => write!(f, "{UNKNOWN} ({m})"),
            Frame::Native(NativeFrame { symbol: None, module: None, .. }) => f.write_str(UNKNOWN),
            Frame::Kernel(Some(s)) => write!(f, "{KERNEL_PREFIX}{s}"),
            Frame::Kernel(None) => write!(f, "{KERNEL_PREFIX}{UNKNOWN}"),
            Frame::Marker(m) => f.write_str(m.text()),
            Frame::Wait(w) => f.write_str(&w.leaf_frame()),
        }
    }
}

impl Frame {
    pub fn native(symbol: impl Into<String>) -> Frame {
        Frame::Native(NativeFrame { symbol: Some(symbol.into()), module: None, offset: None })
    }

    pub fn as_python(&self) -> Option<&PythonFrame> {
        match self {
            Frame::Python(p) => Some(p),
            _ => None,
        }
    }

    /// The frame a text stands for, when nothing more is known of it (a saved profile's
    /// `frames` entry that is not one of its `python_frames`): markers and kernel frames by
    /// their form, anything else a native symbol.
    pub fn from_text(text: &str) -> Frame {
        if let Some(m) = Marker::ALL.iter().find(|m| m.text() == text) {
            return Frame::Marker(*m);
        }
        if let Some(sym) = text.strip_prefix(KERNEL_PREFIX) {
            return Frame::Kernel((sym != UNKNOWN).then(|| sym.to_string()));
        }
        if text == UNKNOWN {
            return Frame::Native(NativeFrame { symbol: None, module: None, offset: None });
        }
        if let Some(module) = text.strip_prefix("[unknown] (").and_then(|m| m.strip_suffix(')')) {
            let (module, offset) = match module.rsplit_once("+0x").map(|(m, o)| (m, u64::from_str_radix(o, 16))) {
                Some((m, Ok(o))) => (m, Some(o)),
                _ => (module, None),
            };
            return Frame::Native(NativeFrame { symbol: None, module: Some(module.to_string()), offset });
        }
        Frame::native(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_each_kind_reads_back() {
        let frames = [
            Frame::native("PyObject_Call"),
            Frame::Native(NativeFrame { symbol: None, module: Some("libfoo.so".into()), offset: None }),
            Frame::Native(NativeFrame { symbol: None, module: Some("libfoo.so".into()), offset: Some(0x1a2b) }),
            Frame::Native(NativeFrame { symbol: None, module: None, offset: None }),
            Frame::Marker(Marker::UnwindNoInfo),
            Frame::Kernel(Some("do_syscall_64".into())),
            Frame::Kernel(None),
            Frame::Marker(Marker::Truncated),
            Frame::Marker(Marker::NoUserStack),
            Frame::Marker(Marker::UnknownPython),
            Frame::Marker(Marker::NotCode),
            Frame::Marker(Marker::Unsampled),
        ];
        for f in frames {
            assert_eq!(Frame::from_text(&f.to_string()), f, "{f}");
        }
        let py = PythonFrame { function: "A.run".into(), file: "/srv/a.py".into(), line: Some(7), first_line: 5 };
        assert_eq!(Frame::Python(py.clone()).to_string(), "A.run (/srv/a.py:7)");
        assert_eq!(py.without_line().to_string(), "A.run (/srv/a.py)");
    }
}
