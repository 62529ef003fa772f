//! Harness shared by the integration tests: finds the `pyebpf` binary built by `cargo xtask
//! test`, runs it, builds small native workloads, and reads its outputs.
//!
//! These tests load real BPF programs and profile real processes, so they need root. They fail
//! (not skip) without it: a skipped profiler test proves nothing.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

pub use serde_json::Value;

pub mod consumers;
pub mod python;
pub mod sched;
pub mod sched_trace;
pub mod services;

/// The pyebpf binary: `$PYEBPF_BIN` (set by `cargo xtask test`), else target/release/pyebpf.
pub fn pyebpf_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::env::var_os("PYEBPF_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/pyebpf"));
        assert!(bin.exists(), "{} not found: run the tests with `cargo xtask test`", bin.display());
        bin
    })
    .clone()
}

pub fn require_root() {
    assert_eq!(
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() },
        0,
        "integration tests load BPF programs: run them as root (`cargo xtask test`)"
    );
}

pub fn pyebpf() -> Command {
    require_root();
    Command::new(pyebpf_bin())
}

/// Starts a command with its output captured, for tests that signal or wait on it themselves.
pub fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start pyebpf")
}

/// What `pyebpf profile` prints on stderr once it samples.
pub const SAMPLING_LINE: &str = "pyebpf: sampling at ";

/// Starts pyebpf and waits until it says it is sampling (loading takes a while on a busy
/// machine: fixed sleeps make tests flaky). Its further stderr is drained and dropped.
pub fn spawn_sampling(cmd: &mut Command) -> Child {
    use std::io::BufRead;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start pyebpf");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with(SAMPLING_LINE) {
                let _ = tx.send(Ok(()));
            } else if seen.len() < 10_000 {
                seen.push_str(&line);
                seen.push('\n');
            }
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(())) => child,
        Ok(Err(stderr)) => {
            let _ = child.kill();
            panic!("pyebpf ended before sampling: {stderr}");
        }
        Err(_) => {
            let _ = child.kill();
            panic!("pyebpf did not start sampling within 60 s");
        }
    }
}

/// Waits until pyebpf, writing its stderr to `stderr` (a file the test reads afterwards), says
/// it is sampling; panics with what it printed if it does not within 60 s.
pub fn wait_sampling_in(stderr: &Path, child: &mut Child) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(stderr).unwrap_or_default();
        if text.lines().any(|l| l.starts_with(SAMPLING_LINE)) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("pyebpf ended ({status}) before sampling: {text}");
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("pyebpf did not start sampling within 60 s: {text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs pyebpf to completion, with a generous timeout so a hang fails instead of blocking CI.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start pyebpf");
    wait_output(child, timeout)
}

/// Waits for a child's output, killing it (and failing the test) after `timeout`. The pipes are
/// read while it runs: a child writing more than a pipe holds must not block on us.
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "timed out after {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&stdout.join().unwrap()),
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// Runs pyebpf with the arguments `configure` gives it (the JSON output path is passed in, for
/// `-o` before any `--`), asserts it succeeded, and returns the JSON profile.
pub fn profile_json(configure: impl FnOnce(&mut Command, &Path)) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let mut cmd = pyebpf();
    configure(&mut cmd, &json);
    assert_success(&run(&mut cmd, Duration::from_secs(90)));
    read_json(&json)
}

/// Asserts success and no panic, showing the output otherwise.
pub fn assert_success(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "pyebpf failed: {:?}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// The process with `pid` in a JSON profile.
pub fn process(profile: &Value, pid: u32) -> Option<&Value> {
    profile["processes"].as_array()?.iter().find(|p| p["pid"] == pid)
}

/// A profiled process's thread by its Python name.
pub fn python_thread<'a>(process: &'a Value, name: &str) -> Result<&'a Value, String> {
    process["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["python_name"] == name)
        .ok_or_else(|| format!("no thread named {name}"))
}

/// Whether a profiled process has an off-CPU stack of `category` whose target starts with
/// `target` and whose Python frames include `function`.
pub fn has_wait_stack(process: &Value, category: &str, function: &str, target: &str) -> bool {
    process["stacks"].as_array().unwrap().iter().any(|s| {
        s["category"] == category
            && s["target"].as_str().is_some_and(|t| t.starts_with(target))
            && s["python_frames"].as_array().unwrap().iter().any(|f| f["function"] == function)
    })
}

/// The workspace's target directory (`$CARGO_TARGET_DIR`, else target/), where built and
/// downloaded test helpers are cached.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// A C program compiled with frame pointers (so user stacks unwind), built once into
/// target/tmp and keyed by a hash of its source.
pub fn c_program(name: &str, source: &str) -> PathBuf {
    c_program_with(name, source, &["-O0", "-g", "-fno-omit-frame-pointer", "-pthread"])
}

/// A C program (or with `-shared`, a library) compiled with `flags`, built once into
/// target/tmp and keyed by a hash of its source and flags.
pub fn c_program_with(name: &str, source: &str, flags: &[&str]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut h);
    flags.hash(&mut h);
    // One directory per source hash, so the binary keeps its own name (tests check `comm`).
    let dir = target_dir().join(format!("tmp/c-programs/{:016x}", h.finish()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join(name);
    if !bin.exists() {
        // Unique scratch names: tests in several processes may build the same program at once.
        let unique = format!("{name}-{}-{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], "");
        let src = dir.join(format!("{unique}.c"));
        let tmp = dir.join(format!("{unique}.bin"));
        std::fs::write(&src, source).unwrap();
        let status = Command::new("cc").args(flags).arg("-o").arg(&tmp).arg(&src).status().expect("run cc");
        let _ = std::fs::remove_file(&src);
        assert!(status.success(), "cc failed for {name}");
        std::fs::rename(&tmp, &bin).unwrap();
    }
    bin
}

/// `spin SECONDS [THREADS]`: burns CPU in main → outer → inner_spin (and in extra threads:
/// thread_main → outer → inner_spin) for SECONDS, then exits.
pub const SPIN_C: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
static volatile unsigned long sink;
static double deadline;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
__attribute__((noinline)) void inner_spin(void) { for (unsigned long i = 0; i < 2000000UL; i++) sink += i; }
__attribute__((noinline)) void outer(void) { while (now() < deadline) inner_spin(); }
__attribute__((noinline)) void *thread_main(void *arg) { (void)arg; outer(); return 0; }
int main(int argc, char **argv) {
    deadline = now() + (argc > 1 ? atof(argv[1]) : 3.0);
    int threads = argc > 2 ? atoi(argv[2]) : 0;
    pthread_t t[64];
    for (int i = 0; i < threads && i < 64; i++) pthread_create(&t[i], 0, thread_main, 0);
    outer();
    for (int i = 0; i < threads && i < 64; i++) pthread_join(t[i], 0);
    return 0;
}
"#;

pub fn spin_program() -> PathBuf {
    c_program("spin", SPIN_C)
}

/// Starts `spin` for `secs` seconds with `threads` extra threads.
pub fn start_spin(secs: f64, threads: u32) -> Child {
    Command::new(spin_program()).args([secs.to_string(), threads.to_string()]).spawn().expect("start spin")
}

/// Kills a child on drop, so a failing test does not leave workloads running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// Fraction of a process's on-CPU samples whose stack holds `chain` as consecutive frames.
pub fn share_with_chain(process: &Value, chain: &[&str]) -> f64 {
    let mut total = 0u64;
    let mut matching = 0u64;
    for stack in process["stacks"].as_array().unwrap().iter().filter(|s| s["category"] == "cpu") {
        let samples = stack["samples"].as_u64().unwrap();
        let frames: Vec<&str> = stack["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        total += samples;
        if frames.windows(chain.len()).any(|w| w == chain) {
            matching += samples;
        }
    }
    if total == 0 { 0.0 } else { matching as f64 / total as f64 }
}

/// A pid that no process has (for error tests).
pub fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    (2..max).rev().find(|p| !Path::new(&format!("/proc/{p}")).exists()).unwrap()
}

/// A TCP port on loopback that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` from a server on loopback: (status, body). HTTP/1.0, so the body is not chunked
/// and ends with the connection. Errors (connection refused...) are returned, not panicked on,
/// for polling a server that is starting.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let end =
        response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, response[end + 4..].to_vec()))
}

/// Resident memory of a process, in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Resident anonymous memory of a process, in KiB (RssAnon: its own heap and stacks, without
/// the pages of files it maps).
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Runs `check` until it returns Some or `timeout` passes; the last error is in the panic.
pub fn poll<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > timeout => panic!("{what}: not within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Makes sure a command-line tool is installed, installing Debian's `package` when it is not
/// (the tests run as root; a missing tool fails the test rather than skipping it).
pub fn require_tool(tool: &str, package: &str) {
    let found =
        |tool: &str| ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().any(|dir| Path::new(dir).join(tool).exists());
    if found(tool) {
        return;
    }
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _lock = APT.lock().unwrap();
    eprintln!("installing {package} (for {tool})");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .unwrap_or_else(|e| panic!("{tool} is missing and apt-get cannot run: {e}"))
    };
    apt(&["update", "-qq"]);
    let status = apt(&["install", "-y", "-qq", "--no-install-recommends", package]);
    assert!(status.success() && found(tool), "{tool} is missing and `apt-get install {package}` failed");
}

/// IDs of the BPF objects a process holds open, from its /proc/PID/fdinfo: (programs, links).
pub fn bpf_ids_held_by(pid: u32) -> (Vec<u64>, Vec<u64>) {
    let (mut progs, mut links) = (Vec::new(), Vec::new());
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return (progs, links) };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else { continue };
        for line in info.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(Ok(id))) = (parts.next(), parts.next().map(str::parse::<u64>)) else { continue };
            match key {
                "prog_id:" => progs.push(id),
                "link_id:" => links.push(id),
                _ => {}
            }
        }
    }
    progs.sort();
    progs.dedup();
    links.sort();
    links.dedup();
    (progs, links)
}

/// `bpftool prog show` / `bpftool link show` as JSON arrays (bpftool from Debian's package).
pub fn bpftool_list(what: &str) -> Vec<Value> {
    require_tool("bpftool", "bpftool");
    let out = Command::new("bpftool").args([what, "show", "-j"]).output().expect("run bpftool");
    assert!(out.status.success(), "bpftool {what} show: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_else(|| panic!("bpftool {what} show -j: not a JSON array"))
}

/// Checks every output file in `dir` the way a reader would: JSON parses as a profile, a flame
/// graph is a whole SVG document, folded stacks are `frames count` lines. Fails on anything else
/// in the directory (a temporary or partial file left behind).
pub fn check_outputs_complete(dir: &Path, expected: &[&str]) -> Result<(), String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    if names != want {
        return Err(format!("files {names:?}, expected {want:?}"));
    }
    for name in &names {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
        if name.ends_with(".json") {
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("{name}: not JSON: {e}"))?;
            if v["format"] != "pyebpf-profile" || !v["processes"].is_array() {
                return Err(format!("{name}: not a profile"));
            }
        } else if name.ends_with(".svg") {
            if !(text.starts_with("<?xml") && text.trim_end().ends_with("</svg>")) {
                return Err(format!("{name}: not a whole SVG document ({} bytes)", text.len()));
            }
        } else if name.ends_with(".folded") {
            for line in text.lines() {
                let count = line.rsplit_once(' ').and_then(|(_, n)| n.parse::<u64>().ok());
                if count.is_none() {
                    return Err(format!("{name}: bad line {line:?}"));
                }
            }
        }
    }
    Ok(())
}
