//! Safe on a production host: faults (SIGKILL, ring-buffer overflow, process storms, fork and
//! exec, signals at any moment), hostile targets that corrupt their own interpreter, and
//! processes in other pid and mount namespaces.
use std::{
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{python::*, *};

const TIMEOUT: Duration = Duration::from_secs(90);

/// The programs pyebpf loads, by their kernel names.
const PROGRAM_NAMES: [&str; 5] = ["on_cpu_sample", "process_exec", "sched_switch", "sched_wakeup", "sys_exit"];

fn ids(list: &[Value], filter: impl Fn(&Value) -> bool) -> Vec<u64> {
    let mut ids: Vec<u64> = list.iter().filter(|v| filter(v)).filter_map(|v| v["id"].as_u64()).collect();
    ids.sort();
    ids
}

fn ours(prog: &Value) -> bool {
    prog["name"].as_str().is_some_and(|n| PROGRAM_NAMES.contains(&n))
}

/// Every program id some live process holds open (other pyebpf runs may be going on).
fn prog_ids_held_by_anyone() -> Vec<u64> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
            all.extend(bpf_ids_held_by(pid).0);
        }
    }
    all
}

#[test]
fn sigkill_mid_profile_leaves_no_programs_or_links_attached() {
    let before = ids(&bpftool_list("prog"), ours);
    let _spin = KillOnDrop(start_spin(20.0, 0));
    let dir = tempfile::tempdir().unwrap();
    let child = pyebpf()
        .args(["profile", "--all", "-o"])
        .arg(dir.path().join("p.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut child = KillOnDrop(child);
    // Wait until every program is loaded and attached: its fds hold 5 programs and 6+ links
    // (one perf-event link per CPU, one per raw tracepoint).
    let start = Instant::now();
    let (progs, links) = loop {
        let (progs, links) = bpf_ids_held_by(pid);
        let listed = bpftool_list("prog");
        let named = progs.iter().filter(|id| listed.iter().any(|p| p["id"] == **id && ours(p))).count();
        if named == PROGRAM_NAMES.len() && links.len() > PROGRAM_NAMES.len() {
            break (progs, links);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "pyebpf did not attach its programs: {progs:?} {links:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let attached: Vec<u64> = ids(&bpftool_list("link"), |l| l["prog_id"].as_u64().is_some_and(|p| progs.contains(&p)));
    assert!(attached.len() >= links.len(), "links {links:?} not all listed as attached: {attached:?}");
    // Profile for a while, then kill it hard: no chance to clean up.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let status = child.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    // The kernel frees programs and links once their last fd is closed (asynchronously).
    let start = Instant::now();
    loop {
        let prog_list = bpftool_list("prog");
        let link_list = bpftool_list("link");
        let left_progs: Vec<u64> = ids(&prog_list, |p| p["id"].as_u64().is_some_and(|id| progs.contains(&id)));
        let left_links: Vec<u64> = ids(&link_list, |l| {
            l["id"].as_u64().is_some_and(|id| links.contains(&id))
                || l["prog_id"].as_u64().is_some_and(|p| progs.contains(&p))
        });
        if left_progs.is_empty() && left_links.is_empty() {
            // Any other program with our names that appeared meanwhile belongs to another live
            // process (a concurrent pyebpf), never to the killed one.
            let held = prog_ids_held_by_anyone();
            let stray: Vec<u64> =
                ids(&prog_list, ours).into_iter().filter(|id| !before.contains(id) && !held.contains(id)).collect();
            assert!(stray.is_empty(), "programs with pyebpf's names held by no process: {stray:?}");
            eprintln!("{} programs and {} links gone {:?} after SIGKILL", progs.len(), links.len(), start.elapsed());
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still attached 10 s after SIGKILL: programs {left_progs:?}, links {left_links:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ring_buffer_overflow_is_counted_and_the_profile_stays_valid() {
    let interp = host_interpreter();
    let script = workload("yield_burst.py");
    // Three processes of four threads switching out inside sched_yield as fast as they can:
    // with a threshold of 0 and no stack budget every switch is an event with stacks.
    let workers: Vec<KillOnDrop> = (0..3).map(|_| start_script(&interp.path, &script, &["30", "4"])).collect();
    let dir = tempfile::tempdir().unwrap();
    let (json, folded) = (dir.path().join("p.json"), dir.path().join("p.folded"));
    let mut cmd = pyebpf();
    // No stack budget (by default each thread gets a few off-CPU stacks per second, which keeps
    // this burst well below the buffer's size).
    cmd.args(["profile", "-d", "3", "--off-cpu-threshold-us", "0", "--off-cpu-stack-rate", "0", "-o"])
        .arg(&json)
        .arg("-o")
        .arg(&folded);
    for w in &workers {
        cmd.args(["--pid", &w.pid().to_string()]);
    }
    let start = Instant::now();
    // A consumer that stalls (a busy or descheduled profiler on a loaded host): stopped for
    // 1.5 s mid-profile, with its reader thread, while the kernel keeps writing. Records are
    // small enough (only their filled part is sent) that a running reader keeps up with this
    // burst on its own, so the stall is what fills the buffer.
    let child = spawn_sampling(&mut cmd);
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id() as i32;
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = wait_output(child, TIMEOUT);
    let took = start.elapsed();
    assert_success(&out);
    // Bounded: draining a buffer that refills as fast as it empties must not stall the stop.
    assert!(took < Duration::from_secs(20), "a 3 s profile took {took:?}");
    let profile = read_json(&json);
    let lost = profile["lost_events"].as_u64().unwrap();
    let events = profile["off_cpu_events"].as_u64().unwrap();
    assert!(lost > 0, "no lost events with {events} off-CPU events: the burst did not overflow the buffer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{lost} lost events")), "summary does not show {lost} lost events:\n{stdout}");
    assert!(stdout.contains("events were lost (ring buffer full)"), "no warning in the summary:\n{stdout}");
    check_outputs_complete(dir.path(), &["p.json", "p.folded"]).unwrap();
    // What did arrive is attributed: the yield loop's frames are there.
    for w in &workers {
        let p = process(&profile, w.pid()).unwrap_or_else(|| panic!("pid {} missing", w.pid()));
        let has_loop = p["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["python_frames"].as_array().unwrap().iter().any(|f| f["function"] == "yield_loop"));
        assert!(has_loop, "no yield_loop stack for pid {}", w.pid());
    }
    eprintln!("{events} off-CPU events kept, {lost} lost, in {took:?}");
}

/// Peak RSS (KiB) of a child once it has exited, from wait4.
fn wait_rusage(pid: u32, timeout: Duration) -> (std::process::ExitStatus, i64) {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: plain wait4 on our own child, into locals.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let r = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid as i32 {
            return (std::process::ExitStatus::from_raw(status), usage.ru_maxrss);
        }
        if start.elapsed() > timeout {
            // SAFETY: our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("pid {pid} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn thousands_of_short_lived_processes_under_all() {
    let interp = host_interpreter();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    #[allow(clippy::zombie_processes, reason = "reaped by wait_rusage (wait4), which also gives its peak RSS")]
    let profiler = pyebpf()
        .args(["profile", "--all", "-F", "499", "-o"])
        .arg(out_dir.join("p.json"))
        .arg("-o")
        .arg(out_dir.join("p.folded"))
        .arg("-o")
        .arg(out_dir.join("p.svg"))
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let pid = profiler.id();
    // The storm lasts about a second on an idle host: it must not start before sampling does
    // (loading took over a second in CI, and the profile then held 44 processes).
    let mut profiler = profiler;
    wait_sampling_in(&stderr, &mut profiler);
    // Three loops starting /bin/true as fast as bash forks, one python3 -c pass loop, each
    // until it has started its share (or 60 s, on a very loaded machine); then Ctrl-C.
    let storm = |command: String, target: u32| {
        let script = format!(
            "n=0; end=$((SECONDS+60)); while [ $n -lt {target} ] && [ $SECONDS -lt $end ]; do {command}; n=$((n+1)); done; echo $n"
        );
        Command::new("bash").args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap()
    };
    let loops: Vec<_> = (0..3).map(|_| storm("/bin/true".into(), 350)).collect();
    let py = storm(format!("{} -c pass", interp.path.display()), 60);
    let count = |c: std::process::Child| -> u64 {
        String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).trim().parse().unwrap()
    };
    let trues: u64 = loops.into_iter().map(count).sum();
    let pythons = count(py);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let (status, maxrss_kib) = wait_rusage(pid, TIMEOUT);
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(status.success() && !err.contains("panicked"), "pyebpf failed: {status:?}\n{err}");
    eprintln!("{trues} /bin/true and {pythons} python3 -c pass started; pyebpf peak RSS {} MiB", maxrss_kib / 1024);
    assert!(trues + pythons >= 1000, "only {trues} + {pythons} processes started: not a storm");
    check_outputs_complete(&out_dir, &["p.json", "p.folded", "p.svg"]).unwrap();
    let profile = read_json(&out_dir.join("p.json"));
    let processes = profile["processes"].as_array().unwrap().len();
    assert!(processes > 100, "only {processes} processes in the profile");
    // Bounded: per-process state for thousands of dead processes must not pile up.
    assert!(maxrss_kib < 512 * 1024, "pyebpf peaked at {} MiB", maxrss_kib / 1024);
    let summary = std::fs::read_to_string(&stdout).unwrap();
    assert!(summary.contains("pyebpf: profiled"), "no summary: {summary}");
}

#[test]
fn a_target_that_forks_and_execs_mid_profile() {
    let interp = host_interpreter();
    let script = workload("fork_exec.py");
    let chain = workload("chain.py");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let profiler = spawn_sampling(pyebpf().args(["profile", "--all", "-F", "199", "-d", "5", "-o"]).arg(&json));
    std::thread::sleep(Duration::from_millis(800));
    let mut target =
        Command::new(&interp.path).arg(&script).arg("3").arg(&chain).stdout(Stdio::piped()).spawn().unwrap();
    let mut pids = None;
    for line in BufReader::new(target.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with('{') {
            pids = Some(serde_json::from_str::<Value>(&line).unwrap());
        }
    }
    assert!(target.wait().unwrap().success());
    let pids = pids.expect("fork_exec.py printed its pids");
    let out = wait_output(profiler, TIMEOUT);
    assert_success(&out);
    let profile = read_json(&json);
    // (samples in `function` of `file`, all on-CPU samples) of a pid.
    let samples_in = |pid: &Value, function: &str, file: &Path| -> (u64, u64) {
        let Some(p) = process(&profile, pid.as_u64().unwrap() as u32) else { return (0, 0) };
        count(p, None, |s| {
            s["python_frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"] == function && f["file"] == file.to_str().unwrap())
        })
    };
    let parent = samples_in(&pids["parent"], "parent_burn", &script);
    let forked = samples_in(&pids["forked"], "forked_child_burn", &script);
    let execd = samples_in(&pids["execd"], "burn", &chain);
    eprintln!("samples (in the function, all): parent {parent:?}, forked child {forked:?}, exec'd child {execd:?}");
    // Each process is unwound in its own program: the parent before and after the fork, the
    // forked copy of the interpreter, and the new interpreter after the exec. (Counts are low
    // on a loaded machine; the rest is interpreter start-up, before discovery.)
    for (who, (hit, all)) in [("parent", parent), ("forked child (no exec)", forked), ("exec'd child", execd)] {
        assert!(hit >= 20 && hit * 2 >= all, "{who}: {hit} of {all} samples in its busy function");
    }
    // The exec'd child's pre-exec samples (a copy of the parent) are not mixed with chain.py.
    let execd_p = process(&profile, pids["execd"].as_u64().unwrap() as u32).unwrap();
    assert!(execd_p["comm"].as_str().unwrap().starts_with("python"), "{}", execd_p["comm"]);
}

/// One run of `pyebpf profile --all` with three outputs, signalled `delay` after it starts. The
/// JSON output already exists (a previous profile): it must end up complete and new, or
/// untouched, never partial.
fn signal_run(signal: i32, delay: Duration) -> String {
    let dir = tempfile::tempdir().unwrap();
    let old = "{\"old\": true}\n";
    std::fs::write(dir.path().join("p.json"), old).unwrap();
    let mut child = pyebpf()
        .args(["profile", "--all", "-F", "199", "-o", "p.json", "-o", "p.svg", "-o", "p.folded"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no exit 30 s after signal {signal} at {delay:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!err.contains("panicked"), "panic after signal {signal} at {delay:?}: {err}");
    if status.success() {
        check_outputs_complete(dir.path(), &["p.json", "p.svg", "p.folded"])
            .unwrap_or_else(|e| panic!("signal {signal} at {delay:?}: {e}"));
        "complete outputs".into()
    } else if status.signal() == Some(signal) {
        // Killed before pyebpf could install its handlers (the first milliseconds after exec):
        // nothing may have been written or left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["p.json"], "signal {signal} at {delay:?} left {names:?}");
        assert_eq!(std::fs::read_to_string(dir.path().join("p.json")).unwrap(), old);
        "killed before start-up, nothing written".into()
    } else {
        let line = err.trim_end();
        assert!(
            line.starts_with("error: ") && line.lines().count() == 1,
            "signal {signal} at {delay:?}: {status:?} without one clear error line: {err}"
        );
        format!("error: {line}")
    }
}

#[test]
fn sigint_and_sigterm_at_any_moment_leave_complete_outputs_or_a_clear_error() {
    let _spin = KillOnDrop(start_spin(60.0, 0));
    // From the first milliseconds after exec, through the BPF load (hundreds of ms), to
    // sampling; a fixed pseudo-random spread so a failure can be replayed.
    let mut seed = 0x2545_f491u32;
    let mut delays: Vec<u64> = vec![0, 5, 30, 100];
    for _ in 0..8 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        delays.push(150 + u64::from(seed % 1350));
    }
    let mut outcomes = Vec::new();
    let mut complete_during_startup = 0;
    for (i, ms) in delays.iter().enumerate() {
        let signal = if i % 2 == 0 { libc::SIGINT } else { libc::SIGTERM };
        let outcome = signal_run(signal, Duration::from_millis(*ms));
        if *ms >= 30 && *ms < 400 && outcome == "complete outputs" {
            complete_during_startup += 1;
        }
        outcomes.push(format!("{} at {ms} ms: {outcome}", if signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" }));
    }
    eprintln!("{}", outcomes.join("\n"));
    // A signal while the programs load is handled like any other: the outputs are written.
    assert!(complete_during_startup >= 2, "signals during start-up did not give outputs:\n{}", outcomes.join("\n"));
    let late = outcomes.iter().skip(4).filter(|o| o.ends_with("complete outputs")).count();
    assert_eq!(late, delays.len() - 4, "{}", outcomes.join("\n"));
}

/// Python frame names of a stack, root first.
fn py_functions(stack: &Value) -> Vec<&str> {
    stack["python_frames"].as_array().unwrap().iter().map(|f| f["function"].as_str().unwrap_or("")).collect()
}

/// The known chain of chain.py (run with 1 thread), with call-site lines.
fn chain_expect(minor: u8) -> Vec<Expect> {
    let script = workload("chain.py");
    let line = |m: &str| line_of(&script, m);
    let q = |name: &str| if minor >= 11 { name.to_string() } else { name.rsplit('.').next().unwrap().to_string() };
    vec![
        Expect::at("run", line("# CALL work")),
        Expect::at(&q("Worker.work"), line("# CALL inner")),
        Expect::at(&q("Worker.work.<locals>.inner"), line("# CALL burn")),
        Expect { function: "burn".into(), lines: line("# LOOP start")..=line("# LOOP end") },
    ]
}

#[test]
fn hostile_processes_corrupting_their_interpreter_do_not_disturb_the_profiler_or_others() {
    let interps = host_interpreters();
    let chain = workload("chain.py");
    // Every interpreter corrupting itself (those of OS roots through chroot), and two
    // well-behaved processes beside them. They live far longer than the profile: a free-threaded
    // build started beside the others' 20 spinning threads takes ~30 s to print "ready" (its
    // stop-the-world pauses wait for threads the kernel has descheduled); all are killed on drop.
    let mut hostiles: Vec<(Interpreter, KillOnDrop)> =
        interpreters().iter().map(|i| (i.clone(), start_ready(i, "hostile.py", &["120"]))).collect();
    // As long-lived as the hostiles: a free-threaded chain started after them took over 30 s to
    // say "ready" here, by which time a 30-s chain started before it had already ended.
    let normals: Vec<(Interpreter, KillOnDrop)> = [interps.first().unwrap(), interps.last().unwrap()]
        .into_iter()
        .map(|i| (i.clone(), start_script(&i.path, &chain, &["120", "1"])))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = pyebpf();
    cmd.args(["profile", "--all", "-F", "199", "-d", "4"]).current_dir(dir.path());
    cmd.args(["-o", "p.json", "-o", "p.svg", "-o", "p.folded"]);
    let out = run(&mut cmd, TIMEOUT);
    assert_success(&out);
    check_outputs_complete(dir.path(), &["p.json", "p.svg", "p.folded"]).unwrap();
    let profile = read_json(&dir.path().join("p.json"));

    // Bounded everywhere: no stack deeper than the walk's limit, whatever the chains hold.
    for p in profile["processes"].as_array().unwrap() {
        for s in p["stacks"].as_array().unwrap() {
            let depth = s["python_frames"].as_array().unwrap().len();
            assert!(depth <= 128, "pid {}: a stack of {depth} Python frames", p["pid"]);
        }
    }

    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (interp, child) in &mut hostiles {
        let survived = child.0.try_wait().unwrap().is_none_or(|s| s.success());
        let Some(p) = process(&profile, child.pid()) else {
            let status = child.0.try_wait().unwrap();
            failures.push(format!(
                "{}: hostile pid {} not in the profile (exit: {status:?})",
                interp.label,
                child.pid()
            ));
            continue;
        };
        let in_thread = |name: &str, pred: &dyn Fn(&Value) -> bool| -> u64 {
            p["stacks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["category"] == "cpu" && s["thread"].as_str().is_some_and(|t| t.contains(name)) && pred(s))
                .map(|s| s["samples"].as_u64().unwrap())
                .sum()
        };
        // The cycle is walked to the depth bound and marked truncated.
        let cycle = in_thread("cycle", &|s| {
            let f = py_functions(s);
            s["frames"][0] == "[truncated]"
                && f.len() == 128
                && f.iter().filter(|n| **n == "cycle_caller").count() > 100
        });
        // The fake code object's frame is an unknown frame, under a correctly named spinner.
        let code = in_thread("code", &|s| {
            let frames: Vec<&str> = s["frames"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
            frames.windows(2).any(|w| w[0] == "[unknown python frame]" && w[1].starts_with("code_spinner ("))
        });
        let tstate = in_thread("tstate", &|_| true);
        report.push(format!(
            "{}: cycle {cycle}, fake code {code}, broken thread state {tstate} samples{}",
            interp.label,
            if survived { "" } else { " (the target crashed)" }
        ));
        if survived && (cycle == 0 || code == 0) {
            failures.push(format!("{}: cycle {cycle}, fake code {code} samples", interp.label));
        }
    }
    for (interp, child) in &normals {
        let p =
            process(&profile, child.pid()).unwrap_or_else(|| panic!("{}: pid {} missing", interp.label, child.pid()));
        // All but a few samples carry the exact chain: nothing of the hostile processes'
        // garbage leaks into them.
        let expect = chain_expect(interp.minor);
        let (hit, total) = count(p, None, |s| has_chain(s, &chain, &expect));
        let with_frames = count(p, None, |s| !s["python_frames"].as_array().unwrap().is_empty()).0;
        let line = format!(
            "{} (well-behaved): {hit} of {total} samples ({with_frames} with Python frames) have its exact chain",
            interp.label
        );
        if total < 30 || hit * 100 < total * 95 {
            failures.push(line.clone());
        }
        report.push(line);
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn huge_code_objects_long_names_non_utf8_files_and_deep_recursion() {
    let script = workload("extremes.py");
    for_each_host_interpreter("extremes", |interp| {
        let dir = tempfile::tempdir().unwrap();
        let child = start_script(&interp.path, &script, &["30", dir.path().to_str().unwrap()]);
        let profile = profile_json(|cmd, json| {
            cmd.args(["profile", "-F", "199", "-d", "3", "--pid", &child.pid().to_string(), "-o"]).arg(json);
        });
        let p = process(&profile, child.pid()).ok_or("not in the profile")?;
        let root = dir.path().to_str().unwrap();
        let stacks: Vec<&Value> = p["stacks"].as_array().unwrap().iter().filter(|s| s["category"] == "cpu").collect();
        let samples = |pred: &dyn Fn(&Value) -> bool| -> u64 {
            stacks.iter().filter(|s| pred(s)).map(|s| s["samples"].as_u64().unwrap()).sum()
        };
        let leaf = |s: &Value| s["python_frames"].as_array().unwrap().last().cloned().unwrap_or(Value::Null);
        // The 100,000-line body: named, in its file, at a line inside the body.
        let huge_file = format!("{root}/huge.py");
        let huge = samples(&|s| {
            let f = leaf(s);
            f["function"] == "huge_body"
                && f["file"] == huge_file.as_str()
                && f["line"].as_i64().is_some_and(|l| (3..=100_003).contains(&l))
        });
        let huge_far = samples(&|s| leaf(s)["line"].as_i64().is_some_and(|l| l > 50_000));
        // The 10,000-character name, whole.
        let long = samples(&|s| {
            leaf(s)["function"].as_str().is_some_and(|n| n.len() == 10_000 && n.bytes().all(|b| b == b'f'))
        });
        // The file under a non-UTF-8 directory: the byte that is not UTF-8 becomes U+FFFD.
        let bad_file = format!("{root}/caf\u{fffd}/mod.py");
        let nonutf8 = samples(&|s| leaf(s)["function"] == "in_non_utf8_file" && leaf(s)["file"] == bad_file.as_str());
        // 5,000-deep recursion: cut at 128 frames and marked.
        let deep = samples(&|s| {
            let frames = s["python_frames"].as_array().unwrap();
            frames.len() == 128 && s["frames"][0] == "[truncated]" && frames.iter().all(|f| f["function"] == "deep")
        });
        let too_deep = samples(&|s| s["python_frames"].as_array().unwrap().len() > 128);
        eprintln!(
            "{}: huge {huge} (past line 50000: {huge_far}), long name {long}, non-UTF-8 file {nonutf8}, deep {deep}",
            interp.label
        );
        if huge < 10 || huge_far == 0 || long < 10 || nonutf8 < 10 || deep < 10 || too_deep > 0 {
            return Err(format!(
                "huge {huge} (past line 50000: {huge_far}), long name {long}, non-UTF-8 file {nonutf8}, deep {deep}, deeper than 128: {too_deep}"
            ));
        }
        // Every output format copes with them.
        let out_dir = tempfile::tempdir().unwrap();
        let out = run(
            pyebpf()
                .args(["profile", "-F", "99", "-d", "1", "--pid", &child.pid().to_string()])
                .current_dir(out_dir.path())
                .args(["-o", "p.svg", "-o", "p.folded", "-o", "p.json"]),
            TIMEOUT,
        );
        assert_success(&out);
        check_outputs_complete(out_dir.path(), &["p.svg", "p.folded", "p.json"])
    });
}

/// Starts `chain.py 120 1` in new pid and mount namespaces (killed with the guard; 120 s so
/// that the first of a dozen interpreters, started one after the other on a loaded host, still
/// runs when the profile starts). With `chroot`, the interpreter is
/// bind-mounted at /opt/pyebpf-ns-python inside a chroot (a path that does not exist on the
/// host) and the workloads at /work; without, the host's paths are used. Returns the
/// `unshare` process and the interpreter's pid as the host sees it.
fn start_in_namespaces(interp: &Interpreter, chroot: Option<&Path>) -> (KillOnDrop, u32) {
    require_tool("unshare", "util-linux");
    let workloads = workload("chain.py").parent().unwrap().to_path_buf();
    let mut cmd = Command::new("unshare");
    // --kill-child: the namespace's processes die with unshare (KillOnDrop kills unshare only;
    // left running, 14 busy threads slowed the tests after this one).
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc", "--mount", "--propagation", "private"]);
    match chroot {
        Some(root) => {
            // Interpreter prefix: .../versions/3.X.Y (bin/python3.X and lib/ below it).
            let prefix = interp.path.parent().unwrap().parent().unwrap();
            let exe = interp.path.file_name().unwrap();
            let script = r#"set -e
root=$1; prefix=$2; exe=$3; work=$4
mkdir -p "$root/usr" "$root/etc" "$root/dev" "$root/opt/pyebpf-ns-python" "$root/work"
ln -sfn usr/bin "$root/bin"; ln -sfn usr/lib "$root/lib"; ln -sfn usr/lib64 "$root/lib64"
for d in usr etc dev; do mount --bind "/$d" "$root/$d"; done
mount --bind "$prefix" "$root/opt/pyebpf-ns-python"
mount --bind "$work" "$root/work"
exec chroot "$root" /usr/bin/env LD_LIBRARY_PATH=/opt/pyebpf-ns-python/lib "/opt/pyebpf-ns-python/bin/$exe" /work/chain.py 120 1
"#;
            cmd.args(["bash", "-c", script, "bash"]).arg(root).arg(prefix).arg(exe).arg(&workloads);
        }
        None => {
            cmd.arg(&interp.path).arg(workloads.join("chain.py")).args(["120", "1"]);
        }
    }
    // (stderr: a chrooted interpreter killed at the end complains about libgcc_s.)
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start unshare");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "{} in namespaces did not start", interp.label);
    // unshare --fork: its child is pid 1 of the new namespace, and (after the execs) the
    // interpreter.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap();
    let pid: u32 = children.split_whitespace().next().expect("unshare's child").parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.split_whitespace().nth(2) == Some("1"), "{pid} is not pid 1 of a new namespace: {nspid}");
    (KillOnDrop(child), pid)
}

#[test]
fn python_in_its_own_pid_and_mount_namespace_is_found_and_symbolized() {
    assert!(!Path::new("/opt/pyebpf-ns-python").exists(), "the container path must not exist on the host");
    let interps = host_interpreters();
    let roots = tempfile::tempdir().unwrap();
    let mut containers = Vec::new();
    // Every pyenv interpreter chrooted at a path the host does not have (shared libpython), and
    // the system interpreter (static) in namespaces alone.
    for (i, interp) in interps.iter().enumerate() {
        let root = roots.path().join(format!("root{i}"));
        let chroot = interp.label.contains("pyenv").then_some(root.as_path());
        let (guard, pid) = start_in_namespaces(interp, chroot);
        containers.push((interp.clone(), chroot.is_some(), guard, pid));
    }
    let profile = profile_json(|cmd, json| {
        cmd.args(["profile", "--all", "-F", "199", "-d", "4", "-o"]).arg(json);
    });
    let mut failures = Vec::new();
    for (interp, chrooted, _guard, pid) in &containers {
        let file = if *chrooted { Path::new("/work/chain.py").to_path_buf() } else { workload("chain.py") };
        let what = format!("{} (pid {pid}{})", interp.label, if *chrooted { ", chroot" } else { "" });
        let Some(p) = process(&profile, *pid) else {
            failures.push(format!("{what}: not in the profile"));
            continue;
        };
        if !p["python_version"].as_str().is_some_and(|v| v.starts_with(&format!("3.{}", interp.minor))) {
            failures.push(format!("{what}: python_version {}", p["python_version"]));
            continue;
        }
        let expect = chain_expect(interp.minor);
        let (hit, total) = count(p, None, |s| has_chain(s, &file, &expect));
        let with_frames = count(p, None, |s| !s["python_frames"].as_array().unwrap().is_empty()).0;
        let names: Vec<&str> =
            p["threads"].as_array().unwrap().iter().filter_map(|t| t["python_name"].as_str()).collect();
        eprintln!(
            "{what}: {hit} of {total} samples with the exact chain ({with_frames} with Python frames); thread names {names:?}"
        );
        // Both threads unwound, with the container's own file path and call-site lines, and
        // named by their Python names (which CPython keys by the namespace's tids).
        let mut names = names.clone();
        names.sort();
        if hit < 30 || hit * 100 < total * 95 || names != ["MainThread", "burner-0"] {
            failures.push(format!(
                "{what}: {hit} of {total} samples ({with_frames} with Python frames) with the exact chain in {}; names {names:?}",
                file.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
