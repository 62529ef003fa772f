//! Off-CPU time by cause, against workloads whose truth is known by construction
//! (tests/workloads/offcpu.py), on every CPython 3.8+ on this machine, free-threaded builds
//! included (where the GIL test becomes a test that there is no GIL time).
use std::time::Duration;

use integration_tests::{python::*, *};

/// Profiles `offcpu.py SECONDS [extra]` under pyebpf and returns the process's JSON entry.
fn profile_workload(interp: &Interpreter, extra: &[&str]) -> Value {
    let profile = profile_json(|cmd, json| {
        cmd.args(["profile", "-o"])
            .arg(json)
            .arg("--")
            .args(interp.argv())
            .arg(interp.workload("offcpu.py"))
            .arg("2.5")
            .args(extra);
    });
    profile["processes"][0].clone()
}

/// Percent of a thread's wall time in the given categories.
fn pct(t: &Value, categories: &[&str]) -> f64 {
    let wall = t["wall_ns"].as_u64().unwrap().max(1) as f64;
    categories.iter().map(|c| t["totals_ns"][*c].as_u64().unwrap_or(0) as f64).sum::<f64>() * 100.0 / wall
}

#[test]
fn waits_are_split_by_cause_with_their_stacks_and_targets() {
    for_each_interpreter("off-CPU categories", |interp| {
        let p = profile_workload(interp, &[]);
        // compute 40 ms / sleep 60 ms: within 5 points. Computing time may be spent waiting for
        // the GIL or a CPU, which is where it went.
        let cs = python_thread(&p, "compute-sleep")?;
        let (sleep, compute) = (pct(cs, &["sleep"]), pct(cs, &["cpu", "gil", "runqueue"]));
        // Waiting for a CPU after each wakeup lengthens the loop by what the machine's load
        // decides: the split may move by that much.
        let slack = 5.0 + 0.6 * pct(cs, &["runqueue"]);
        if (sleep - 60.0).abs() > slack || (compute - 40.0).abs() > slack {
            return Err(format!("compute-sleep: sleep {sleep:.1}%, compute {compute:.1}%: {}", cs["totals_ns"]));
        }
        // Of the time not spent waiting for a CPU or for the GIL (both set by the other
        // threads and the machine's load: 82.8% of all its time in one suite run), as for the
        // lock waiter below.
        let client = python_thread(&p, "net-client")?;
        let net = pct(client, &["net"]) * 100.0 / (100.0 - pct(client, &["runqueue", "gil"])).max(1.0);
        if net < 85.0 {
            return Err(format!(
                "net-client: net {net:.1}% of its time not in the run queue or the GIL: {}",
                client["totals_ns"]
            ));
        }
        let waiter = python_thread(&p, "lock-waiter")?;
        let lock = pct(waiter, &["lock"]) * 100.0 / (100.0 - pct(waiter, &["runqueue"])).max(1.0);
        if lock < 70.0 {
            return Err(format!(
                "lock-waiter: lock {lock:.1}% of the time not in the run queue: {}",
                waiter["totals_ns"]
            ));
        }
        // Stacks name the function and the target of the wait.
        let find = |category: &str, function: &str, target: &str| has_wait_stack(&p, category, function, target);
        if !find("net", "client_loop", "tcp 127.0.0.1:") {
            return Err("no net stack in client_loop on tcp 127.0.0.1".into());
        }
        if !find("disk", "fsync_loop", "file /") {
            return Err("no disk stack in fsync_loop with the file's path".into());
        }
        // A threading.Lock is a PyMutex, whose waiters park on their own stack, in 3.14+ and
        // free-threaded builds (3.13.0 with the GIL still waits on a lock of its own, seen
        // here): told apart from the GIL and from pthread locks.
        if (interp.minor >= 14 || interp.free_threaded) && !find("lock", "wait_for_lock", "PyMutex") {
            return Err("no lock stack in wait_for_lock with the PyMutex target".into());
        }
        let sleeping = p["stacks"].as_array().unwrap().iter().any(|s| {
            s["category"] == "sleep"
                && s["python_frames"].as_array().unwrap().iter().any(|f| f["function"] == "compute_sleep")
        });
        if !sleeping {
            return Err("no sleep stack in compute_sleep".into());
        }
        Ok(())
    });
}

/// Two CPU-bound threads sharing one GIL: each runs about half the time and waits the rest.
fn gil_is_shared(p: &Value) -> Result<(), String> {
    for name in ["gil-a", "gil-b"] {
        let t = python_thread(p, name)?;
        // Time waiting for a CPU depends on the machine's load, not on the profiler: judge the
        // shares of the rest.
        let rest = 100.0 - pct(t, &["runqueue"]);
        let (gil, cpu) = (pct(t, &["gil"]) * 100.0 / rest.max(1.0), pct(t, &["cpu"]) * 100.0 / rest.max(1.0));
        if gil < 25.0 || cpu < 25.0 {
            return Err(format!(
                "{name}: gil {gil:.1}%, cpu {cpu:.1}% of the time not in the run queue: {}",
                t["totals_ns"]
            ));
        }
    }
    Ok(())
}

#[test]
fn cpu_bound_threads_wait_for_the_gil() {
    for_each_interpreter("GIL", |interp| {
        if !interp.free_threaded {
            return gil_is_shared(&profile_workload(interp, &["gil"]));
        }
        // No GIL: both threads run Python at once, and nothing is GIL time.
        let p = profile_workload(interp, &["gil"]);
        for name in ["gil-a", "gil-b"] {
            let t = python_thread(&p, name)?;
            let rest = 100.0 - pct(t, &["runqueue"]);
            let (gil, cpu) = (pct(t, &["gil"]), pct(t, &["cpu"]) * 100.0 / rest.max(1.0));
            if gil > 0.0 || cpu < 80.0 {
                return Err(format!(
                    "{name} without a GIL: gil {gil:.1}%, cpu {cpu:.1}% of the time not in the run queue: {}",
                    t["totals_ns"]
                ));
            }
        }
        // Turned back on (PYTHON_GIL=1), the same build's GIL is waited for as any other.
        let profile = profile_json(|cmd, json| {
            cmd.env("PYTHON_GIL", "1")
                .args(["profile", "-o"])
                .arg(json)
                .arg("--")
                .args(interp.argv())
                .arg(interp.workload("offcpu.py"))
                .args(["2.5", "gil"]);
        });
        gil_is_shared(&profile["processes"][0]).map_err(|e| format!("with PYTHON_GIL=1: {e}"))
    });
}

#[test]
fn run_queue_waits_after_preemption_carry_the_stack() {
    // Three CPU-bound processes on fewer CPUs: each is preempted and waits for a CPU.
    let interp = interpreters().pop().unwrap();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let code = "def spin_forever():\n    x = 0\n    while True:\n        x += 1\nspin_forever()\n";
    let spinners: Vec<KillOnDrop> =
        (0..cpus + 1).map(|_| KillOnDrop(interp.command().args(["-c", code]).spawn().unwrap())).collect();
    std::thread::sleep(Duration::from_millis(300));
    let profile = profile_json(|cmd, json| {
        cmd.args(["profile", "-d", "2", "-o"]).arg(json);
        for s in &spinners {
            cmd.args(["--pid", &s.pid().to_string()]);
        }
    });
    for s in &spinners {
        let p = process(&profile, s.pid()).expect("spinner profiled");
        let runq =
            p["totals_ns"]["runqueue"].as_u64().unwrap_or(0) as f64 / p["wall_ns"].as_u64().unwrap().max(1) as f64;
        assert!(runq > 0.1, "pid {}: run-queue share {runq:.2}", s.pid());
        let stacked: u64 = p["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|st| st["category"] == "runqueue" && st["target"] == "preempted")
            .filter(|st| st["python_frames"].as_array().unwrap().iter().any(|f| f["function"] == "spin_forever"))
            .map(|st| st["weight_ns"].as_u64().unwrap())
            .sum();
        let total = p["totals_ns"]["runqueue"].as_u64().unwrap();
        assert!(
            stacked * 10 >= total * 8,
            "pid {}: {stacked} of {total} ns of run-queue wait on spin_forever",
            s.pid()
        );
    }
}

#[test]
fn event_loop_stalls_are_named_and_idle_loops_are_not_io() {
    for_each_interpreter("event loop", |interp| {
        let script = interp.workload("event_loop.py");
        let profile = profile_json(|cmd, json| {
            cmd.args(["profile", "-o"]).arg(json).arg("--").args(interp.argv()).arg(&script).arg("2.5");
        });
        let p = &profile["processes"][0];
        // `stall_the_loop` sleeps 15 ms on the loop about 25 times a second: the stall list
        // names it, with the sleep it made, and holds most of that time.
        let stalls = p["loop_stalls"].as_array().unwrap();
        let culprit =
            stalls.iter().find(|s| s["coroutine"].as_str().is_some_and(|c| c.starts_with("stall_the_loop (")));
        let Some(culprit) = culprit else {
            return Err(format!("stall_the_loop not among the loop stalls: {stalls:?}"));
        };
        let expected_line = format!(":{})", line_of(&workload("event_loop.py"), "blocks the event loop"));
        if !culprit["coroutine"].as_str().unwrap().ends_with(&expected_line) || culprit["category"] != "sleep" {
            return Err(format!("stall should be the sleep at line {expected_line} in stall_the_loop: {culprit}"));
        }
        let stalled_s = culprit["wall_ns"].as_u64().unwrap() as f64 / 1e9;
        if stalled_s < 0.15 {
            return Err(format!("only {stalled_s:.3} s of loop stall in stall_the_loop: {culprit}"));
        }
        // Awaiting is not a stall.
        if let Some(s) = stalls.iter().find(|s| s["coroutine"].as_str().is_some_and(|c| c.contains("be_polite"))) {
            return Err(format!("be_polite awaits, yet is listed as stalling the loop: {s}"));
        }
        // The loop thread waits for requests most of the time: idle, not net.
        let main = python_thread(p, "MainThread")?;
        let (idle, net) = (pct(main, &["idle"]), pct(main, &["net"]));
        if idle < 30.0 || net > 5.0 {
            return Err(format!("event loop thread: idle {idle:.1}%, net {net:.1}%: {}", main["totals_ns"]));
        }
        // A thread waiting in select() on a listening socket is idle too, and says on what.
        let sync = python_thread(p, "sync-server")?;
        let idle = pct(sync, &["idle"]);
        if idle < 80.0 {
            return Err(format!("sync-server: idle {idle:.1}%: {}", sync["totals_ns"]));
        }
        let listen_stack = p["stacks"].as_array().unwrap().iter().any(|s| {
            s["category"] == "idle"
                && s["target"].as_str().is_some_and(|t| t.starts_with("tcp listen 127.0.0.1:"))
                && s["python_frames"].as_array().unwrap().iter().any(|f| f["function"] == "sync_server")
        });
        if !listen_stack {
            return Err("no idle stack in sync_server waiting on its listening socket".into());
        }
        Ok(())
    });
}

#[test]
fn threads_asleep_for_the_whole_profile_are_counted_in_full() {
    // Threads that never run while profiled: the kernel sees no switch at all, yet each waited
    // the whole time, on its own cause.
    for_each_interpreter("asleep throughout", |interp| {
        let target = start_ready(interp, "asleep.py", &[]);
        std::thread::sleep(Duration::from_millis(200));
        let profile = profile_json(|cmd, json| {
            cmd.args(["profile", "-d", "1.5", "--pid", &target.pid().to_string(), "-o"]).arg(json);
        });
        let p = process(&profile, target.pid()).ok_or("process missing from the profile")?;
        let seconds = |t: &Value, c: &str| t["totals_ns"][c].as_u64().unwrap_or(0) as f64 / 1e9;
        let main = python_thread(p, "MainThread")?;
        let waiter = python_thread(p, "lock-waiter")?;
        let (slept, locked) = (seconds(main, "sleep"), seconds(waiter, "lock"));
        // The profile lasts 1.5 s from the BPF programs' attach; allow for start-up and exit.
        if !(1.3..=2.0).contains(&slept) || !(1.3..=2.0).contains(&locked) {
            return Err(format!(
                "main slept {slept:.3} s, lock-waiter waited {locked:.3} s: {} / {}",
                main["totals_ns"], waiter["totals_ns"]
            ));
        }
        Ok(())
    });
}

#[test]
fn off_cpu_stacks_of_cpu_bound_threads_keep_their_python_frames() {
    // Two CPU-bound threads (chain.py's main thread and one burner) handing the GIL back and
    // forth, and preempted on a busy machine: every off-CPU stack is taken while Python code
    // runs, so every one must carry its Python frames, on every version. (The stackless
    // remainder of short waits carries no stack by design and is left out.) A free-threaded
    // build has no GIL to hand over: there, more burners than cores are preempted instead.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let free_threaded_burners = (2 * cores).to_string();
    for_each_interpreter("off-CPU Python frames", |interp| {
        let burners = if interp.free_threaded { free_threaded_burners.as_str() } else { "1" };
        let child = start_ready(interp, "chain.py", &["20", burners]);
        let pid = child.pid();
        let profile = profile_json(|cmd, json| {
            cmd.args(["profile", "-d", "3", "--mode", "wall", "--pid", &pid.to_string(), "-o"]).arg(json);
        });
        let p = process(&profile, pid).ok_or("process missing from the profile")?;
        let (mut with_python, mut total) = (0u64, 0u64);
        let mut without = Vec::new();
        for s in p["stacks"].as_array().unwrap() {
            if s["category"] == "cpu" || s["target"] == "short waits (no stack)" {
                continue;
            }
            let weight = s["weight_ns"].as_u64().unwrap();
            total += weight;
            if s["python_frames"].as_array().unwrap().is_empty() {
                without.push((weight, s["frames"].clone(), s["category"].clone()));
            } else {
                with_python += weight;
            }
        }
        // Two threads sharing one GIL for 3 s wait about 3 s between them; 2×cores+1 free
        // threads on `cores` cores wait (cores+1)×3 s.
        if total < 1_000_000_000 {
            return Err(format!("only {:.3} s of off-CPU stacks", total as f64 / 1e9));
        }
        let share = with_python as f64 / total as f64;
        eprintln!(
            "{}: {:.2}% of {:.2} s of off-CPU stacks with Python frames",
            interp.label,
            share * 100.0,
            total as f64 / 1e9
        );
        if share < 0.99 {
            without.sort_by_key(|w| std::cmp::Reverse(w.0));
            without.truncate(5);
            return Err(format!(
                "{:.2}% of off-CPU weight with Python frames; heaviest without: {without:?}",
                share * 100.0
            ));
        }
        Ok(())
    });
}

/// IDs of the BPF maps a process holds open, from its /proc/PID/fdinfo.
fn maps_held_by(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(info.lines().filter_map(|l| l.strip_prefix("map_id:")).filter_map(|v| v.trim().parse::<u64>().ok()));
    }
    ids
}

/// `bpftool map dump -j` of the map called `name` that process `holder` has open.
fn dump_held_map(holder: u32, name: &str) -> Result<Value, String> {
    let held = maps_held_by(holder);
    let map = bpftool_list("map")
        .into_iter()
        .find(|m| m["name"] == name && m["id"].as_u64().is_some_and(|id| held.contains(&id)))
        .ok_or(format!("no {name} map held by pyebpf"))?;
    let out = std::process::Command::new("bpftool")
        .args(["map", "dump", "id", &map["id"].to_string(), "-j"])
        .output()
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// The bytes of a key or value in a `bpftool -j` dump (a list of "0x.." strings).
fn dump_bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect()
}

#[test]
fn the_kernel_learns_where_user_registers_are() {
    // sched_switch reads a thread's syscall from its saved user registers at
    // `task->stack + offset`, the offset learned from sys_exit's own registers on each CPU. It
    // must be what this kernel's layout gives (16 or 32 KiB stacks, with or without FRED's
    // padding, minus sizeof(pt_regs)) on every CPU, or every wait's syscall would be garbage.
    let target = KillOnDrop(start_spin(30.0, 0));
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_sampling(
        pyebpf().args(["profile", "-d", "20", "--pid", &target.pid().to_string(), "-o"]).arg(dir.path().join("p.json")),
    );
    let child = KillOnDrop(child);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let offsets = poll(Duration::from_secs(20), "every CPU's learned offset", || {
        let dump = dump_held_map(child.0.id(), "EXIT_GATE")?;
        let mut offsets = Vec::new();
        for cpu in dump[0]["values"].as_array().ok_or("no per-CPU values")? {
            let bytes = dump_bytes(&cpu["value"]);
            let offset = u64::from_le_bytes(bytes.get(8..16).ok_or("short value")?.try_into().unwrap());
            if offset == 0 {
                return Err(format!("CPU {} has not learned it yet", cpu["cpu"]));
            }
            offsets.push(offset);
        }
        if offsets.len() < cpus {
            return Err(format!("{} CPUs in the map, {cpus} online", offsets.len()));
        }
        Ok(offsets)
    });
    // As profiler_common::exit_gate::expected_regs_offset: 168 is sizeof(struct pt_regs).
    let expected: Vec<u64> = [16u64 << 10, 32 << 10].iter().flat_map(|top| [top - 168, top - 16 - 168]).collect();
    assert!(offsets.iter().all(|o| expected.contains(o)), "learned offsets {offsets:?}, expected one of {expected:?}");
    assert!(offsets.iter().all(|o| *o == offsets[0]), "CPUs disagree: {offsets:?}");
}

/// The `OFFCPU_SUMS` keys pyebpf's kernel side holds for thread `tid` in syscall `nr`, with
/// their counts, from a dump of the map the process `holder` has open.
fn offcpu_keys_of(holder: u32, tid: u32, nr: i64) -> Result<Vec<(u64, u64)>, String> {
    let dump = dump_held_map(holder, "OFFCPU_SUMS")?;
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let mut keys = Vec::new();
    for entry in dump.as_array().ok_or("dump not an array")? {
        // profiler_common::OffCpuKey { tid: u32, state: u32, syscall_nr: i64, arg0: u64 } and
        // OffCpuSum { blocked_ns, runq_ns, count }.
        let (k, v) = (dump_bytes(&entry["key"]), dump_bytes(&entry["value"]));
        if k.len() != 24 || v.len() != 24 {
            return Err(format!("unexpected key/value sizes {} {}", k.len(), v.len()));
        }
        if u32::from_le_bytes(k[0..4].try_into().unwrap()) == tid && word(&k, 8) as i64 == nr {
            keys.push((word(&k, 16), word(&v, 16)));
        }
    }
    Ok(keys)
}

#[test]
fn waits_for_children_are_one_key_not_one_per_child() {
    // A process that starts children waits for each in wait4 with the child's pid as first
    // argument. Keyed by it, every child made an OFFCPU_SUMS key of its own (28,000 of one
    // spawner's in the map, which userspace reads whole 4 times a second); the kernel records
    // 0 for these calls instead (profiler_common::child_wait). One interpreter is enough: the
    // calls are libc's, whatever the version.
    const CHILDREN: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "import os, subprocess, sys, time\n\
         while not os.path.exists({go:?}): time.sleep(0.01)\n\
         for _ in range({CHILDREN}): subprocess.run(['/bin/sleep', '0.01'])\n\
         print('done', flush=True)\n\
         time.sleep(60)\n",
        go = go.to_str().unwrap()
    );
    let spawner = KillOnDrop(
        std::process::Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the spawner"),
    );
    let child = KillOnDrop(spawn_sampling(
        pyebpf()
            .args(["profile", "-d", "30", "--pid", &spawner.pid().to_string(), "-o"])
            .arg(dir.path().join("p.json")),
    ));
    std::fs::write(&go, b"").unwrap();
    let keys = poll(Duration::from_secs(25), "the spawner's wait4 sums", || {
        let keys = offcpu_keys_of(child.pid(), spawner.pid(), libc::SYS_wait4)?;
        let waits: u64 = keys.iter().map(|&(_, count)| count).sum();
        // Nearly every child's wait switched out (its child sleeps 10 ms; one of 60 did not
        // in a run on the loaded host: a child done before its parent waited).
        if waits < CHILDREN as u64 * 9 / 10 {
            return Err(format!("{waits} wait4 intervals of {CHILDREN} children so far: {keys:?}"));
        }
        Ok(keys)
    });
    // One key per state the thread was switched out in (asleep, and maybe preempted or in a D
    // state on the way), all with argument 0.
    assert!(keys.len() <= 3 && keys.iter().all(|&(arg0, _)| arg0 == 0), "wait4 keys: {keys:?}");
}
