//! `pyebpf dump`'s text: one block per process, one per thread, its state line then its
//! Python stack innermost first (py-spy's `dump` layout).
use std::fmt::Write as _;

use crate::model::dump::{DumpFrame, DumpProcess, DumpStackFrame, DumpThread};

/// "blocked in accept on tcp listen 127.0.0.1:8000 for 12.3 s [idle]", "running on CPU 1",
/// "runnable (preempted, waiting for CPU 0 for 12.5 ms) [runqueue]", ...
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
    match (t.state.as_str(), t.cpu) {
        ("running", Some(cpu)) => {
            let _ = write!(s, " on CPU {cpu}");
        }
        ("runnable", Some(cpu)) => {
            s.push_str(if t.preempted { " (preempted, waiting for CPU " } else { " (waiting for CPU " });
            let _ = write!(s, "{cpu}");
            if let Some(secs) = t.runqueue_s {
                let _ = write!(s, " for {:.1} ms", secs * 1e3);
            }
            s.push(')');
        }
        _ => {}
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

fn python_frame(out: &mut String, f: &DumpFrame) {
    match f.line {
        Some(line) => {
            let _ = writeln!(out, "    {} ({}:{line})", f.function, f.file);
        }
        None => {
            let _ = writeln!(out, "    {} ({})", f.function, f.file);
        }
    }
}

/// `qsort (libc.so.6)`; without a symbol `[unknown] (libfoo.so+0x1a2b)`, as in profiles.
fn native_frame(out: &mut String, f: &DumpStackFrame) {
    let DumpStackFrame::Native { function, library, address, offset } = f else { return };
    let at = match (library, offset) {
        (Some(l), Some(o)) if function.is_none() => format!("{l}+{o:#x}"),
        (Some(l), _) => l.clone(),
        (None, _) => format!("{address:#x}"),
    };
    let _ = writeln!(out, "    {} ({at})", function.as_deref().unwrap_or("[unknown]"));
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
            match &t.native {
                // `--native`: the mixed stack, then why it is missing or where it stopped.
                Some(stack) => {
                    for f in stack {
                        match f {
                            DumpStackFrame::Python(f) => python_frame(&mut out, f),
                            DumpStackFrame::Native { .. } => native_frame(&mut out, f),
                        }
                    }
                    if let Some(note) = &t.native_note {
                        let _ = writeln!(out, "    ({note})");
                    }
                }
                None => {
                    for f in &t.frames {
                        python_frame(&mut out, f);
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
            native: None,
            native_note: None,
            cpu: None,
            runqueue_s: None,
            preempted: false,
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

    /// Running, runnable (preempted in user code, or in a syscall and waiting for the GIL), and
    /// where the kernel could not tell.
    #[test]
    fn running_and_runnable_threads_say_which_cpu_and_how_long_they_wait() {
        let thread = |state: &str, cpu, runqueue_s, preempted| DumpThread {
            tid: 12,
            name: "python3".into(),
            python_name: None,
            state: state.into(),
            syscall: None,
            target: None,
            category: (state == "runnable").then(|| "runqueue".into()),
            blocked_s: None,
            gil: None,
            frames: vec![],
            kernel_frames: vec![],
            native: None,
            native_note: None,
            cpu,
            runqueue_s,
            preempted,
        };
        assert_eq!(state_line(&thread("running", Some(1), None, false)), "running on CPU 1");
        assert_eq!(
            state_line(&thread("runnable", Some(0), Some(0.01234), true)),
            "runnable (preempted, waiting for CPU 0 for 12.3 ms) [runqueue]"
        );
        let mut t = thread("runnable", Some(3), None, false);
        t.syscall = Some("futex".into());
        t.gil = Some("waiting".into());
        assert_eq!(state_line(&t), "runnable in futex (waiting for CPU 3) [runqueue], waiting for the GIL");
        assert_eq!(state_line(&thread("running", None, None, false)), "running");
        let json = serde_json::to_value(thread("runnable", Some(0), Some(0.5), true)).unwrap();
        assert_eq!(
            (json["state"].as_str(), json["cpu"].as_u64(), json["runqueue_s"].as_f64()),
            (Some("runnable"), Some(0), Some(0.5))
        );
        assert_eq!(json["preempted"], true);
    }

    #[test]
    fn native_stacks_show_libraries_python_frames_in_place_and_the_note() {
        let py = DumpFrame { function: "call_chain".into(), file: "/srv/app.py".into(), line: Some(7) };
        let native = |function: Option<&str>, offset| DumpStackFrame::Native {
            function: function.map(str::to_string),
            library: Some("libchain.so".into()),
            address: 0x7f00_0000_1234,
            offset,
        };
        let mut t = DumpThread {
            tid: 12,
            name: "python3".into(),
            python_name: None,
            state: "sleeping".into(),
            syscall: Some("clock_nanosleep".into()),
            target: None,
            category: Some("sleep".into()),
            blocked_s: None,
            gil: None,
            frames: vec![py.clone()],
            kernel_frames: vec![],
            native: Some(vec![
                native(Some("h"), Some(0x1234)),
                native(None, Some(0x1100)),
                DumpStackFrame::Python(py.clone()),
            ]),
            native_note: Some("unwind stopped: bad frame".into()),
            cpu: None,
            runqueue_s: None,
            preempted: false,
        };
        let p = |t: DumpThread| DumpProcess {
            pid: 10,
            comm: "python3".into(),
            cmdline: None,
            python_version: Some("3.12.1".into()),
            threads: vec![t],
        };
        assert_eq!(
            text(&[p(t.clone())]),
            "Process 10: python3\nPython v3.12.1\n\nThread 12 (python3): sleeping in clock_nanosleep [sleep]\n    h (libchain.so)\n    [unknown] (libchain.so+0x1100)\n    call_chain (/srv/app.py:7)\n    (unwind stopped: bad frame)\n\n"
        );
        // JSON: frames tagged by kind, the Python frames also where they were.
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["native"][0]["kind"], "native");
        assert_eq!(json["native"][0]["function"], "h");
        assert_eq!(json["native"][2]["kind"], "python");
        assert_eq!(json["native"][2]["line"], 7);
        assert_eq!(json["frames"][0]["function"], "call_chain");
        // Without --native neither field is written.
        t.native = None;
        t.native_note = None;
        let json = serde_json::to_value(&t).unwrap();
        assert!(json.get("native").is_none() && json.get("native_note").is_none());
    }
}
