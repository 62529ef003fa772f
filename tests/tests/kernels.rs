//! What an older or smaller kernel lacks, and how pyebpf says so and goes on: simulated on this
//! kernel by handing pyebpf another BTF (`PYEBPF_KERNEL_BTF`), while the programs load into the
//! real one. (The real older kernels, Debian's 5.10, 6.1 and 6.12, are booted by
//! `cargo xtask test-kernels`.)
use std::time::Duration;

use integration_tests::{python::*, *};

/// Runs `pyebpf profile` on a Python process that computes and sleeps, with `btf` as the
/// kernel's BTF; returns (JSON profile, stderr).
fn profile_with_btf(btf: &std::path::Path) -> (Value, String) {
    let interp = host_interpreter();
    let code = "import time\ndef work():\n    x = 0\n    for _ in range(200000):\n        x += 1\nwhile True:\n    work()\n    time.sleep(0.02)\n";
    let child = KillOnDrop(interp.command().args(["-c", code]).spawn().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let mut cmd = pyebpf();
    cmd.env("PYEBPF_KERNEL_BTF", btf).args(["profile", "--pid", &child.pid().to_string(), "-d", "2", "-o"]).arg(&json);
    let out = run(&mut cmd, Duration::from_secs(90));
    assert_success(&out);
    let profile = read_json(&json);
    let p = process(&profile, child.pid()).unwrap_or_else(|| panic!("no samples of the workload")).clone();
    assert!(p["samples"].as_u64().unwrap() > 5, "on-CPU sampling goes on: {}", p["samples"]);
    (profile, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_kernel_without_btf_is_sampled_on_cpu_only_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (profile, stderr) = profile_with_btf(&dir.path().join("no-such-btf"));
    let line = "this kernel has no BTF (/sys/kernel/btf/vmlinux): off-CPU tracking is off (on-CPU sampling goes on)";
    assert_eq!(stderr.lines().filter(|l| l.contains(line)).count(), 1, "{stderr}");
    assert_eq!(profile["off_cpu"], false, "the profile says off-CPU time was not tracked");
}

#[test]
fn a_kernel_without_the_task_state_member_counts_d_waits_as_sleep() {
    // The running kernel's BTF with `__state` renamed (same length, so every offset holds):
    // neither `__state` (5.14+) nor `state` (before) is there.
    let mut btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel's BTF");
    let (from, to) = (b"\0__state\0", b"\0__st8te\0");
    let mut renamed = 0;
    for i in 0..btf.len() - from.len() {
        if &btf[i..i + from.len()] == from {
            btf[i..i + to.len()].copy_from_slice(to);
            renamed += 1;
        }
    }
    assert!(renamed > 0, "no __state in this kernel's BTF");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vmlinux");
    std::fs::write(&path, btf).unwrap();
    let (profile, stderr) = profile_with_btf(&path);
    let line = "no task_struct.__state or .state in the kernel's BTF: off-CPU waits in uninterruptible sleep (D) count as sleep, not disk";
    assert_eq!(stderr.lines().filter(|l| l.contains(line)).count(), 1, "{stderr}");
    // Off-CPU tracking itself goes on: the sleeps are there.
    assert_eq!(profile["off_cpu"], true);
    let p = &profile["processes"][0];
    assert!(p["totals_ns"]["sleep"].as_u64().unwrap_or(0) > 500_000_000, "{}", p["totals_ns"]);
}
