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
/// The TLS runs check the fetcher's target only: half of this is its fetching time.
const TLS_DURATION_S: f64 = 4.0;

/// Starts the workload (with `workload_args` after its duration), profiles it with `extra`
/// flags until it exits, and returns the profile with the workload's own counts.
fn profile_tasks(interp: &Interpreter, workload_args: &[&str], extra: &[&str]) -> Result<(Value, Value, u32), String> {
    profile_tasks_for(interp, DURATION_S, workload_args, extra)
}

fn profile_tasks_for(
    interp: &Interpreter,
    duration_s: f64,
    workload_args: &[&str],
    extra: &[&str],
) -> Result<(Value, Value, u32), String> {
    let script = interp.workload("asyncio_tasks.py");
    let mut child = interp
        .command()
        .arg(&script)
        .arg(duration_s.to_string())
        .args(workload_args)
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

fn check_tasks(interp: &Interpreter, workload_args: &[&str]) -> Result<(), String> {
    let (profile, stats, pid) = profile_tasks(interp, workload_args, &[])?;
    let tasks = tasks_of(&profile, pid);
    if tasks.is_empty() {
        return Err("no tasks in the profile".into());
    }
    let all = describe(&tasks);
    // Coverage: the event waiter lives from the start of the run to its end, so its weight is
    // the run's length, whatever its state; snapshots that stopped (or started) part-way
    // through show here first.
    let run = stats["seconds"].as_f64().unwrap();
    let waiter = seconds(&tasks, |t| t["task"] == "event-waiter");
    if !(0.90..=1.10).contains(&(waiter / run)) {
        return Err(format!("the event waiter weighs {waiter:.3} s of the {run:.3} s it lived:\n{all}"));
    }
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
    // Truth: the awaiting time lies between the upstream's delays (40 ms, more on a loaded
    // machine: what it really slept) and the round trips the fetcher measured (the reply's way
    // back after the upstream slept, and the fetcher's own steps, are in them: at load average
    // 40 the round trips were 27% above the sleeps, and the awaiting time with them), with 10%
    // for the snapshots' sampling; the fetcher's whole time is its round trips.
    let fetcher = seconds(&tasks, |t| t["task"] == "fetcher" && has(t, "fetch_upstream"));
    if awaiting < 0.90 * slept || awaiting > 1.10 * round_trips || (fetcher / round_trips - 1.0).abs() > 0.10 {
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

/// Does pyebpf read this interpreter's tasks (3.8-3.15, with the GIL or free-threaded)? Says so
/// when it does not.
fn task_layout_known(interp: &Interpreter) -> bool {
    let known = interp.minor < 16;
    if !known {
        eprintln!("{}: asyncio task layouts not read for this version (skipped)", interp.label);
    }
    known
}

#[test]
fn task_chains_states_and_targets_match_the_workload() {
    for_each_interpreter("asyncio tasks", |interp| {
        if !task_layout_known(interp) {
            return Ok(());
        }
        check_tasks(interp, &[])
    });
}

/// The services venv's interpreter (it has uvloop).
fn services_interpreter() -> Interpreter {
    let env = python_env();
    Interpreter {
        label: format!("{} (services venv, uvloop)", env.version),
        path: env.python.clone(),
        minor: env.version.split('.').nth(1).and_then(|m| m.parse().ok()).expect("the venv's version"),
        free_threaded: false,
        root: None,
    }
}

/// The same workload on uvloop (the services venv's interpreter, which has it): the same
/// chains, states and targets; the fetcher's socket is found through uvloop's libuv handle.
#[test]
fn task_chains_states_and_targets_on_uvloop() {
    let interp = services_interpreter();
    if let Err(e) = check_tasks(&interp, &["uvloop"]) {
        panic!("{}: {e}", interp.label);
    }
}

/// The fetcher over TLS: its stream's transport is a TLS transport, whose SSL protocol writes
/// to the TCP transport holding the socket; its awaiting time is still on the upstream's
/// `tcp 127.0.0.1:PORT`.
fn check_tls_target(interp: &Interpreter, workload_args: &[&str]) -> Result<(), String> {
    let (profile, stats, pid) = profile_tasks_for(interp, TLS_DURATION_S, workload_args, &[])?;
    let tasks = tasks_of(&profile, pid);
    let port = stats["upstream_port"].as_u64().unwrap();
    let slept = stats["upstream_slept_s"].as_f64().unwrap();
    let awaiting = seconds(&tasks, |t| t["task"] == "fetcher" && t["state"] == "awaiting" && has(t, "fetch_upstream"));
    let on_socket = seconds(&tasks, |t| {
        t["task"] == "fetcher" && t["target"].as_str() == Some(format!("tcp 127.0.0.1:{port}").as_str())
    });
    eprintln!(
        "{}: TLS fetcher awaiting {awaiting:.3} s, {on_socket:.3} s of it on tcp 127.0.0.1:{port}; upstream slept {slept:.3} s",
        interp.label
    );
    // The awaiting time's own bounds are checked over plain TCP (check_tasks); here the
    // target: all of it but the first connection's handshake and snapshot error.
    if awaiting < 0.8 * slept || on_socket < 0.8 * awaiting {
        return Err(format!(
            "TLS fetcher awaiting {awaiting:.3} s ({on_socket:.3} s on its socket), upstream slept {slept:.3} s:\n{}",
            describe(&tasks)
        ));
    }
    Ok(())
}

#[test]
fn task_targets_through_tls_on_asyncio_and_uvloop() {
    for_each_interpreter("asyncio tasks over TLS", |interp| {
        if !task_layout_known(interp) {
            return Ok(());
        }
        check_tls_target(interp, &["tls"])
    });
    let interp = services_interpreter();
    if let Err(e) = check_tls_target(&interp, &["uvloop", "tls"]) {
        panic!("{}: {e}", interp.label);
    }
}

/// The SVG, speedscope and pprof files of one run, beside its JSON.
struct Views {
    svg: String,
    speedscope: Value,
    speedscope_path: std::path::PathBuf,
    pprof: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Profiles the workload on the host's interpreter with every output at once.
fn profile_with_views(extra: &[&str]) -> (Value, Views, u32) {
    let interp = integration_tests::python::host_interpreter();
    let dir = tempfile::tempdir().unwrap();
    let (svg, speedscope, pprof) =
        (dir.path().join("p.svg"), dir.path().join("p.speedscope.json"), dir.path().join("p.pb.gz"));
    let mut args: Vec<&str> = extra.to_vec();
    for path in [&svg, &speedscope, &pprof] {
        args.extend(["-o", path.to_str().unwrap()]);
    }
    let (profile, _, pid) = profile_tasks(&interp, &[], &args).unwrap();
    let views = Views {
        svg: std::fs::read_to_string(&svg).unwrap(),
        speedscope: read_json(&speedscope),
        speedscope_path: speedscope,
        pprof,
        _dir: dir,
    };
    (profile, views, pid)
}

/// The frames of inferno's SVG: each `<title>` is `name (N µs, P%)`; widths sum per name.
fn svg_frames(svg: &str) -> Vec<(String, u64)> {
    svg.split("<title>")
        .skip(1)
        .filter_map(|t| {
            let title = t.split("</title>").next()?;
            let title = title.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").replace("&quot;", "\"");
            let open = title.rfind(" (")?;
            let count = title[open + 2..].split(' ').next()?.replace(',', "").parse().ok()?;
            Some((title[..open].to_string(), count))
        })
        .collect()
}

/// A speedscope stack: frame names, root first, and its weight.
type NamedStack = (Vec<String>, u64);

/// speedscope's task profile of `pid`: its stacks, and its `endValue`.
fn speedscope_tasks(file: &Value, pid: u32) -> Option<(Vec<NamedStack>, u64)> {
    let frames = file["shared"]["frames"].as_array().unwrap();
    let p = file["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str().unwrap().ends_with(&format!("({pid}) / asyncio tasks")))?;
    let stacks = p["samples"]
        .as_array()
        .unwrap()
        .iter()
        .zip(p["weights"].as_array().unwrap())
        .map(|(s, w)| {
            let names =
                s.as_array().unwrap().iter().map(|i| frames[i.as_u64().unwrap() as usize]["name"].as_str().unwrap());
            (names.map(str::to_string).collect(), w.as_u64().unwrap())
        })
        .collect();
    Some((stacks, p["endValue"].as_u64().unwrap()))
}

/// In wall mode the flame graph, speedscope and pprof hold each asyncio process's task stacks
/// beside its threads: the JSON's task chains and states, adding up to its task weights.
#[test]
fn task_views_in_flame_graph_speedscope_and_pprof() {
    let (profile, views, pid) = profile_with_views(&[]);
    let tasks = tasks_of(&profile, pid);
    assert!(!tasks.is_empty(), "no tasks in the profile");
    let all = describe(&tasks);
    let weight = |t: &Value| t["weight_ns"].as_u64().unwrap();
    let total_ns: u64 = tasks.iter().map(weight).sum();
    let fetcher_ns: u64 = tasks.iter().filter(|t| t["task"] == "fetcher").map(weight).sum();
    let leaves: std::collections::BTreeSet<String> = tasks
        .iter()
        .map(|t| match t["target"].as_str() {
            Some(target) => format!("[{}] {target}", t["state"].as_str().unwrap()),
            None => format!("[{}]", t["state"].as_str().unwrap()),
        })
        .collect();
    for state in ["[running]", "[ready]", "[awaiting] sleep", "[awaiting] event"] {
        assert!(leaves.contains(state), "the workload's tasks are {state}: {leaves:?}\n{all}");
    }

    // Flame graph: one `[asyncio tasks]` frame in the process, as wide as its tasks in µs
    // (each stack rounded down to whole µs), the fetcher's chain and every state under it.
    let svg = svg_frames(&views.svg);
    let root: Vec<u64> = svg.iter().filter(|(n, _)| n == "[asyncio tasks]").map(|&(_, c)| c).collect();
    let expected_us: u64 = tasks.iter().map(|t| weight(t) / 1000).sum();
    // (The upstream is a process of its own: only the workload's view is compared.)
    assert!(root.contains(&expected_us), "the task view's root {root:?} against the JSON's tasks ({expected_us} µs)");
    let fetcher_us: u64 = svg.iter().filter(|(n, _)| n == "fetcher").map(|&(_, c)| c).sum();
    let fetcher_expected: u64 = tasks.iter().filter(|t| t["task"] == "fetcher").map(|t| weight(t) / 1000).sum();
    assert_eq!(fetcher_us, fetcher_expected, "fetcher in the flame graph");
    assert!(svg.iter().any(|(n, _)| n.starts_with("fetch_upstream (")), "the fetcher's chain in the SVG");
    // (inferno leaves out frames narrower than 0.1 pixel: the four states above are wide.)
    for leaf in ["[running]", "[ready]", "[awaiting] sleep", "[awaiting] event"] {
        assert!(svg.iter().any(|(n, _)| n == leaf), "{leaf} in the flame graph");
    }

    // speedscope: a profile named after the process, weights summing to the task weights.
    let (stacks, end) = speedscope_tasks(&views.speedscope, pid).expect("a speedscope profile of the tasks");
    assert_eq!(end, total_ns);
    assert_eq!(stacks.iter().map(|(_, w)| w).sum::<u64>(), total_ns);
    assert!(
        stacks.iter().any(|(f, _)| f[0] == "fetcher" && f.iter().any(|x| x == "fetch_upstream")),
        "the fetcher's chain in speedscope: {stacks:?}"
    );
    let ss_leaves: std::collections::BTreeSet<String> = stacks.iter().map(|(f, _)| f.last().unwrap().clone()).collect();
    assert_eq!(ss_leaves, leaves, "speedscope's task leaves against the JSON's states");
    // The view opened first is still a thread's.
    let active = views.speedscope["activeProfileIndex"].as_u64().unwrap() as usize;
    assert!(!views.speedscope["profiles"][active]["name"].as_str().unwrap().ends_with("asyncio tasks"));
    // speedscope's schema and app take the file and list the task view in the profile picker.
    let out = integration_tests::target_dir().join("test-output/tasks");
    std::fs::create_dir_all(&out).unwrap();
    let shown = integration_tests::consumers::speedscope_check(&views.speedscope_path, &out.join("speedscope.png"));
    assert_eq!(shown["problems"], serde_json::json!([]), "{shown}");
    let listed = shown["threads"].as_array().unwrap();
    assert!(
        listed.iter().any(|t| t.as_str().is_some_and(|t| t.ends_with(&format!("({pid}) / asyncio tasks")))),
        "the task view in speedscope's picker: {shown}"
    );

    // pprof: `-sample_index=tasks` totals the task weights, labels pick a task and a state.
    let top = integration_tests::consumers::pprof_top(&views.pprof, "tasks", 30);
    assert_eq!(top.total as u64, total_ns, "pprof's tasks total\n{}", top.text);
    assert!(top.rows.iter().any(|r| r.name == "[running]"), "{}", top.text);
    let focused =
        integration_tests::consumers::pprof_top_with(&views.pprof, &["-sample_index=tasks", "-tagfocus=task=fetcher"]);
    assert_eq!(focused.rows.iter().map(|r| r.flat).sum::<i64>() as u64, fetcher_ns, "{}", focused.text);
    let running_ns: u64 = tasks.iter().filter(|t| t["state"] == "running").map(weight).sum();
    let running = integration_tests::consumers::pprof_top_with(
        &views.pprof,
        &["-sample_index=tasks", "-tagfocus=task_state=running"],
    );
    assert_eq!(running.rows.iter().map(|r| r.flat).sum::<i64>() as u64, running_ns, "{}", running.text);
    // Wall time is still the threads' alone.
    let wall = integration_tests::consumers::pprof_top(&views.pprof, "wall", 1);
    let stacks_ns: i64 = integration_tests::process(&profile, pid).unwrap()["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["weight_ns"].as_i64().unwrap())
        .sum();
    assert_eq!(wall.total, stacks_ns, "wall in pprof against the JSON's stacks");
}

#[test]
fn no_tasks_turns_them_off() {
    let (profile, views, pid) = profile_with_views(&["--no-tasks"]);
    assert!(tasks_of(&profile, pid).is_empty(), "tasks with --no-tasks");
    assert!(!views.svg.contains("[asyncio tasks]"), "a task view in the flame graph with --no-tasks");
    assert!(speedscope_tasks(&views.speedscope, pid).is_none(), "a speedscope task profile with --no-tasks");
    // `go tool pprof -raw` lists the value types first: no `tasks`.
    let raw = std::process::Command::new("go").args(["tool", "pprof", "-raw"]).arg(&views.pprof).output().unwrap();
    let raw = String::from_utf8_lossy(&raw.stdout);
    assert!(raw.contains("wall/nanoseconds"), "{raw}");
    assert!(!raw.contains("tasks/nanoseconds"), "a tasks value in pprof with --no-tasks:\n{raw}");
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

/// Seconds of wrk load on the aiohttp service; the profile covers them.
const AIOHTTP_LOAD_S: u64 = 15;
/// The session's tick (50 ms) bounds task snapshots at 20 a second, and a loaded machine
/// delays ticks: the tolerance below counts on 15 a second.
const SNAPSHOTS_PER_S: f64 = 15.0;

/// How far a time estimated from periodic snapshots may be from the truth: a state that holds
/// a share `p` of the time is seen in about n·p of n snapshots, a binomial count whose relative
/// standard deviation is sqrt((1 - p) / (n·p)). Three of those, and never under 10%.
fn snapshot_tolerance(truth_s: f64, span_s: f64) -> f64 {
    let n = SNAPSHOTS_PER_S * span_s;
    let p = (truth_s / span_s).clamp(1e-3, 1.0);
    (3.0 * ((1.0 - p) / (n * p)).sqrt()).max(0.10)
}

/// An aiohttp service under wrk load on its three endpoints: the awaiting handler's time is
/// the upstream's, the computing one runs for the time its handler measured, the blocking one
/// for its sleeps; tasks wait `ready` while the loop is saturated.
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
    // --task-rate 20 is the tick's rate; a budget of 20% keeps the budget from lowering it
    // (the few tasks here cost about 1 ms a round on a loaded machine).
    let profiler = spawn_sampling(
        pyebpf()
            .args(["profile", "--pid", &app.pid().to_string(), "--task-rate", "20", "--task-budget", "20"])
            .args(["-d", &(AIOHTTP_LOAD_S + 3).to_string(), "-o"])
            .arg(&json),
    );
    let loads = [
        Load::new(port, &["/upstream"]).connections(2).duration_secs(AIOHTTP_LOAD_S).start(),
        Load::new(port, &["/compute"]).connections(1).duration_secs(AIOHTTP_LOAD_S).start(),
        Load::new(port, &["/block"]).connections(1).duration_secs(AIOHTTP_LOAD_S).start(),
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
    let span = AIOHTTP_LOAD_S as f64;
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
    // What it awaits: the connection to the upstream, named as off-CPU targets are (aiohttp's
    // `ResponseHandler.transport` is a slot; on uvloop the socket is a libuv handle's).
    let upstream_target = format!("tcp 127.0.0.1:{up_port}");
    let on_upstream = seconds(&tasks, |t| {
        handler(t).as_deref() == Some("upstream")
            && t["state"] == "awaiting"
            && t["target"].as_str() == Some(upstream_target.as_str())
    });
    eprintln!("{label}: /upstream awaiting {upstream_target}: {on_upstream:.3} s");
    if on_upstream < 0.8 * awaiting {
        return Err(format!(
            "{label}: /upstream awaiting {upstream_target} {on_upstream:.3} s of {awaiting:.3} s awaiting:\n{all}"
        ));
    }
    // /compute: its task runs from the handler's first line to its last, on the CPU or in the
    // run queue. The handler's own wall time is the truth: the kernel's stacks hold only the
    // run-queue waits long enough to carry a stack (the rest are stackless "short waits"), so
    // "the thread's time in compute" falls short of it on a loaded machine.
    let process = integration_tests::process(&profile, app.pid()).unwrap();
    let in_compute = |category: &str| -> f64 {
        process["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["category"] == category)
            .filter(|s| s["python_frames"].as_array().unwrap().iter().any(|f| f["function"] == "compute"))
            .map(|s| s["weight_ns"].as_u64().unwrap() as f64 / 1e9)
            .sum()
    };
    let running = seconds(&tasks, |t| t["state"] == "running" && has(t, "compute"));
    let (measured, measured_cpu) = (stats["compute_s"].as_f64().unwrap(), stats["compute_cpu_s"].as_f64().unwrap());
    let tolerance = snapshot_tolerance(measured, span);
    eprintln!(
        "{label}: /compute running {running:.3} s ({:+.1}%, tolerance {:.0}%); the handler measured {measured:.3} s \
         wall, {measured_cpu:.3} s CPU ({} requests); the kernel's stacks in compute: {:.3} s on CPU, {:.3} s in the \
         run queue (the process's run queue: {:.3} s)",
        100.0 * (running / measured - 1.0),
        100.0 * tolerance,
        stats["compute_requests"],
        in_compute("cpu"),
        in_compute("runqueue"),
        process["totals_ns"]["runqueue"].as_f64().unwrap_or(0.0) / 1e9,
    );
    if measured_cpu < 0.3 || (running / measured - 1.0).abs() > tolerance {
        return Err(format!("{label}: compute running {running:.3} s vs measured {measured:.3} s:\n{all}"));
    }
    // The CPU truth: running holds the CPU time the handler burnt (and its run-queue waits).
    if running < (1.0 - tolerance) * measured_cpu {
        return Err(format!("{label}: compute running {running:.3} s under its CPU time {measured_cpu:.3} s:\n{all}"));
    }
    let (running, slept) = (of("block", Some("running")), stats["block_s"].as_f64().unwrap());
    let tolerance = snapshot_tolerance(slept, span);
    eprintln!(
        "{label}: /block running {running:.3} s ({:+.1}%, tolerance {:.0}%), slept {slept:.3} s",
        100.0 * (running / slept - 1.0),
        100.0 * tolerance
    );
    if slept < 0.3 || (running / slept - 1.0).abs() > tolerance {
        return Err(format!("{label}: block running {running:.3} s vs slept {slept:.3} s:\n{all}"));
    }
    // Four connections on one loop busy about 90% of the time: while one handler holds it,
    // others' tasks wake up and wait `ready` (measured 0.7-1.1 s of 15 s).
    let ready = seconds(&tasks, |t| t["state"] == "ready");
    eprintln!("{label}: ready {ready:.3} s");
    if ready < 0.02 * span {
        return Err(format!("{label}: ready {ready:.3} s while the loop was saturated:\n{all}"));
    }
    Ok(())
}

#[test]
fn aiohttp_handlers_split_into_running_ready_and_awaiting() {
    let failures: Vec<String> = [false, true].into_iter().filter_map(|uvloop| check_aiohttp(uvloop).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
