//! Production fleets: container identity from real cgroups made under the names container
//! runtimes and the kubelet use, `--container` targets, and OTLP profiles decoded by the
//! official OpenTelemetry bindings (files and the daemon's pushes to a local receiver).
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use integration_tests::{python::*, services::python_env, *};

const ID_DOCKER: &str = "d0c4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4";
const ID_CRI: &str = "c41e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e";
const ID_CRIO: &str = "c410e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4";
const ID_PODMAN: &str = "90d3a5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4";
const POD: &str = "7c1b2a3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// A cgroup tree made for one test under a hierarchy's root, removed (leaves first) on drop,
/// after the processes in it are gone.
struct TestCgroups {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl TestCgroups {
    /// The cgroup v2 hierarchy (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
    /// host) and a v1 one (`pids`), whichever this machine has.
    fn new(v2: bool) -> Self {
        let candidates: &[&str] =
            if v2 { &["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] } else { &["/sys/fs/cgroup/pids"] };
        let marker = if v2 { "cgroup.controllers" } else { "tasks" };
        let hierarchy = candidates
            .iter()
            .map(Path::new)
            .find(|p| p.join(marker).exists())
            .unwrap_or_else(|| panic!("no cgroup {} hierarchy mounted", if v2 { "v2" } else { "v1 pids" }));
        let root = hierarchy.join(format!("pyebpf-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
        TestCgroups { made: vec![root.clone()], root }
    }

    /// Makes `path` (relative, e.g. `system.slice/docker-ID.scope`) and moves `pid` into it;
    /// returns the cgroup path as /proc/PID/cgroup shows it.
    fn enter(&mut self, path: &str, pid: u32) -> String {
        let mut dir = self.root.clone();
        for component in path.split('/') {
            dir = dir.join(component);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                self.made.push(dir.clone());
            }
        }
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", dir.display()));
        let shown = format!("/{}/{path}", self.root.file_name().unwrap().to_string_lossy());
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(text.lines().any(|l| l.ends_with(&shown)), "{pid} not in {shown}: {text}");
        shown
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            // A killed process leaves its cgroup once reaped; give it a moment.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A Python process burning CPU in `spin()`.
fn spinner() -> KillOnDrop {
    let interp = host_interpreter();
    let code = "def spin():\n    x = 0\n    while True:\n        x += 1\nspin()\n";
    KillOnDrop(interp.command().args(["-c", code]).spawn().unwrap())
}

fn container_of(profile: &Value, pid: u32) -> Value {
    process(profile, pid).unwrap_or_else(|| panic!("pid {pid} not in the profile"))["container"].clone()
}

#[test]
fn processes_carry_their_container_and_pod_from_cgroup_v2_names() {
    let mut cgroups = TestCgroups::new(true);
    let uid = POD.replace('-', "_");
    let cases = [
        (format!("system.slice/docker-{ID_DOCKER}.scope"), Some(ID_DOCKER), Some("docker"), None),
        (
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID_CRI}.scope"
            ),
            Some(ID_CRI),
            Some("containerd"),
            Some(POD),
        ),
        (
            format!("kubepods.slice/kubepods-pod{uid}.slice/crio-{ID_CRIO}.scope"),
            Some(ID_CRIO),
            Some("cri-o"),
            Some(POD),
        ),
        (format!("machine.slice/libpod-{ID_PODMAN}.scope/container"), Some(ID_PODMAN), Some("podman"), None),
        ("user.slice/session-1.scope".to_string(), None, None, None),
    ];
    let procs: Vec<KillOnDrop> = cases.iter().map(|_| spinner()).collect();
    let paths: Vec<String> = cases.iter().zip(&procs).map(|((path, ..), p)| cgroups.enter(path, p.pid())).collect();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let mut cmd = pyebpf();
    cmd.args(["profile", "-d", "2", "--no-off-cpu", "-o"]).arg(&json);
    for p in &procs {
        cmd.args(["--pid", &p.pid().to_string()]);
    }
    let out = run(&mut cmd, Duration::from_secs(90));
    assert_success(&out);
    let profile = read_json(&json);
    let summary = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for ((_, id, runtime, pod), (p, path)) in cases.iter().zip(procs.iter().zip(&paths)) {
        let c = container_of(&profile, p.pid());
        assert_eq!(c["cgroup"], path.as_str(), "{c}");
        assert_eq!(c["id"].as_str(), *id, "{c}");
        assert_eq!(c["runtime"].as_str(), *runtime, "{c}");
        assert_eq!(c["pod_uid"].as_str(), *pod, "{c}");
        if let Some(id) = id {
            let line = format!("container {} ({})", &id[..12], runtime.unwrap());
            assert!(summary.contains(&line), "summary lacks {line:?}:\n{summary}");
        }
    }
    assert!(summary.contains(&format!("pod {POD}")), "{summary}");
}

#[test]
fn cgroup_v1_docker_names_are_read_too() {
    let mut cgroups = TestCgroups::new(false);
    let p = spinner();
    let path = cgroups.enter(&format!("docker/{ID_DOCKER}"), p.pid());
    let profile = profile_json(|cmd, json| {
        cmd.args(["profile", "--pid", &p.pid().to_string(), "-d", "1", "--no-off-cpu", "-o"]).arg(json);
    });
    let c = container_of(&profile, p.pid());
    assert_eq!(
        (c["id"].as_str(), c["runtime"].as_str(), c["cgroup"].as_str()),
        (Some(ID_DOCKER), Some("docker"), Some(path.as_str())),
        "{c}"
    );
}

#[test]
fn container_targets_select_by_id_prefix_and_follow_new_processes() {
    let mut cgroups = TestCgroups::new(true);
    let (inside, other, outside) = (spinner(), spinner(), spinner());
    cgroups.enter(&format!("system.slice/docker-{ID_DOCKER}.scope"), inside.pid());
    cgroups.enter(&format!("machine.slice/libpod-{ID_PODMAN}.scope"), other.pid());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let mut cmd = pyebpf();
    cmd.args(["profile", "--container", &ID_DOCKER[..6], "-d", "3", "-o"]).arg(&json);
    let child = spawn_sampling(&mut cmd);
    // A process that enters the container after profiling began is followed.
    let late = spinner();
    cgroups.enter(&format!("system.slice/docker-{ID_DOCKER}.scope"), late.pid());

    let out = wait_output(child, Duration::from_secs(90));
    assert_success(&out);
    let profile = read_json(&json);
    let pids: Vec<u64> = profile["processes"].as_array().unwrap().iter().filter_map(|p| p["pid"].as_u64()).collect();
    assert!(pids.contains(&(inside.pid() as u64)), "{pids:?}");
    assert!(
        pids.contains(&(late.pid() as u64)),
        "the late process {} is not followed: {pids:?}\n{}",
        late.pid(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pids.contains(&(other.pid() as u64)) && !pids.contains(&(outside.pid() as u64)), "{pids:?}");
    let p = process(&profile, inside.pid()).unwrap();
    assert!(p["samples"].as_u64().unwrap() > 20 && p["python_version"].is_string(), "{}", p["samples"]);

    // No such container, and an ambiguous prefix (both ids start with a digit... and `c41`
    // prefixes two of them): one line each, bad-target status.
    for (prefix, says) in [("ffff", "no process in a container whose id starts with"), ("", "empty")] {
        let out = run(pyebpf().args(["profile", "--container", prefix, "-d", "1"]), Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{prefix}: {:?} {stderr}", out.status);
    }
    let (a, b) = (spinner(), spinner());
    cgroups.enter(&format!("system.slice/cri-containerd-{ID_CRI}.scope"), a.pid());
    cgroups.enter(&format!("system.slice/crio-{ID_CRIO}.scope"), b.pid());
    let out = run(pyebpf().args(["profile", "--container", "c41", "-d", "1"]), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("matches more than one container"), "{stderr}");
}

/// Decodes OTLP requests with the official bindings; one JSON value per file.
fn decode_otlp(files: &[PathBuf]) -> Vec<Value> {
    let env = python_env();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/otlp_decode.py");
    let out = Command::new(&env.python).arg(script).args(files).output().expect("run otlp_decode.py");
    assert!(out.status.success(), "the official bindings cannot decode it: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

fn profile_of<'a>(decoded: &'a Value, kind: &str) -> &'a Value {
    decoded["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} profile"))
}

#[test]
fn otlp_files_hold_the_same_samples_values_frames_and_attributes_as_the_profile() {
    let mut cgroups = TestCgroups::new(true);
    let interp = host_interpreter();
    let dir = tempfile::tempdir().unwrap();
    let (json, otlp) = (dir.path().join("p.json"), dir.path().join("p.otlp"));
    // offcpu.py: computing, sleeping, network, lock and disk waits in named threads.
    let child = KillOnDrop(interp.command().arg(interp.workload("offcpu.py")).arg("30").spawn().unwrap());
    cgroups.enter(&format!("system.slice/docker-{ID_DOCKER}.scope"), child.pid());
    std::thread::sleep(Duration::from_millis(500));
    let mut cmd = pyebpf();
    cmd.args(["profile", "--pid", &child.pid().to_string(), "-d", "3", "-o"]).arg(&json).arg("-o").arg(&otlp);
    assert_success(&run(&mut cmd, Duration::from_secs(90)));
    let profile = read_json(&json);
    let decoded = &decode_otlp(std::slice::from_ref(&otlp))[0];
    assert_eq!(decoded["scope"], "pyebpf");
    assert!(decoded["resource"]["host.name"].is_string(), "{}", decoded["resource"]);
    let p = process(&profile, child.pid()).unwrap();
    let stacks = p["stacks"].as_array().unwrap();
    // Values: the same totals as the profile's stacks (what pprof carries too).
    let wall: u64 = stacks.iter().map(|s| s["weight_ns"].as_u64().unwrap()).sum();
    assert_eq!(profile_of(decoded, "wall")["total"].as_u64(), Some(wall));
    let samples: u64 = stacks.iter().map(|s| s["samples"].as_u64().unwrap()).sum();
    assert_eq!(profile_of(decoded, "samples")["total"].as_u64(), Some(samples));
    let period = 1_000_000_000 / profile["frequency_hz"].as_u64().unwrap();
    // CPU: each on-CPU stack's share of its thread's exact on-CPU time, as in pprof.
    let cpu: u64 = stacks.iter().filter(|s| s["category"] == "cpu").map(|s| s["weight_ns"].as_u64().unwrap()).sum();
    assert_eq!(profile_of(decoded, "cpu")["total"].as_u64(), Some(cpu));
    for category in ["net", "sleep", "lock", "disk"] {
        let ns: u64 =
            stacks.iter().filter(|s| s["category"] == category).map(|s| s["weight_ns"].as_u64().unwrap()).sum();
        assert!(ns > 0, "no {category} time in the workload");
        assert_eq!(profile_of(decoded, category)["total"].as_u64(), Some(ns), "{category}");
    }
    let cpu_profile = profile_of(decoded, "cpu");
    assert_eq!((cpu_profile["period_type"].as_str(), cpu_profile["period"].as_u64()), (Some("cpu"), Some(period)));
    // Frames and attributes: the net wait of client_loop, with its file and line, its
    // thread, syscall, target and container.
    let net = profile_of(decoded, "net")["samples"].as_array().unwrap();
    let wait = net
        .iter()
        .find(|s| s["frames"].as_array().unwrap().iter().any(|f| f["function"] == "client_loop"))
        .unwrap_or_else(|| panic!("no net sample in client_loop"));
    let frame = wait["frames"].as_array().unwrap().iter().find(|f| f["function"] == "client_loop").unwrap();
    assert!(frame["file"].as_str().unwrap().ends_with("offcpu.py") && frame["line"].as_i64().unwrap() > 0, "{frame}");
    assert!(frame["first_line"].as_i64().unwrap() > 0, "{frame}");
    assert!(wait["frames"][0]["function"].as_str().unwrap().starts_with("[net] "), "leaf first: {}", wait["frames"][0]);
    let a = &wait["attributes"];
    assert_eq!(a["process.pid"].as_u64(), Some(child.pid() as u64), "{a}");
    assert_eq!(a["thread.name"], "net-client", "{a}");
    assert_eq!(a["pyebpf.category"], "net", "{a}");
    assert!(
        a["pyebpf.syscall"].is_string() && a["pyebpf.target"].as_str().unwrap().starts_with("tcp 127.0.0.1:"),
        "{a}"
    );
    assert_eq!(
        (a["container.id"].as_str(), a["container.runtime.name"].as_str()),
        (Some(ID_DOCKER), Some("docker")),
        "{a}"
    );
    assert!(a["thread.id"].as_u64().is_some(), "{a}");
}

/// (path, content type, body) of each POST a receiver got.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A local OTLP/HTTP receiver: records each POST, answers 200 with an empty
/// `ExportProfilesServiceResponse`.
fn otlp_receiver() -> (u16, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let record = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let (mut length, mut content_type) = (0usize, String::new());
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap_or((&header, ""));
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_string(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
            record.lock().unwrap().push((path, content_type, body));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        }
    });
    (port, got)
}

#[test]
fn daemon_sends_each_window_to_an_otlp_collector() {
    let (port, got) = otlp_receiver();
    let child = spinner();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = pyebpf();
    cmd.args(["daemon", "--pid", &child.pid().to_string(), "--listen", &listen, "--window", "1s", "-d", "4"])
        .args(["--otlp", &format!("http://127.0.0.1:{port}/")]);
    let out = run(&mut cmd, Duration::from_secs(90));
    assert_success(&out);
    let requests = got.lock().unwrap().clone();
    assert!(requests.len() >= 2, "{} windows sent", requests.len());
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, (path, content_type, body)) in requests.iter().enumerate() {
        assert_eq!((path.as_str(), content_type.as_str()), ("/v1development/profiles", "application/x-protobuf"));
        let file = dir.path().join(format!("{i}.otlp"));
        std::fs::write(&file, body).unwrap();
        files.push(file);
    }
    let decoded = decode_otlp(&files);
    let spin_samples: u64 = decoded
        .iter()
        .flat_map(|d| profile_of(d, "cpu")["samples"].as_array().unwrap().clone())
        .filter(|s| s["attributes"]["process.pid"].as_u64() == Some(child.pid() as u64))
        .filter(|s| s["frames"].as_array().unwrap().iter().any(|f| f["function"] == "spin"))
        .count() as u64;
    assert!(spin_samples >= 1, "no cpu sample in spin() among {} windows", decoded.len());
}
