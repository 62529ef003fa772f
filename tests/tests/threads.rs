//! Every thread accounted and stacked: threads blocked since before the profile started (a
//! server in `accept()`, a thread asleep for an hour, a lock holder and its waiter) carry
//! their Python function for their whole wall time, not `short waits (no stack)`; every
//! thread's stacks add up to its exact totals.
use std::time::Duration;

use integration_tests::{python::*, *};

/// Share of a thread's wall time carried by stacks with `function` among their Python frames.
fn share_in_function(p: &Value, tid: u64, wall: u64, function: &str) -> f64 {
    let carried: u64 = p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["tid"] == tid)
        .filter(|s| s["python_frames"].as_array().unwrap().iter().any(|f| f["function"] == function))
        .map(|s| s["weight_ns"].as_u64().unwrap())
        .sum();
    carried as f64 / wall.max(1) as f64
}

/// Each thread's stacks weigh exactly its total, category by category.
fn stacks_add_up(p: &Value) -> Result<(), String> {
    for t in p["threads"].as_array().unwrap() {
        let tid = &t["tid"];
        for (category, total) in t["totals_ns"].as_object().unwrap() {
            let total = total.as_u64().unwrap();
            let stacked: u64 = p["stacks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| &s["tid"] == tid && s["category"] == category.as_str())
                .map(|s| s["weight_ns"].as_u64().unwrap())
                .sum();
            if stacked != total {
                return Err(format!("thread {tid}: {category} stacks weigh {stacked} ns, total {total} ns"));
            }
        }
    }
    Ok(())
}

#[test]
fn threads_blocked_since_before_the_profile_carry_their_function() {
    for_each_interpreter("threads blocked all along", |interp| {
        let target = start_ready(interp, "blocked.py", &[]);
        std::thread::sleep(Duration::from_millis(200));
        let profile = profile_json(|cmd, json| {
            cmd.args(["profile", "-d", "2", "--pid", &target.pid().to_string(), "-o"]).arg(json);
        });
        let p = process(&profile, target.pid()).ok_or("process missing from the profile")?;
        for (thread, function) in [
            ("acceptor", "accept_forever"),
            ("sleeper", "sleep_an_hour"),
            ("holder", "hold_lock"),
            ("waiter", "wait_for_lock"),
        ] {
            let t = python_thread(p, thread)?;
            let wall = t["wall_ns"].as_u64().unwrap();
            if wall < 1_500_000_000 {
                return Err(format!("{thread}: wall {wall} ns of a 2 s profile"));
            }
            let share = share_in_function(p, t["tid"].as_u64().unwrap(), wall, function);
            eprintln!("{}: {thread}: {:.1}% in {function}", interp.label, share * 100.0);
            if share < 0.95 {
                return Err(format!(
                    "{thread}: {:.1}% of its wall time in {function}: {}",
                    share * 100.0,
                    t["totals_ns"]
                ));
            }
        }
        stacks_add_up(p)
    });
}

/// (on-CPU ns, run-queue ns) of a thread so far, from /proc/PID/task/TID/schedstat.
fn schedstat(pid: u32, tid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// Reads a thread's schedstat every 2 ms with the wall-clock time of each read, until `stop`.
fn record_schedstat(
    pid: u32,
    tid: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(f64, u64, u64)>> {
    std::thread::spawn(move || {
        let mut reads = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
            if let Some((cpu, runq)) = schedstat(pid, tid) {
                reads.push((at, cpu, runq));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        reads
    })
}

/// (on-CPU, run-queue) ns at wall-clock time `at`, interpolated between the reads around it.
fn schedstat_at(reads: &[(f64, u64, u64)], at: f64) -> Option<(f64, f64)> {
    let i = reads.iter().position(|r| r.0 >= at)?;
    let (a, b) = (reads[i.checked_sub(1)?], reads[i]);
    let f = (at - a.0) / (b.0 - a.0).max(1e-9);
    let lerp = |x: u64, y: u64| x as f64 + (y as f64 - x as f64) * f;
    Some((lerp(a.1, b.1), lerp(a.2, b.2)))
}

#[test]
fn category_shares_match_schedstat_under_contention() {
    // A write+fsync loop beside more CPU burners than CPUs: its time in cpu, runqueue and the
    // rest (blocked: disk) must be within 2 points of what the scheduler itself counted over
    // the profile's own window (its start time and duration, schedstat read every 2 ms).
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
    for_each_interpreter("shares under contention", |interp| {
        let mut child = interp
            .command()
            .arg(interp.workload("fsync_loop.py"))
            .arg("15")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        let tid: u32 = lines.next().unwrap().unwrap().trim().parse().unwrap();
        assert_eq!(lines.next().unwrap().unwrap().trim(), "ready");
        let target = KillOnDrop(child);
        let pid = target.pid();
        let burners = KillOnDrop(start_spin(14.0, 2 * cpus - 1));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let recorder = record_schedstat(pid, tid, stop.clone());
        let profile = profile_json(|cmd, json| {
            cmd.args(["profile", "-d", "4", "--pid", &pid.to_string(), "-o"]).arg(json);
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = recorder.join().unwrap();
        drop(burners);
        let start = profile["start_time_unix"].as_f64().unwrap();
        let wall = profile["duration_ns"].as_u64().unwrap() as f64;
        let ((cpu0, runq0), (cpu1, runq1)) = (
            schedstat_at(&reads, start).ok_or("no schedstat read before the window")?,
            schedstat_at(&reads, start + wall / 1e9).ok_or("no schedstat read after the window")?,
        );
        let p = process(&profile, pid).ok_or("process missing")?;
        let t = p["threads"].as_array().unwrap().iter().find(|t| t["tid"] == tid).ok_or("thread missing")?;
        let total = t["wall_ns"].as_u64().unwrap() as f64;
        let get = |c: &str| t["totals_ns"][c].as_u64().unwrap_or(0) as f64 * 100.0 / total;
        let (cpu, runq) = (get("cpu"), get("runqueue"));
        let blocked = 100.0 - cpu - runq;
        let true_cpu = (cpu1 - cpu0) * 100.0 / wall;
        let true_runq = (runq1 - runq0) * 100.0 / wall;
        let true_blocked = 100.0 - true_cpu - true_runq;
        eprintln!(
            "{}: cpu {cpu:.1}% (schedstat {true_cpu:.1}%), runqueue {runq:.1}% ({true_runq:.1}%), blocked {blocked:.1}% ({true_blocked:.1}%): {}",
            interp.label, t["totals_ns"]
        );
        for (what, ours, truth) in
            [("cpu", cpu, true_cpu), ("runqueue", runq, true_runq), ("blocked", blocked, true_blocked)]
        {
            if (ours - truth).abs() > 2.0 {
                return Err(format!("{what} {ours:.1}%, schedstat {truth:.1}%: {}", t["totals_ns"]));
            }
        }
        stacks_add_up(p)
    });
}

#[test]
fn dump_names_each_threads_function_and_the_waiters_lock_wait() {
    for_each_interpreter("dump", |interp| {
        let target = start_ready(interp, "blocked.py", &[]);
        let pid = target.pid().to_string();
        let out = run(pyebpf().args(["dump", "--pid", &pid, "--json"]), Duration::from_secs(60));
        assert_success(&out);
        let doc: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
        let p = &doc["processes"][0];
        if p["pid"] != target.pid() || p["threads"].as_array().map_or(0, Vec::len) != 5 {
            return Err(format!("expected 5 threads of {pid}: {p}"));
        }
        let thread = |name: &str| {
            p["threads"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["python_name"] == name)
                .cloned()
                .ok_or(format!("no {name}"))
        };
        for (name, function) in [
            ("acceptor", "accept_forever"),
            ("sleeper", "sleep_an_hour"),
            ("holder", "hold_lock"),
            ("waiter", "wait_for_lock"),
        ] {
            let t = thread(name)?;
            // Innermost first: the thread's own function is the first frame of this file.
            let ours = t["frames"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["file"].as_str().is_some_and(|f| f.ends_with("blocked.py")));
            if ours.is_none_or(|f| f["function"] != function) {
                return Err(format!("{name}: innermost blocked.py frame is not {function}: {}", t["frames"]));
            }
            if t["state"] != "sleeping" || t["blocked_s"].as_f64().is_none_or(|s| s <= 0.0) {
                return Err(format!("{name}: not shown blocked: {t}"));
            }
        }
        let waiter = thread("waiter")?;
        if waiter["category"] != "lock" || waiter["syscall"] != "futex" {
            return Err(format!("waiter: not in a lock wait: {waiter}"));
        }
        let acceptor = thread("acceptor")?;
        if !acceptor["target"].as_str().is_some_and(|t| t.starts_with("tcp listen 127.0.0.1:")) {
            return Err(format!("acceptor: not waiting on its listening socket: {acceptor}"));
        }
        // The text form says the same.
        let text = run(pyebpf().args(["dump", "--pid", &pid]), Duration::from_secs(60));
        assert_success(&text);
        let text = String::from_utf8_lossy(&text.stdout);
        if !text.contains("wait_for_lock (") || !text.contains("[lock]") {
            return Err(format!("text dump: {text}"));
        }
        Ok(())
    });
}

#[test]
fn dump_of_a_missing_pid_fails_with_the_target_status() {
    let out = run(pyebpf().args(["dump", "--pid", &unused_pid().to_string()]), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let usage = run(pyebpf().args(["dump"]), Duration::from_secs(30));
    assert_eq!(usage.status.code(), Some(2));
}
