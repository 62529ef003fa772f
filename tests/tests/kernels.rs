//! Kernels. What an older or smaller kernel lacks, and how pyebpf says so and goes on:
//! simulated on this kernel by handing pyebpf another BTF (`PYEBPF_KERNEL_BTF`), while the
//! programs load into the real one. And the core checks (`kernel_core_*`) that
//! `cargo xtask test-kernels` runs on Debian's 5.10, 6.1 and 6.12 kernels under qemu; they
//! run here too.
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

// The core checks `cargo xtask test-kernels` runs on each emulated kernel. Their workloads are
// commands pyebpf starts (`-- COMMAND`), so they begin once it samples however long loading
// takes (a minute under emulation), and run longer there (`PYEBPF_TEST_EMULATED`, set by the
// guest): userspace discovers a Python process and reads its names seconds after its start.
// Emulation slows userspace ~30x, the kernel's programs much less: at the host's rates the
// guest's pyebpf could not drain its ring buffer (4,728 events lost in a 15 s run at 99 Hz on
// 6.12, among them the thread-miss and name events the checks need), so the guest samples at
// 49 Hz with at most 10 off-CPU stacks a second per thread, and every check requires that no
// event was lost.

fn emulated() -> bool {
    std::env::var_os("PYEBPF_TEST_EMULATED").is_some()
}

/// Seconds a workload runs: on the host `native`, under emulation `emulated`.
fn workload_secs(native: u32, emulated: u32) -> String {
    (if self::emulated() { emulated } else { native }).to_string()
}

/// `-F HZ` and the off-CPU stack rate: the arguments' values on the host, lower rates under
/// emulation (above).
fn rates(hz: &'static str) -> [&'static str; 4] {
    if emulated() { ["-F", "49", "--off-cpu-stack-rate", "10"] } else { ["-F", hz, "--off-cpu-stack-rate", "50"] }
}

/// Profiles a command pyebpf starts until it exits; the JSON profile.
fn profile_command(args: &[&str], command: &[&std::ffi::OsStr]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let mut cmd = pyebpf();
    cmd.arg("profile").args(args).arg("-o").arg(&json).arg("--").args(command);
    // Under emulation the load alone takes a minute, and a Python process starts in seconds.
    let timeout = if emulated() { 600 } else { 90 };
    assert_success(&run(&mut cmd, Duration::from_secs(timeout)));
    let profile = read_json(&json);
    assert_eq!(profile["lost_events"], 0, "events lost: the checks below would judge a partial profile");
    profile
}

#[test]
fn kernel_core_native_frame_pointer_chain() {
    let spin = spin_program();
    let secs = workload_secs(3, 6);
    let profile =
        profile_command(&[&rates("199")[..], &["--mode", "cpu"]].concat(), &[spin.as_os_str(), secs.as_ref()]);
    let p = &profile["processes"][0];
    assert_eq!(p["comm"], "spin");
    // ~600 samples on an idle machine; a shared one gives the spinner less CPU.
    assert!(p["samples"].as_u64().unwrap() > 50, "{}", p["samples"]);
    let share = share_with_chain(p, &["main", "outer", "inner_spin"]);
    assert!(share > 0.8, "main → outer → inner_spin in {:.0}% of samples", share * 100.0);
}

#[test]
fn kernel_core_python_chain_and_thread_names() {
    let script = workload("chain.py");
    let line = |m: &str| line_of(&script, m);
    for_each_interpreter("kernel core: Python chain", |interp| {
        let m = interp.minor;
        let qualified = |q: &str| if m >= 11 { q.to_string() } else { q.rsplit('.').next().unwrap().to_string() };
        let secs = workload_secs(4, 15);
        let mut argv: Vec<std::ffi::OsString> = interp.argv();
        argv.extend([interp.workload("chain.py").into(), secs.into(), "2".into()]);
        let argv: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
        let profile = profile_command(&[&rates("199")[..], &["--mode", "cpu"]].concat(), &argv);
        let p = &profile["processes"][0];
        let chain = [
            Expect::at("run", line("# CALL work")),
            Expect::at(&qualified("Worker.work"), line("# CALL inner")),
            Expect::at(&qualified("Worker.work.<locals>.inner"), line("# CALL burn")),
            Expect { function: "burn".into(), lines: line("# LOOP start")..=line("# LOOP end") },
        ];
        let file = interp.workload("chain.py");
        let (hit, total) = count(p, None, |s| has_chain(s, &file, &chain));
        // Samples before userspace has read the new process's layout carry no Python frames.
        if total < 50 || hit * 2 < total {
            return Err(format!("{hit}/{total} samples with the chain"));
        }
        let mut names: Vec<&str> =
            p["threads"].as_array().unwrap().iter().filter_map(|t| t["python_name"].as_str()).collect();
        names.sort();
        if names != ["MainThread", "burner-0", "burner-1"] {
            return Err(format!("thread names {names:?}"));
        }
        Ok(())
    });
}

#[test]
fn kernel_core_off_cpu_categories_with_targets() {
    for_each_interpreter("kernel core: off-CPU", |interp| {
        let secs = workload_secs(3, 10);
        let mut argv: Vec<std::ffi::OsString> = interp.argv();
        argv.extend([interp.workload("offcpu.py").into(), secs.into()]);
        let argv: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
        let profile = profile_command(&rates("99"), &argv);
        let p = &profile["processes"][0];
        // Each thread's own wait is its largest off-CPU category.
        for (thread, category) in [("compute-sleep", "sleep"), ("net-client", "net"), ("lock-waiter", "lock")] {
            let t = python_thread(p, thread)?;
            let totals = t["totals_ns"].as_object().unwrap();
            let largest = totals
                .iter()
                .filter(|(c, _)| !["cpu", "runqueue", "gil"].contains(&c.as_str()))
                .max_by_key(|(_, ns)| ns.as_u64().unwrap_or(0))
                .map(|(c, _)| c.as_str());
            if largest != Some(category) {
                return Err(format!("{thread}: largest wait is {largest:?}, not {category}: {}", t["totals_ns"]));
            }
        }
        if !has_wait_stack(p, "net", "client_loop", "tcp 127.0.0.1:") {
            return Err("no net stack in client_loop on tcp 127.0.0.1".into());
        }
        // The guest has no block device: its root is the host's over 9p under a tmpfs overlay,
        // where fsync returns at once, so no disk wait there to find.
        if !emulated() && !has_wait_stack(p, "disk", "fsync_loop", "file /") {
            return Err("no disk stack in fsync_loop with the file's path".into());
        }
        Ok(())
    });
}

/// `dump` on each kernel: the task iterator's CPU state (`on_cpu`, the CPU, the run-queue wait
/// from `sched_info` and the run queue's clock, at offsets from that kernel's BTF). Two C
/// spinners pinned to one CPU at one SCHED_FIFO priority: the first keeps the CPU, the second
/// waits for it all along (its schedstat does not move across the dump), and must be dumped
/// `runnable` on that CPU with its wait so far.
#[test]
fn kernel_core_dump_running_and_runnable() {
    use integration_tests::sched::*;
    let cpus = allowed_cpus();
    let (Some(&other), Some(&cpu)) = (cpus.first(), cpus.last()) else { panic!("no CPUs allowed") };
    assert_ne!(cpu, other, "two CPUs needed (one for the spinners, one for the dump)");
    set_affinity(0, other).unwrap();
    let spinners: Vec<KillOnDrop> = (0..2).map(|_| KillOnDrop(start_spin(600.0, 0))).collect();
    let pids: Vec<u32> = spinners.iter().map(KillOnDrop::pid).collect();
    // Both in their loop before either is made FIFO: a spinner preempted for good while still
    // starting (the loader mapping its libraries) would hold its mm's lock, and the dump's
    // read of its maps would wait in D state as long as the other one spins (seen once: 6 min).
    poll(Duration::from_secs(60), "both spinners spinning", || {
        let ran: Vec<u64> = pids.iter().map(|&p| schedstat(p).map(|s| s.0)).collect::<Result<_, _>>()?;
        if ran.iter().all(|&ns| ns >= 20_000_000) { Ok(()) } else { Err(format!("CPU ns so far {ran:?}")) }
    });
    for &pid in &pids {
        set_affinity(pid, cpu).unwrap();
        set_fifo(pid, true).unwrap();
    }
    let (before, waiter) = poll(Duration::from_secs(60), "one spinner alone on the CPU", || {
        let first: Vec<_> = pids.iter().map(|&p| schedstat(p)).collect::<Result<_, _>>()?;
        std::thread::sleep(Duration::from_millis(300));
        let second: Vec<_> = pids.iter().map(|&p| schedstat(p)).collect::<Result<_, _>>()?;
        match (0..2).filter(|&i| first[i] == second[i]).collect::<Vec<_>>()[..] {
            [i] => Ok((first[i], i)),
            _ => Err(format!("{first:?} then {second:?}")),
        }
    });
    let out = run(
        pyebpf().args(["dump", "--json", "--pid", &pids[0].to_string(), "--pid", &pids[1].to_string()]),
        Duration::from_secs(600),
    );
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("task iterator"), "the task iterator loads: {stderr}");
    assert_eq!(schedstat(pids[waiter]).unwrap(), before, "the waiter did not run during the dump");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let thread = |pid: u32| {
        let p = doc["processes"].as_array().unwrap().iter().find(|p| p["pid"] == pid).unwrap();
        p["threads"][0].clone()
    };
    let t = thread(pids[waiter]);
    assert!(
        t["state"] == "runnable" && t["cpu"] == cpu && t["runqueue_s"].as_f64().is_some_and(|s| s >= 0.28),
        "the waiting spinner: {t}"
    );
    let t = thread(pids[1 - waiter]);
    assert!((t["state"] == "running" || t["state"] == "runnable") && t["cpu"] == cpu, "the running spinner: {t}");
}
