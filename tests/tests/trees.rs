//! Process trees (issue 19): a target's children, and theirs, profiled as processes of their
//! own (`--subprocesses`, the default for `-- COMMAND`), and a command's tree ended when
//! profiling stops first, so nothing is left running.
//!
//! - gunicorn profiled by its master's pid, with sync and with gthread workers under wrk: the
//!   workers' view functions are in the profile, the arbiter does none of the work;
//! - a worker that gunicorn replaces mid-profile (`--max-requests`) is followed from its fork;
//! - a `multiprocessing.Pool` under `-- COMMAND`, whose exit status becomes pyebpf's;
//! - a command tree stopped by `-d`, with a child that ignores SIGINT and SIGTERM and a
//!   grandchild in a session of its own, leaves no process behind (every process of the tree
//!   carries a token in its environment, looked for in every /proc/PID/environ);
//! - `--no-subprocesses` (and `--pid` by default) gives the parent only; `--leave-running`
//!   leaves the tree running and says so; `top` takes the same flags.
use std::{
    collections::BTreeSet,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use integration_tests::{python::*, services::*, *};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Functions of tests/services/flask_app.py that requests run in.
const VIEWS: [&str; 4] = ["cpu_view", "db_view", "sleep_view", "burn"];
const FLASK: &str = "flask_app.py";

/// Nanoseconds on CPU of the stacks of `process` that hold Python function `function` of a
/// file ending in `file`.
fn cpu_in(process: &Value, function: &str, file: &str) -> u64 {
    process["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["category"] == "cpu")
        .filter(|s| {
            s["python_frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"] == function && f["file"].as_str().is_some_and(|path| path.ends_with(file)))
        })
        .map(|s| s["weight_ns"].as_u64().unwrap())
        .sum()
}

fn pids(profile: &Value) -> BTreeSet<u32> {
    profile["processes"].as_array().unwrap().iter().map(|p| p["pid"].as_u64().unwrap() as u32).collect()
}

fn ppid(process: &Value) -> Option<u32> {
    process["ppid"].as_u64().map(|p| p as u32)
}

fn category_ns(process: &Value, category: &str) -> u64 {
    process["totals_ns"][category].as_u64().unwrap_or(0)
}

/// Profiles `--pid master --subprocesses` while `load` runs, then stops pyebpf with SIGINT:
/// the profile and the summary.
fn profile_master(master: u32, json: &Path, load: impl FnOnce()) -> (Value, String) {
    let profiler = spawn_sampling(
        pyebpf()
            .args(["profile", "--pid", &master.to_string(), "--subprocesses", "-F", "499", "-d", "60", "-o"])
            .arg(json),
    );
    load();
    // SAFETY: signalling our own child; SIGINT ends profiling and writes the outputs.
    unsafe { libc::kill(profiler.id() as i32, libc::SIGINT) };
    let out = wait_output(profiler, TIMEOUT);
    assert_success(&out);
    (read_json(json), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// gunicorn with two workers of `worker_class` under wrk, profiled by the master's pid: the
/// workers are in the profile as Python processes forked by the master, doing the requests'
/// work; the master (the arbiter) is there too, doing none of it. A sync worker serves one
/// connection at a time, so both serve; a gthread worker takes as many keep-alive
/// connections as it can accept, so one may hold all of wrk's.
fn gunicorn_master_profile(worker_class: &'static str) {
    let config = Gunicorn { workers: 2, worker_class, threads: if worker_class == "gthread" { 4 } else { 1 } };
    let service = FlaskService::start_with(&config);
    let port = service.gunicorn.port();
    let paths = ["/cpu", "/db", "/sleep"];
    // Each worker opens its PostgreSQL connection before the profile.
    Load::new(port, &paths).duration_secs(1).connections(4).run().assert_clean();
    let master = service.gunicorn.pid();
    let workers = service.gunicorn.children();
    assert_eq!(workers.len(), 2, "gunicorn's workers: {workers:?}");
    let dir = tempfile::tempdir().unwrap();
    let (profile, summary) = profile_master(master, &dir.path().join("p.json"), || {
        Load::new(port, &paths).duration_secs(3).connections(4).run().assert_clean();
    });
    // The summary tells the workers from the master, whose command line they share.
    for pid in &workers {
        let row = summary.lines().find(|l| l.split_whitespace().next() == Some(&pid.to_string()));
        assert!(row.is_some_and(|r| r.contains(&format!("[child of {master}]"))), "worker {pid}:\n{summary}");
    }
    let env = python_env();
    let mut serving = 0;
    for &pid in &workers {
        let w = process(&profile, pid).unwrap_or_else(|| panic!("{worker_class} worker {pid} not in the profile"));
        assert_eq!(ppid(w), Some(master), "worker {pid}'s ppid");
        assert_eq!(w["python_version"], env.version.as_str(), "worker {pid}");
        assert!(w["wall_ns"].as_u64().unwrap() > 0, "worker {pid}: no time accounted");
        let in_views: Vec<u64> = VIEWS.iter().map(|f| cpu_in(w, f, FLASK)).collect();
        eprintln!("{worker_class} worker {pid}: CPU ns in {VIEWS:?}: {in_views:?}");
        serving += usize::from(cpu_in(w, "cpu_view", FLASK) > 0);
    }
    let wanted = if worker_class == "sync" { workers.len() } else { 1 };
    assert!(serving >= wanted, "{serving} {worker_class} workers with CPU in cpu_view, {wanted} expected");
    let arbiter = process(&profile, master).expect("the arbiter (gunicorn's master) is in the profile");
    let (cpu, wall) = (category_ns(arbiter, "cpu"), arbiter["wall_ns"].as_u64().unwrap());
    eprintln!(
        "{worker_class} arbiter {master}: {:.1} ms on CPU of {:.1} s; totals {}",
        cpu as f64 / 1e6,
        wall as f64 / 1e9,
        arbiter["totals_ns"]
    );
    // Idle: no request's work, and (almost) no CPU: it waits for its workers and signals.
    assert!(VIEWS.iter().all(|f| cpu_in(arbiter, f, FLASK) == 0), "view functions in the arbiter");
    assert!(wall > 0 && (cpu as f64) < 0.05 * wall as f64, "the arbiter is busy: {}", arbiter["totals_ns"]);
    // Nothing else than the service's processes.
    let expected: BTreeSet<u32> = std::iter::once(master).chain(workers.iter().copied()).collect();
    assert_eq!(pids(&profile), expected, "processes in the profile");
}

#[test]
fn gunicorn_sync_workers_profiled_by_the_masters_pid() {
    gunicorn_master_profile("sync");
}

#[test]
fn gunicorn_gthread_workers_profiled_by_the_masters_pid() {
    gunicorn_master_profile("gthread");
}

/// gunicorn replaces a worker after 20 requests: the workers forked while profiling are in
/// the profile, named and unwound from their first samples, with the master as their parent.
#[test]
fn a_worker_replaced_mid_profile_is_followed() {
    let config = Gunicorn { workers: 2, worker_class: "sync", threads: 1 };
    let service = FlaskService::start_with_args(&config, &["--max-requests", "20", "--max-requests-jitter", "0"]);
    let port = service.gunicorn.port();
    let master = service.gunicorn.pid();
    let before: BTreeSet<u32> = service.gunicorn.children().into_iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let (profile, _) = profile_master(master, &dir.path().join("p.json"), || {
        let load = Load::new(port, &["/cpu"]).duration_secs(3).connections(2).run();
        eprintln!("{} requests", load.requests);
        assert!(load.requests >= 60, "too few requests to replace workers: {load:?}");
    });
    let replaced: Vec<&Value> = profile["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| ppid(p) == Some(master) && !before.contains(&(p["pid"].as_u64().unwrap() as u32)))
        .collect();
    let summary: Vec<String> = replaced
        .iter()
        .map(|p| {
            format!(
                "{} ({} samples, {:.1} ms in cpu_view)",
                p["pid"],
                p["samples"],
                cpu_in(p, "cpu_view", FLASK) as f64 / 1e6
            )
        })
        .collect();
    eprintln!("workers at start {before:?}; forked while profiling: {summary:?}");
    assert!(!replaced.is_empty(), "no worker forked while profiling is in the profile: {:?}", pids(&profile));
    // The replacements served requests, unwound as Python (their layout is their parent's).
    let serving: Vec<&&Value> = replaced.iter().filter(|p| cpu_in(p, "cpu_view", FLASK) > 0).collect();
    assert!(!serving.is_empty(), "no replacement worker has CPU in cpu_view: {summary:?}");
    // (One forked as profiling stops may be seen only through its kernel totals, unnamed.)
    for p in replaced.iter().filter(|p| p["samples"].as_u64() > Some(0)) {
        assert_eq!(p["python_version"], python_env().version.as_str(), "{}", p["pid"]);
    }
}

/// `tree.py pool 2 SECONDS STATUS` under `-- COMMAND`: the pool's workers are processes of
/// their own, descended from the parent, with the tasks' function; the parent waits. pyebpf
/// exits with the command's status and says it.
#[test]
fn a_multiprocessing_pool_under_a_command() {
    let interp = host_interpreter();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let out = run(
        pyebpf()
            .args(["profile", "--no-summary", "-F", "499", "-o"])
            .arg(&json)
            .arg("--")
            .args(interp.argv())
            .arg(workload("tree.py"))
            .args(["pool", "2", "2.0", "3"]),
        TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "pyebpf exits with the command's status: {stderr}");
    assert!(stderr.contains("the command exited (status 3)"), "{stderr}");
    let ran: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("tree.py printed its pids");
    let profile = read_json(&json);
    let parent = ran["parent"].as_u64().unwrap() as u32;
    let workers: Vec<u32> = ran["workers"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u32).collect();
    assert!(!workers.is_empty());
    let parent_p = process(&profile, parent).expect("the parent in the profile");
    for &w in &workers {
        let p =
            process(&profile, w).unwrap_or_else(|| panic!("pool worker {w} not in the profile {:?}", pids(&profile)));
        let work = cpu_in(p, "pool_work", "tree.py");
        eprintln!("pool worker {w}: {:.1} ms of CPU in pool_work", work as f64 / 1e6);
        assert!(work > 100_000_000, "pool worker {w}: {work} ns in pool_work");
        // Forked by the parent (fork), or by its fork server (3.14's default): a descendant.
        let mut up = ppid(p);
        let mut hops = 0;
        while let Some(pid) = up.filter(|&pid| pid != parent && hops < 4) {
            up = process(&profile, pid).and_then(ppid);
            hops += 1;
        }
        assert_eq!(up, Some(parent), "pool worker {w} does not descend from the parent {parent}");
    }
    assert_eq!(cpu_in(parent_p, "pool_work", "tree.py"), 0, "the parent ran no task");
}

/// The processes whose environment holds `token`: the tree of a command started with it.
fn holding(token: &str) -> Vec<(u32, String)> {
    let needle = format!("PYEBPF_TREE_TOKEN={token}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|&b| b == 0).any(|var| var == needle.as_bytes()) {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            found.push((pid, stat));
        }
    }
    found
}

/// Kills whatever holds `token` (cleanup for a failed or leave-running test).
fn kill_holding(token: &str) {
    for (pid, _) in holding(token) {
        // SAFETY: a process of this test's own command tree (it carries the token).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

struct KillTree(String);

impl Drop for KillTree {
    fn drop(&mut self) {
        kill_holding(&self.0);
    }
}

fn token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Starts pyebpf with stdout and stderr in files of `dir`: the command it starts inherits
/// them, and a tree left running would keep pipes open after pyebpf exits.
fn spawn_to_files(cmd: &mut std::process::Command, dir: &Path) -> std::process::Child {
    let file = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    cmd.stdout(file("stdout")).stderr(file("stderr")).spawn().expect("start pyebpf")
}

/// Waits for pyebpf started by [`spawn_to_files`]: (exit status, stderr).
fn wait_files(mut child: std::process::Child, dir: &Path) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("pyebpf did not exit within {TIMEOUT:?}: {}", std::fs::read_to_string(dir.join("stderr")).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (status, stderr)
}

/// Waits until `tree.py stubborn` has noted every process (the parent last).
fn wait_for_stubborn_tree(pidfile: &Path) -> Vec<(u32, String)> {
    poll(Duration::from_secs(60), "tree.py stubborn to start its tree", || {
        let text = std::fs::read_to_string(pidfile).map_err(|e| e.to_string())?;
        let noted: Vec<(u32, String)> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(pid, role)| (pid.parse().unwrap(), role.to_string()))
            .collect();
        if noted.iter().any(|(_, role)| role == "parent") {
            Ok(noted)
        } else {
            let stderr = std::fs::read_to_string(pidfile.with_file_name("stderr")).unwrap_or_default();
            Err(format!("noted {text:?}; pyebpf's stderr: {stderr}"))
        }
    })
}

/// A `-- COMMAND` tree stopped by `-d`: a child that ignores SIGINT and SIGTERM and a
/// grandchild that left the process group and session are ended too; nothing of the tree
/// runs after pyebpf exits.
#[test]
fn a_command_tree_stopped_by_duration_leaves_no_process_behind() {
    let interp = host_interpreter();
    let dir = tempfile::tempdir().unwrap();
    let (json, pidfile) = (dir.path().join("p.json"), dir.path().join("pids"));
    let token = token();
    let _cleanup = KillTree(token.clone());
    let child = spawn_to_files(
        pyebpf()
            .args(["profile", "--no-summary", "-F", "199", "-d", "6", "-o"])
            .arg(&json)
            .arg("--")
            .args(interp.argv())
            .arg(workload("tree.py"))
            .arg("stubborn")
            .arg(&pidfile)
            .env("PYEBPF_TREE_TOKEN", &token),
        dir.path(),
    );
    let noted = wait_for_stubborn_tree(&pidfile);
    let running = holding(&token);
    eprintln!("tree: {noted:?}; {} processes hold the token", running.len());
    let (status, stderr) = wait_files(child, dir.path());
    eprintln!("{stderr}");
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("ended the command and what it started"), "{stderr}");
    // The deaf child ignores SIGINT and SIGTERM.
    assert!(stderr.contains("SIGINT then SIGTERM then SIGKILL, all gone"), "{stderr}");
    let left: Vec<(u32, String)> =
        holding(&token).into_iter().filter(|(_, stat)| !stat.contains(") Z ") && !stat.is_empty()).collect();
    assert!(left.is_empty(), "processes of the command left running: {left:#?}");
    for (pid, role) in &noted {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z "), "{role} ({pid}) still runs: {stat}");
    }
    // Every process of the tree was profiled, the escaped grandchild too.
    let profile = read_json(&json);
    for (pid, role) in &noted {
        assert!(process(&profile, *pid).is_some(), "{role} ({pid}) not in the profile {:?}", pids(&profile));
    }
    let burner = noted.iter().find(|(_, r)| r == "burner").unwrap().0;
    assert!(cpu_in(process(&profile, burner).unwrap(), "burner_work", "tree.py") > 0, "burner_work not sampled");
}

/// `--leave-running`: profiling stops, the tree keeps running, and pyebpf says so.
#[test]
fn leave_running_leaves_the_tree_and_says_so() {
    let interp = host_interpreter();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let token = token();
    let _cleanup = KillTree(token.clone());
    let child = spawn_to_files(
        pyebpf()
            .args(["profile", "--no-summary", "--leave-running", "-d", "6", "-o"])
            .arg(dir.path().join("p.json"))
            .arg("--")
            .args(interp.argv())
            .arg(workload("tree.py"))
            .arg("stubborn")
            .arg(&pidfile)
            .env("PYEBPF_TREE_TOKEN", &token),
        dir.path(),
    );
    let noted = wait_for_stubborn_tree(&pidfile);
    let (status, stderr) = wait_files(child, dir.path());
    eprintln!("{stderr}");
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("--leave-running: left the command's"), "{stderr}");
    for (pid, role) in &noted {
        assert!(stderr.contains(&pid.to_string()), "{role} ({pid}) not named: {stderr}");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(!stat.is_empty() && !stat.contains(") Z "), "{role} ({pid}) was ended: {stat}");
    }
}

/// `--no-subprocesses` under a command, and `--pid` by default, give the parent only; `--pid`
/// with `--subprocesses` finds the children already running when profiling starts.
#[test]
fn no_subprocesses_gives_the_parent_only() {
    let interp = host_interpreter();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let out = run(
        pyebpf()
            .args(["profile", "--no-summary", "--no-subprocesses", "-o"])
            .arg(&json)
            .arg("--")
            .args(interp.argv())
            .arg(workload("tree.py"))
            .args(["pool", "2", "1.0"]),
        TIMEOUT,
    );
    assert_success(&out);
    let ran: Value =
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| serde_json::from_str(l).ok()).expect("pids printed");
    assert_eq!(pids(&read_json(&json)), BTreeSet::from([ran["parent"].as_u64().unwrap() as u32]));

    // A pool running for a while, started by the test: --pid is the parent only unless asked.
    let pool = KillOnDrop(
        interp.command().arg(workload("tree.py")).args(["pool", "2", "30"]).stdout(Stdio::null()).spawn().unwrap(),
    );
    let parent = pool.pid();
    let workers = poll(Duration::from_secs(30), "the pool's workers to start", || {
        let w = children_of(parent);
        if w.len() >= 2 { Ok(w) } else { Err(format!("{w:?}")) }
    });
    let only = profile_json(|cmd, json| {
        cmd.args(["profile", "--no-summary", "-d", "1.5", "--pid", &parent.to_string(), "-o"]).arg(json);
    });
    assert_eq!(pids(&only), BTreeSet::from([parent]));
    let all = profile_json(|cmd, json| {
        cmd.args(["profile", "--no-summary", "-d", "1.5", "--subprocesses", "--pid", &parent.to_string(), "-o"])
            .arg(json);
    });
    for w in &workers {
        let p = process(&all, *w).unwrap_or_else(|| panic!("worker {w} (running at start) not in {:?}", pids(&all)));
        assert_eq!(ppid(p), Some(parent));
        assert!(cpu_in(p, "pool_work", "tree.py") > 0, "worker {w} has no CPU in pool_work");
    }
}

/// `top` (and `daemon`) take the same flags: `top --pid PARENT --subprocesses` lists the
/// children; `--subprocesses` with `--all` is a usage error.
#[test]
fn top_follows_subprocesses_and_all_refuses_the_flag() {
    let interp = host_interpreter();
    let pool = KillOnDrop(
        interp.command().arg(workload("tree.py")).args(["pool", "2", "30"]).stdout(Stdio::null()).spawn().unwrap(),
    );
    let parent = pool.pid();
    let workers = poll(Duration::from_secs(30), "the pool's workers to start", || {
        let w = children_of(parent);
        if w.len() >= 2 { Ok(w) } else { Err(format!("{w:?}")) }
    });
    let out = run(pyebpf().args(["top", "--pid", &parent.to_string(), "--subprocesses", "-d", "2.5"]), TIMEOUT);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: BTreeSet<u32> = text.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    for w in &workers {
        assert!(rows.contains(w), "worker {w} not in top's table:\n{text}");
    }
    for cmd in [["top", "--all", "--subprocesses"], ["daemon", "--all", "--no-subprocesses"]] {
        let started = Instant::now();
        let out = run(pyebpf().args(cmd), TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains("--all"), "{cmd:?}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "{cmd:?} loaded BPF before refusing");
    }
    let out = run(pyebpf().args(["profile", "--leave-running", "--pid", &parent.to_string()]), TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "--leave-running without a command: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("-- COMMAND"), "{stderr}");
}
