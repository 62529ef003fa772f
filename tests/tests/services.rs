//! Real web services under load, profiled system-wide: a Flask app on gunicorn sync workers
//! and a Starlette app on uvicorn (asyncio), both using a private PostgreSQL, driven by wrk
//! (tests/src/services.rs, tests/services/). Each service is profiled once with
//! `pyebpf profile --all`; the tests read that profile.
//!
//! What each endpoint does is known by construction, so each view function's time must land
//! in its category: /cpu on CPU, /db waiting on PostgreSQL's TCP socket, /fsync on disk with
//! the file's path, /sleep sleeping, and /block (a synchronous sleep inside `async def`) as a
//! stall of the event loop.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

use integration_tests::{services::*, *};

/// gunicorn sync workers.
const WORKERS: u32 = 3;
/// Seconds of load (wrk takes whole seconds), all of it inside the profile: it starts once
/// pyebpf has found every process of the service, and pyebpf is stopped SETTLE after it.
const LOAD_SECS: u64 = 3;
const SETTLE: Duration = Duration::from_millis(500);
/// Samples per second per CPU: enough for per-function CPU shares over a few seconds.
const FREQUENCY: &str = "499";

/// One profiled run of a service under load.
struct Run {
    profile: Value,
    /// Where the profile is kept for inspection (target/tmp/services-profiles/NAME.json).
    json: PathBuf,
    load: LoadReport,
    pg_port: u16,
    /// The server's main process and its children (gunicorn workers).
    main_pid: u32,
    children: Vec<u32>,
    fsync_dir: Option<PathBuf>,
}

/// Warms `server` up with 1 s of the same load (every gunicorn worker opens its PostgreSQL
/// connection), then profiles `--all` while wrk loads it with `paths`: starts pyebpf, waits
/// until it has found the server's main process and children as CPython processes (its
/// `RUST_LOG=info` line `pid N: CPython`; from then on their off-CPU time is tracked), runs
/// the load, and stops pyebpf with SIGINT SETTLE later. On a busy machine inspecting every
/// process of the host at start can take seconds; a fixed wait would let the profile miss
/// part of the load.
fn profile_under_load(name: &str, server: &WebServer, pg: &Postgres, paths: &[&str], connections: u32) -> Run {
    let started = Instant::now();
    let port = server.port();
    Load::new(port, paths).duration_secs(1).connections(connections).run().assert_clean();
    let (main_pid, children) = (server.pid(), server.children());
    let pids: Vec<u32> = std::iter::once(main_pid).chain(children.iter().copied()).collect();
    use std::io::BufRead;
    let dir = target_dir().join("tmp/services-profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join(format!("{name}.json"));
    let _ = std::fs::remove_file(&json);
    // -d bounds a run that would not stop on SIGINT; the guard kills it if this panics.
    let mut profiler = ChildGuard(Some(spawn_piped(
        pyebpf()
            .args(["profile", "--all", "--no-summary", "-F", FREQUENCY, "-d", "60", "-o"])
            .arg(&json)
            .env("RUST_LOG", "info"),
    )));
    // Read stderr on a thread (it must keep draining), telling this one about each line.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = profiler.child().stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let spawned = Instant::now();
    let mut missing: Vec<u32> = pids.to_vec();
    while !missing.is_empty() {
        match rx.recv_timeout(Duration::from_secs(30).saturating_sub(spawned.elapsed())) {
            Ok(line) => missing.retain(|pid| !line.contains(&format!("pid {pid}: CPython "))),
            Err(_) => {
                drop(profiler);
                panic!("pyebpf did not report CPython in pids {missing:?} within 30 s:\n{}", reader.join().unwrap());
            }
        }
    }
    eprintln!(
        "{name}: pyebpf found the service's {} processes after {:.2} s",
        pids.len(),
        spawned.elapsed().as_secs_f64()
    );
    let load = Load::new(port, paths).duration_secs(LOAD_SECS).connections(connections).start().wait();
    std::thread::sleep(SETTLE);
    // SAFETY: signalling our own child; SIGINT ends profiling and writes the outputs.
    unsafe { libc::kill(profiler.child().id() as i32, libc::SIGINT) };
    let mut out = wait_output(profiler.0.take().unwrap(), Duration::from_secs(60));
    out.stderr = reader.join().unwrap().into_bytes();
    assert_success(&out);
    eprintln!(
        "{name}: {} requests, {:.0} req/s, latency p50 {:?} p99 {:?}; profile in {}",
        load.requests,
        load.requests_per_sec(),
        load.latency_p50,
        load.latency_p99,
        json.display()
    );
    load.assert_clean();
    eprintln!("{name}: warm-up and profile took {:.1} s", started.elapsed().as_secs_f64());
    Run { profile: read_json(&json), json, load, pg_port: pg.port(), main_pid, children, fsync_dir: None }
}

/// Kills and reaps a child on drop unless taken out.
struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn flask_run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let service = FlaskService::start(WORKERS);
        // One connection more than workers: every worker is kept busy.
        let paths = ["/cpu", "/db", "/fsync", "/sleep"];
        let run = profile_under_load("flask", &service.gunicorn, &service.postgres, &paths, WORKERS + 1);
        Run { fsync_dir: Some(service.fsync_dir.path().to_path_buf()), ..run }
    })
}

fn asgi_run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let service = AsgiService::start();
        // Few connections: the loop also waits for requests, so it has idle time to report.
        profile_under_load("asgi", &service.uvicorn, &service.postgres, &["/cpu", "/db", "/block"], 2)
    })
}

impl Run {
    fn process(&self, pid: u32) -> &Value {
        process(&self.profile, pid).unwrap_or_else(|| panic!("pid {pid} not in the profile {}", self.json.display()))
    }

    fn workers(&self) -> Vec<&Value> {
        self.children.iter().map(|&pid| self.process(pid)).collect()
    }

    /// Calls of an endpoint that is one request in `every` (wrk cycles through the paths).
    fn calls(&self, every: f64) -> f64 {
        self.load.requests as f64 / every
    }
}

/// Time of the stacks holding Python function `function` (defined in `file_suffix`) in the
/// given processes, by category, plus the stacks themselves.
fn function_split<'a>(
    processes: &[&'a Value],
    function: &str,
    file_suffix: &str,
) -> (BTreeMap<String, u64>, Vec<&'a Value>) {
    let mut split = BTreeMap::new();
    let mut stacks = Vec::new();
    for p in processes {
        for s in p["stacks"].as_array().unwrap() {
            let on_it = s["python_frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"] == function && f["file"].as_str().is_some_and(|f| f.ends_with(file_suffix)));
            if on_it {
                *split.entry(s["category"].as_str().unwrap().to_string()).or_insert(0) +=
                    s["weight_ns"].as_u64().unwrap();
                stacks.push(s);
            }
        }
    }
    (split, stacks)
}

fn total(split: &BTreeMap<String, u64>) -> u64 {
    split.values().sum()
}

fn share(split: &BTreeMap<String, u64>, category: &str) -> f64 {
    split.get(category).copied().unwrap_or(0) as f64 / total(split).max(1) as f64
}

/// The share of a function's time not spent waiting for a CPU. How long a thread waits for a
/// CPU after a wakeup or a preemption depends on the machine's load (2 CPUs, shared with wrk,
/// PostgreSQL, the profiler and, on a developer's machine, anything else), not on the
/// profiler, so shares of what a function waits for are judged against this.
fn not_runqueue(split: &BTreeMap<String, u64>) -> f64 {
    (1.0 - share(split, "runqueue")).max(1e-9)
}

/// The category with the most time, waiting for a CPU aside.
fn largest(split: &BTreeMap<String, u64>) -> &str {
    split.iter().filter(|(c, _)| *c != "runqueue").max_by_key(|(_, ns)| **ns).map(|(c, _)| c.as_str()).unwrap_or("")
}

/// `{cpu: 61.2%, net: 30.1%, ...} of 812.3 ms` for failure messages.
fn describe(split: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> =
        split.iter().map(|(c, ns)| format!("{c} {:.1}%", *ns as f64 * 100.0 / total(split).max(1) as f64)).collect();
    format!("{{{}}} of {:.1} ms", parts.join(", "), total(split) as f64 / 1e6)
}

const FLASK: &str = "flask_app.py";
const ASGI: &str = "asgi_app.py";

#[test]
fn every_worker_and_the_uvicorn_process_is_a_python_process() {
    let env = python_env();
    let flask = flask_run();
    assert_eq!(flask.children.len(), WORKERS as usize, "gunicorn workers: {:?}", flask.children);
    let mut pids = vec![flask.main_pid];
    pids.extend(&flask.children);
    let asgi = asgi_run();
    for (run, pid) in pids.iter().map(|p| (flask, *p)).chain([(asgi, asgi.main_pid)]) {
        let p = run.process(pid);
        assert_eq!(p["python_version"], env.version.as_str(), "pid {pid} ({}): python_version", p["cmdline"]);
        assert!(p["wall_ns"].as_u64().unwrap() > 0, "pid {pid}: no time accounted");
    }
    // Every worker served requests: each has CPU samples inside a view function.
    for w in flask.workers() {
        let in_views: u64 = ["cpu_view", "db_view", "fsync_view", "sleep_view"]
            .iter()
            .map(|f| function_split(&[w], f, FLASK).0.get("cpu").copied().unwrap_or(0))
            .sum();
        assert!(in_views > 0, "worker {} has no CPU time in a view function", w["pid"]);
    }
}

/// wrk's numbers against what the endpoints cost by construction. Requests cycle evenly
/// through the paths. Flask: each worker serves one request at a time, and every 4 requests
/// hold a worker at least 20 (/db) + 20 (/sleep) + 5 (/cpu) ms. Starlette: every 3 requests
/// hold the one event loop at least 5 (/cpu) + 20 (/block) ms.
#[test]
fn load_generator_reports_throughput_and_latency_within_the_services_limits() {
    let flask = flask_run();
    let asgi = asgi_run();
    let limits = [("flask", flask, WORKERS as f64 * 4.0 / 0.045), ("asgi", asgi, 3.0 / 0.025)];
    for (name, run, max_rps) in limits {
        let l = &run.load;
        eprintln!(
            "{name}: {} requests in {:?}: {:.1} req/s (at most {max_rps:.1} possible); latency p50 {:?} p99 {:?} max {:?}",
            l.requests,
            l.duration,
            l.requests_per_sec(),
            l.latency_p50,
            l.latency_p99,
            l.latency_max
        );
        assert!(
            l.duration >= Duration::from_secs(LOAD_SECS) && l.duration < Duration::from_secs(LOAD_SECS + 2),
            "{name}: {l:?}"
        );
        assert!(
            l.requests_per_sec() > 10.0 && l.requests_per_sec() < max_rps * 1.05,
            "{name}: {:.1} req/s",
            l.requests_per_sec()
        );
        // A third or more of the requests take 20 ms or longer.
        assert!(
            l.latency_p50 > Duration::ZERO && l.latency_p50 <= l.latency_p99 && l.latency_p99 <= l.latency_max,
            "{name}: {l:?}"
        );
        assert!(l.latency_p99 >= Duration::from_millis(20), "{name}: p99 {:?}", l.latency_p99);
    }
}

#[test]
fn flask_db_view_waits_on_postgres_over_tcp() {
    let run = flask_run();
    let (split, stacks) = function_split(&run.workers(), "db_view", FLASK);
    let target = format!("tcp 127.0.0.1:{}", run.pg_port);
    let on_pg: u64 = stacks
        .iter()
        .filter(|s| s["category"] == "net" && s["target"] == target.as_str())
        .map(|s| s["weight_ns"].as_u64().unwrap())
        .sum();
    let pg_share = on_pg as f64 / total(&split).max(1) as f64;
    eprintln!("db_view: {:.1}% waiting on {target}: {}", pg_share * 100.0, describe(&split));
    // Each request waits 20 ms in pg_sleep for well under 1 ms of Python: the view's time is
    // the wait on PostgreSQL's socket, apart from waiting for a CPU after it (machine load).
    assert!(
        largest(&split) == "net" && pg_share / not_runqueue(&split) > 0.8,
        "db_view: {:.1}% waiting on {target} (net {:.1}%): {}",
        pg_share * 100.0,
        share(&split, "net") * 100.0,
        describe(&split)
    );
}

#[test]
fn flask_cpu_view_is_on_cpu_and_sleep_view_sleeps() {
    let run = flask_run();
    let workers = run.workers();
    for function in ["cpu_view", "burn"] {
        assert_cpu_bound(&function_split(&workers, function, FLASK).0, function);
    }
    // One request in 4 is /cpu.
    assert_burn_time(&function_split(&workers, "burn", FLASK).0, run.calls(4.0));
    let (sleep, _) = function_split(&workers, "sleep_view", FLASK);
    eprintln!("sleep_view: {}", describe(&sleep));
    assert!(
        largest(&sleep) == "sleep" && share(&sleep, "sleep") / not_runqueue(&sleep) > 0.8,
        "sleep_view: {}",
        describe(&sleep)
    );
}

/// `burn(0.005)` loops until 5 ms of wall time have passed.
const BURN: Duration = Duration::from_millis(5);

/// A function that only computes is on CPU, or runnable and waiting for one: 3 workers, wrk,
/// PostgreSQL and the profiler share 2 CPUs (and, on a developer's machine, whatever else
/// runs), so the run-queue part depends on the machine's load, not on the profiler. What does
/// not: its time is on CPU or waiting for a CPU, and the rest of its time is on CPU.
fn assert_cpu_bound(split: &BTreeMap<String, u64>, function: &str) {
    let (cpu, runq) = (share(split, "cpu"), share(split, "runqueue"));
    eprintln!("{function}: {}", describe(split));
    assert!(
        total(split) > 0 && cpu + runq > 0.9 && cpu / not_runqueue(split) > 0.9,
        "{function}: on CPU {:.1}%, waiting for a CPU {:.1}%: {}",
        cpu * 100.0,
        runq * 100.0,
        describe(split)
    );
}

/// `calls` calls of `burn` each last at least BURN of wall time and use at most BURN of CPU
/// (a preemption near the deadline makes the call longer, not busier), and the profile covers
/// the whole load, so its times must agree: wall at least 80% of calls × 5 ms, CPU at most
/// 120% (sampling error).
fn assert_burn_time(split: &BTreeMap<String, u64>, calls: f64) {
    let budget = calls * BURN.as_nanos() as f64;
    let cpu = split.get("cpu").copied().unwrap_or(0) as f64;
    let wall = total(split) as f64;
    eprintln!(
        "burn: {calls} calls of 5 ms: {:.1} ms wall ({:.0}%), {:.1} ms on CPU ({:.0}%)",
        wall / 1e6,
        wall * 100.0 / budget,
        cpu / 1e6,
        cpu * 100.0 / budget
    );
    assert!(
        wall >= 0.8 * budget && cpu <= 1.2 * budget,
        "burn: {calls} calls of 5 ms = {:.1} ms, but {:.1} ms wall, {:.1} ms on CPU: {}",
        budget / 1e6,
        wall / 1e6,
        cpu / 1e6,
        describe(split)
    );
}

#[test]
fn flask_fsync_view_waits_on_disk_for_its_file() {
    let run = flask_run();
    let dir = run.fsync_dir.as_ref().unwrap();
    let prefix = format!("file {}/journal-", dir.display());
    let mut failures = Vec::new();
    for w in run.workers() {
        let (split, stacks) = function_split(&[w], "fsync_view", FLASK);
        let journal = format!("{prefix}{}.dat", w["pid"]);
        let on_journal: u64 = stacks
            .iter()
            .filter(|s| s["category"] == "disk" && s["syscall"] == "fsync" && s["target"] == journal.as_str())
            .map(|s| s["weight_ns"].as_u64().unwrap())
            .sum();
        // Whenever fsync_view waits for something else than a CPU, it waits for its journal.
        let blocked = total(&split) - split.get("cpu").unwrap_or(&0) - split.get("runqueue").unwrap_or(&0);
        eprintln!(
            "fsync_view in worker {}: {:.1} ms in fsync on its journal: {}",
            w["pid"],
            on_journal as f64 / 1e6,
            describe(&split)
        );
        if on_journal == 0 || (on_journal as f64) < 0.8 * blocked as f64 {
            failures.push(format!(
                "worker {}: {:.1} ms in fsync on {journal} of {:.1} ms blocked: {}",
                w["pid"],
                on_journal as f64 / 1e6,
                blocked as f64 / 1e6,
                describe(&split)
            ));
        }
    }
    assert!(failures.is_empty(), "fsync_view:\n{}", failures.join("\n"));
}

#[test]
fn asyncio_endpoints_split_by_cause() {
    let run = asgi_run();
    let p = run.process(run.main_pid);
    assert_cpu_bound(&function_split(&[p], "cpu_endpoint", ASGI).0, "cpu_endpoint");
    // One request in 3 is /cpu.
    assert_burn_time(&function_split(&[p], "burn", ASGI).0, run.calls(3.0));
    // The synchronous sleep inside `async def` is a sleep of the loop thread, in the coroutine.
    let (block, _) = function_split(&[p], "block_endpoint", ASGI);
    eprintln!("block_endpoint: {}", describe(&block));
    assert!(
        largest(&block) == "sleep" && share(&block, "sleep") / not_runqueue(&block) > 0.8,
        "block_endpoint: {}",
        describe(&block)
    );
    // Awaiting PostgreSQL suspends the coroutine: db_endpoint holds the loop only briefly (it
    // is called as often as block_endpoint, which holds it 20 ms a call); the wait is the
    // loop's, in epoll.
    let (db, _) = function_split(&[p], "db_endpoint", ASGI);
    eprintln!("db_endpoint: {}", describe(&db));
    assert!(
        total(&db) > 0 && total(&db) < total(&block) / 4,
        "db_endpoint: {}; block_endpoint: {}",
        describe(&db),
        describe(&block)
    );
}

/// Event-loop awareness (issue 5): the loop-blocking endpoint is reported as a stall naming
/// its coroutine, and the loop waiting for requests is `idle`, not `net`.
#[test]
fn asyncio_loop_stall_and_idle() {
    let run = asgi_run();
    let p = run.process(run.main_pid);
    let loop_tid = run.main_pid as u64;
    let stalls = p["loop_stalls"].as_array().unwrap_or_else(|| panic!("no loop_stalls in the uvicorn process"));
    let block: Vec<&Value> = stalls
        .iter()
        .filter(|s| s["coroutine"].as_str().is_some_and(|c| c.starts_with("block_endpoint (") && c.contains(ASGI)))
        .collect();
    // Requests to /block sleep 20 ms each on the loop thread: the stall is their sleep time.
    let stalled_ns: u64 =
        block.iter().filter(|s| s["category"] == "sleep").map(|s| s["wall_ns"].as_u64().unwrap()).sum();
    let (block_split, _) = function_split(&[p], "block_endpoint", ASGI);
    let slept = block_split.get("sleep").copied().unwrap_or(0);
    eprintln!(
        "block_endpoint: stalled the loop {:.1} ms in {} entries; slept {:.1} ms: {}",
        stalled_ns as f64 / 1e6,
        block.len(),
        slept as f64 / 1e6,
        describe(&block_split)
    );
    assert!(
        !block.is_empty() && block.iter().all(|s| s["tid"] == loop_tid),
        "no stall on the loop thread {loop_tid} naming block_endpoint: {stalls:#?}"
    );
    assert!(
        slept > 0 && stalled_ns as f64 > 0.8 * slept as f64,
        "block_endpoint stalled the loop {:.1} ms in sleeps, of {:.1} ms slept: {}\n{stalls:#?}",
        stalled_ns as f64 / 1e6,
        slept as f64 / 1e6,
        describe(&block_split)
    );
    // One stall per /block request (one request in 3).
    let count: u64 = block.iter().filter(|s| s["category"] == "sleep").map(|s| s["count"].as_u64().unwrap()).sum();
    let calls = run.calls(3.0);
    assert!(
        count as f64 >= 0.8 * calls && count as f64 <= calls + 2.0,
        "block_endpoint: {count} stalls for about {calls:.0} requests to /block"
    );
    // Stacks blocked inside the coroutine name it.
    let (_, stacks) = function_split(&[p], "block_endpoint", ASGI);
    assert!(
        stacks
            .iter()
            .filter(|s| s["category"] == "sleep")
            .all(|s| s["coroutine"].as_str().is_some_and(|c| c.starts_with("block_endpoint ("))),
        "sleep stacks in block_endpoint without their coroutine"
    );
    // Sorted by stalled time, heaviest first.
    let walls: Vec<u64> = stalls.iter().map(|s| s["wall_ns"].as_u64().unwrap()).collect();
    assert!(walls.windows(2).all(|w| w[0] >= w[1]), "loop_stalls not sorted by wall_ns: {walls:?}");

    // The loop thread waiting in epoll for requests (or for PostgreSQL's answers, with no
    // coroutine to run) is idle time, not network time.
    let thread = p["threads"].as_array().unwrap().iter().find(|t| t["tid"] == loop_tid).expect("loop thread");
    let totals = &thread["totals_ns"];
    let ns = |c: &str| totals[c].as_u64().unwrap_or(0);
    let epoll: BTreeMap<String, u64> = p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["tid"] == loop_tid && s["syscall"].as_str().is_some_and(|c| c.starts_with("epoll_")))
        .fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s["category"].as_str().unwrap().to_string()).or_insert(0) += s["weight_ns"].as_u64().unwrap();
            m
        });
    // Run-queue time after a wakeup depends on the machine's load: judge the blocked part.
    let idle_of_blocked = share(&epoll, "idle") / not_runqueue(&epoll);
    eprintln!("loop thread: {totals}; its epoll waits: {}", describe(&epoll));
    assert!(
        ns("idle") > 0 && idle_of_blocked > 0.9 && ns("net") * 10 < ns("idle"),
        "loop thread: idle {:.1} ms, net {:.1} ms; its epoll waits: {}",
        ns("idle") as f64 / 1e6,
        ns("net") as f64 / 1e6,
        describe(&epoll)
    );
}
