//! `pyebpf dump`'s text: one block per process, one per thread, its state line then its
//! Python stack innermost first (py-spy's `dump` layout).
use std::fmt::Write as _;

use crate::model::dump::{DumpProcess, DumpThread};

/// "blocked in accept on tcp listen 127.0.0.1:8000 for 12.3 s [idle]", "running", ...
fn state_line(t: &DumpThread) -> String {
    let mut s = String::new();
    match &t.syscall {
        Some(call) => {
            let _ = write!(s, "{} in {call}", t.state);
            if let Some(target) = &t.target {
                let _ = write!(s, " on {target}");
            }
        }
        None => s.push_str(&t.state),
    }
    if let Some(secs) = t.blocked_s {
        let _ = write!(s, " for {secs:.1} s");
    }
    if let Some(c) = &t.category {
        let _ = write!(s, " [{c}]");
    }
    match t.gil.as_deref() {
        Some("holding") => s.push_str(", holding the GIL"),
        Some("waiting") => s.push_str(", waiting for the GIL"),
        _ => {}
    }
    s
}

pub fn text(processes: &[DumpProcess]) -> String {
    let mut out = String::new();
    for p in processes {
        let _ = writeln!(out, "Process {}: {}", p.pid, p.cmdline.as_deref().unwrap_or(&p.comm));
        match &p.python_version {
            Some(v) => {
                let _ = writeln!(out, "Python v{v}");
            }
            None => out.push_str("(not a Python process)\n"),
        }
        for t in &p.threads {
            let name = match &t.python_name {
                Some(py) if *py != t.name => format!("\"{py}\" ({})", t.name),
                Some(py) => format!("\"{py}\""),
                None => format!("({})", t.name),
            };
            let _ = writeln!(out, "\nThread {} {name}: {}", t.tid, state_line(t));
            for f in &t.frames {
                match f.line {
                    Some(line) => {
                        let _ = writeln!(out, "    {} ({}:{line})", f.function, f.file);
                    }
                    None => {
                        let _ = writeln!(out, "    {} ({})", f.function, f.file);
                    }
                }
            }
            for k in &t.kernel_frames {
                let _ = writeln!(out, "    [kernel] {k}");
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dump::DumpFrame;

    #[test]
    fn threads_show_their_wait_and_stack_innermost_first() {
        let t = DumpThread {
            tid: 12,
            name: "python3".into(),
            python_name: Some("waiter".into()),
            state: "sleeping".into(),
            syscall: Some("futex".into()),
            target: Some("PyMutex".into()),
            category: Some("lock".into()),
            blocked_s: Some(2.04),
            gil: None,
            frames: vec![
                DumpFrame { function: "wait_for_lock".into(), file: "/srv/app.py".into(), line: Some(30) },
                DumpFrame { function: "run".into(), file: "threading.py".into(), line: Some(1010) },
            ],
            kernel_frames: vec![],
        };
        let p = DumpProcess {
            pid: 10,
            comm: "python3".into(),
            cmdline: None,
            python_version: Some("3.13.1".into()),
            threads: vec![t],
        };
        assert_eq!(
            text(&[p]),
            "Process 10: python3\nPython v3.13.1\n\nThread 12 \"waiter\" (python3): sleeping in futex on PyMutex for 2.0 s [lock]\n    wait_for_lock (/srv/app.py:30)\n    run (threading.py:1010)\n\n"
        );
    }
}
