//! Bad input: a clear one-line error, a distinct exit status, never a panic.
use std::{process::Command, time::Duration};

use integration_tests::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs pyebpf expecting failure with `code`; returns stderr.
fn fails_with(cmd: &mut Command, code: i32) -> String {
    let out = run(cmd, TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error"), "{stderr}");
    stderr
}

#[test]
fn not_root_is_refused_with_advice() {
    // Drop to nobody, with no capabilities.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(pyebpf_bin())
        .args(["profile", "--all", "-d", "1"]);
    let err = fails_with(&mut cmd, 3);
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn unknown_pid() {
    let pid = unused_pid();
    let err = fails_with(pyebpf().args(["profile", "--pid", &pid.to_string(), "-d", "1"]), 4);
    assert!(err.contains(&format!("no process with pid {pid}")), "{err}");
}

#[test]
fn command_that_does_not_exist() {
    let err = fails_with(pyebpf().args(["profile", "--", "/nonexistent/program"]), 4);
    assert!(err.contains("cannot start '/nonexistent/program'"), "{err}");
}

#[test]
fn unwritable_outputs_fail_before_profiling() {
    let err = fails_with(pyebpf().args(["profile", "--all", "-d", "30", "-o", "/nonexistent-dir/p.svg"]), 5);
    assert!(err.contains("does not exist"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = fails_with(pyebpf().args(["profile", "--all", "-d", "30", "-o"]).arg(dir.path()), 5);
    assert!(err.contains("is a directory"), "{err}");
    let err = fails_with(pyebpf().args(["profile", "--all", "-d", "30", "-o", "/proc/p.svg"]), 5);
    assert!(err.contains("cannot write '/proc/p.svg'"), "{err}");
}

#[test]
fn usage_errors() {
    let err = fails_with(pyebpf().args(["profile", "--all", "--frequency", "0"]), 2);
    assert!(err.contains("--frequency"), "{err}");
    let err = fails_with(pyebpf().args(["profile", "--all", "--pid", "1"]), 2);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = fails_with(pyebpf().args(["profile", "-d", "1"]), 2);
    assert!(err.contains("required"), "{err}");
    let err = fails_with(pyebpf().args(["profile", "--all", "-d", "0"]), 2);
    assert!(err.contains("greater than zero"), "{err}");
    let err = fails_with(pyebpf().args(["profile", "--all", "-o", "x.png"]), 2);
    assert!(
        err.contains("cannot tell the format") && err.contains(".speedscope.json") && err.contains(".pb.gz"),
        "{err}"
    );
    // Above the kernel's own limit (which it may lower at run time) or above ours.
    let limit: u64 =
        std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate").unwrap().trim().parse().unwrap();
    let err = fails_with(pyebpf().args(["profile", "--all", "-d", "1", "-F", &(limit + 1).to_string()]), 2);
    assert!(err.contains("--frequency"), "{err}");
}
