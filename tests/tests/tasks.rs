//! asyncio tasks: every task's await chain, state and target, read from outside the process,
//! checked against what the workload knows (tests/workloads/asyncio_tasks.py) and against the
//! kernel's own CPU samples, on every interpreter found.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Stdio},
    time::Duration,
};

use integration_tests::{
    KillOnDrop, pyebpf,
    python::{Interpreter, for_each_interpreter},
    read_json,
    services::{Load, free_port, python_env, start_aiohttp},
    spawn_sampling, wait_output,
};
use serde_json::Value;

const DURATION_S: f64 = 8.0;

/// Starts the workload, profiles it with `extra` flags until it exits, and returns the profile
/// with the workload's own counts.
fn profile_tasks(interp: &Interpreter, extra: &[&str]) -> Result<(Value, Value, u32), String> {
    let script = interp.workload("asyncio_tasks.py");
    let mut child = interp
        .command()
        .arg(&script)
        .arg(DURATION_S.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start: {e}"))?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        return Err(format!("workload did not start: {line:?}"));
    }
    let pid = child.id();
    let workload = KillOnDrop(child);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let mut cmd = pyebpf();
    cmd.args(["profile", "--pid", &pid.to_string(), "--task-rate", "50", "-o"]).arg(&json).args(extra);
    let profiler: Child = spawn_sampling(&mut cmd);
    let mut workload = workload;
    let run = (|| -> Result<String, String> {
        workload.0.stdin.take().unwrap().write_all(b"go\n").map_err(|e| e.to_string())?;
        let mut stats = String::new();
        out.read_line(&mut stats).map_err(|e| e.to_string())?;
        let _ = workload.0.wait();
        Ok(stats)
    })();
    // pyebpf stops when the workload exits (or is killed when it fails to).
    drop(workload);
    let output = wait_output(profiler, Duration::from_secs(60));
    let stats = run?;
    if !output.status.success() {
        return Err(format!("pyebpf failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let stats: Value = serde_json::from_str(&stats).map_err(|e| format!("workload stats {stats:?}: {e}"))?;
    Ok((read_json(&json), stats, pid))
}

fn tasks_of(profile: &Value, pid: u32) -> Vec<Value> {
    integration_tests::process(profile, pid).and_then(|p| p["tasks"].as_array().cloned()).unwrap_or_default()
}

fn functions(task: &Value) -> Vec<String> {
    task["python_frames"].as_array().unwrap().iter().map(|f| f["function"].as_str().unwrap().to_string()).collect()
}

/// Does the chain hold a frame whose function is `name` or ends in `.name`?
fn has(task: &Value, name: &str) -> bool {
    functions(task).iter().any(|f| f == name || f.ends_with(&format!(".{name}")))
}

/// Seconds of tasks selected by `pred`.
fn seconds(tasks: &[Value], pred: impl Fn(&Value) -> bool) -> f64 {
    tasks.iter().filter(|t| pred(t)).map(|t| t["weight_ns"].as_u64().unwrap() as f64 / 1e9).sum()
}

fn describe(tasks: &[Value]) -> String {
    tasks
        .iter()
        .take(40)
        .map(|t| {
            format!(
                "{} {} {:?} {:.3}s {}",
                t["task"],
                t["state"],
                t["target"],
                t["weight_ns"].as_u64().unwrap() as f64 / 1e9,
                functions(t).join(" > ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_tasks(interp: &Interpreter) -> Result<(), String> {
    let (profile, stats, pid) = profile_tasks(interp, &[])?;
    let tasks = tasks_of(&profile, pid);
    if tasks.is_empty() {
        return Err("no tasks in the profile".into());
    }
    let all = describe(&tasks);
    // The awaiting endpoint: its awaiting time is the upstream's delay, request after request.
    let requests = stats["upstream_requests"].as_f64().unwrap();
    let slept = stats["upstream_slept_s"].as_f64().unwrap();
    let round_trips = stats["upstream_round_trip_s"].as_f64().unwrap();
    let awaiting = seconds(&tasks, |t| t["task"] == "fetcher" && t["state"] == "awaiting" && has(t, "fetch_upstream"));
    // The socket behind the stream, named as off-CPU targets are, on every version.
    let upstream_port = stats["upstream_port"].as_u64().unwrap();
    let stream = seconds(&tasks, |t| {
        t["task"] == "fetcher" && t["target"].as_str() == Some(format!("tcp 127.0.0.1:{upstream_port}").as_str())
    });
    eprintln!(
        "{}: fetcher awaiting {awaiting:.3} s (on tcp 127.0.0.1:{upstream_port} {stream:.3} s); {requests} requests x 40 ms = {:.3} s; \
         upstream slept {slept:.3} s; round trips {round_trips:.3} s",
        interp.label,
        requests * 0.040
    );
    // Truth: the upstream's delays (40 ms, more on a loaded machine: what it really slept), and
    // the round trips the fetcher measured (its own steps, a few % when the machine is loaded,
    // are running or ready time). The upstream's reply has its way back to make after it
    // slept (more on a loaded machine: hence 15% above, 10% below).
    let fetcher = seconds(&tasks, |t| t["task"] == "fetcher" && has(t, "fetch_upstream"));
    if !(0.90..=1.15).contains(&(awaiting / slept)) || (fetcher / round_trips - 1.0).abs() > 0.10 {
        return Err(format!(
            "fetcher awaiting {awaiting:.3} s of {fetcher:.3} s, round trips {round_trips:.3} s, upstream slept \
             {slept:.3} s:\n{all}"
        ));
    }
    if awaiting < 0.9 * requests * 0.040 || stream < 0.8 * awaiting {
        return Err(format!("awaiting {awaiting:.3} s (stream {stream:.3}) for {requests} requests:\n{all}"));
    }
    // The computing tasks: a task runs while its step holds the loop's thread, so its running
    // time is the thread's time inside `compute` as the kernel saw it: on the CPU, and in the
    // run queue when the machine is busy (both exact per thread, stacks sampled).
    let running = seconds(&tasks, |t| t["state"] == "running" && has(t, "compute"));
    let ready = seconds(&tasks, |t| t["state"] == "ready" && has(t, "compute"));
    let process = integration_tests::process(&profile, pid).unwrap();
    let in_compute = |category: Option<&str>| -> f64 {
        process["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| category.is_none_or(|c| s["category"] == c))
            .filter(|s| s["python_frames"].as_array().unwrap().iter().any(|f| f["function"] == "compute"))
            .map(|s| s["weight_ns"].as_u64().unwrap() as f64 / 1e9)
            .sum()
    };
    let (wall, cpu) = (in_compute(None), in_compute(Some("cpu")));
    eprintln!(
        "{}: compute running {running:.3} s, ready {ready:.3} s; thread in compute {wall:.3} s ({cpu:.3} s on CPU)",
        interp.label
    );
    // 20%: measured 0.96–1.18 on this shared 2-core machine while a CPython build ran (the
    // snapshots and the kernel's stacks are two samplings of the same time).
    if cpu < 0.5 || (running / wall - 1.0).abs() > 0.20 {
        return Err(format!("compute running {running:.3} s vs thread in compute {wall:.3} s:\n{all}"));
    }
    // Three of them share a saturated loop: while one runs, two are ready.
    if ready < 0.8 * running {
        return Err(format!("compute ready {ready:.3} s vs running {running:.3} s:\n{all}"));
    }
    // Children hang under their parent.
    let under = |parent: &str, child: &str| {
        tasks.iter().any(|t| {
            let f = functions(t);
            let p = f.iter().position(|x| x == parent || x.ends_with(&format!(".{parent}")));
            let c = f.iter().rposition(|x| x == child || x.ends_with(&format!(".{child}")));
            matches!((p, c), (Some(p), Some(c)) if p < c)
        })
    };
    if !under("parent_gather", "gather_child") {
        return Err(format!("gather's children are not under parent_gather:\n{all}"));
    }
    if interp.minor >= 11 && !under("parent_group", "group_child") {
        return Err(format!("the task group's child is not under parent_group:\n{all}"));
    }
    if !tasks.iter().any(|t| t["task"] == "gatherer" && t["target"] == "gather") {
        return Err(format!("the gatherer does not await its gather:\n{all}"));
    }
    if !tasks.iter().any(|t| t["task"] == "event-waiter" && t["target"] == "event" && has(t, "event_waiter")) {
        return Err(format!("the event waiter does not await an event:\n{all}"));
    }
    if !tasks.iter().any(|t| t["target"] == "sleep" && has(t, "gather_child")) {
        return Err(format!("no child sleeping:\n{all}"));
    }
    Ok(())
}

#[test]
fn task_chains_states_and_targets_match_the_workload() {
    for_each_interpreter("asyncio tasks", |interp| {
        if interp.free_threaded || interp.minor >= 16 {
            eprintln!("{}: asyncio task layouts not read for this version (skipped)", interp.label);
            return Ok(());
        }
        check_tasks(interp)
    });
}

#[test]
fn no_tasks_turns_them_off() {
    let interp = integration_tests::python::host_interpreter();
    let (profile, _, pid) = profile_tasks(&interp, &["--no-tasks"]).unwrap();
    assert!(tasks_of(&profile, pid).is_empty(), "tasks with --no-tasks");
}

/// The innermost application frame of a task's chain (not the standard library's, not a
/// package's): its handler.
fn handler(task: &Value) -> Option<String> {
    task["python_frames"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|f| !f["file"].as_str().unwrap().contains("/lib/python3"))
        .map(|f| f["function"].as_str().unwrap().to_string())
}

/// An aiohttp service under wrk load on its three endpoints: the awaiting handler's time is
/// the upstream's, the computing one runs for its CPU time, the blocking one for its sleeps.
fn check_aiohttp(uvloop: bool) -> Result<(), String> {
    let env = python_env();
    let up_port = free_port();
    let _upstream = start_aiohttp(env, up_port, &["--role", "upstream"]);
    let port = free_port();
    let up = up_port.to_string();
    let mut args = vec!["--role", "app", "--upstream-port", &up];
    if uvloop {
        args.push("--uvloop");
    }
    let app = start_aiohttp(env, port, &args);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let profiler = spawn_sampling(
        pyebpf().args(["profile", "--pid", &app.pid().to_string(), "--task-rate", "20", "-d", "9", "-o"]).arg(&json),
    );
    let loads = [
        Load::new(port, &["/upstream"]).connections(2).duration_secs(6).start(),
        Load::new(port, &["/compute"]).connections(1).duration_secs(6).start(),
        Load::new(port, &["/block"]).connections(1).duration_secs(6).start(),
    ];
    let reports: Vec<_> = loads.into_iter().map(|l| l.wait()).collect();
    let output = wait_output(profiler, Duration::from_secs(60));
    if !output.status.success() {
        return Err(format!("pyebpf failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    for r in &reports {
        r.assert_clean();
    }
    let (_, stats) = app.get("/stats");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let profile = read_json(&json);
    let tasks = tasks_of(&profile, app.pid());
    let all = describe(&tasks);
    let of = |name: &str, state: Option<&str>| {
        seconds(&tasks, |t| handler(t).as_deref() == Some(name) && state.is_none_or(|s| t["state"] == s))
    };
    let label = if uvloop { "aiohttp on uvloop" } else { "aiohttp" };
    let requests = stats["upstream_requests"].as_f64().unwrap();
    let awaited = stats["upstream_await_s"].as_f64().unwrap();
    let (awaiting, total) = (of("upstream", Some("awaiting")), of("upstream", None));
    eprintln!(
        "{label}: /upstream awaiting {awaiting:.3} s of {total:.3} s in the handler; {requests} requests x 40 ms = \
         {:.3} s; the handler measured {awaited:.3} s",
        requests * 0.040
    );
    if (total / awaited - 1.0).abs() > 0.10 || awaiting < 0.9 * requests * 0.040 {
        return Err(format!(
            "{label}: upstream handler {total:.3} s ({awaiting:.3} s awaiting), measured {awaited:.3} s:\n{all}"
        ));
    }
    let process = integration_tests::process(&profile, app.pid()).unwrap();
    let in_function = |name: &str| -> f64 {
        process["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["python_frames"].as_array().unwrap().iter().any(|f| f["function"] == name))
            .map(|s| s["weight_ns"].as_u64().unwrap() as f64 / 1e9)
            .sum()
    };
    // A running task's chain holds the functions its step calls: the innermost application
    // frame is `spin`, under `compute`.
    let running = seconds(&tasks, |t| t["state"] == "running" && has(t, "compute"));
    let thread = in_function("compute");
    eprintln!("{label}: /compute running {running:.3} s, thread in compute {thread:.3} s");
    if thread < 0.3 || (running / thread - 1.0).abs() > 0.15 {
        return Err(format!("{label}: compute running {running:.3} s vs thread {thread:.3} s:\n{all}"));
    }
    let (running, slept) = (of("block", Some("running")), stats["block_s"].as_f64().unwrap());
    eprintln!("{label}: /block running {running:.3} s, slept {slept:.3} s");
    if slept < 0.3 || (running / slept - 1.0).abs() > 0.15 {
        return Err(format!("{label}: block running {running:.3} s vs slept {slept:.3} s:\n{all}"));
    }
    Ok(())
}

#[test]
#[ignore = "fails today, see docs/DESIGN.md (asyncio tasks, known gaps): the upstream handler \
            matches (within 2-5%) but /compute's running time is off by 20-50% against the thread's \
            time in compute (on uvloop and the default loop), cause not found yet"]
fn aiohttp_handlers_split_into_running_ready_and_awaiting() {
    let failures: Vec<String> = [false, true].into_iter().filter_map(|uvloop| check_aiohttp(uvloop).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
