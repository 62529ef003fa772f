//! Wait targets captured by the kernel at the syscall (issue 13): a file opened, written,
//! fsync'd and closed inside one request carries its path, and a connection opened and closed
//! per request carries its peer, on every CPython 3.8+ on this machine
//! (tests/workloads/per_request.py). Their descriptors are closed, and their numbers reused by
//! the next request, long before userspace could look them up in /proc.
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::{python::*, *};

/// What a run printed: the server's port, and how many fsyncs waited 1 ms or more.
struct Printed {
    port: u16,
    slow_fsyncs: u32,
}

/// Under qemu's emulation (`cargo xtask test-kernels` runs this test in its guests): 10-30
/// times slower, and loading alone takes a minute.
fn emulated() -> bool {
    std::env::var_os("PYEBPF_TEST_EMULATED").is_some()
}

/// Profiles `per_request.py SECONDS DIR` and returns its process's JSON entry and what it printed.
fn profile_requests(interp: &Interpreter, dir_inside: &Path) -> Result<(Value, Printed), String> {
    let out_dir = tempfile::tempdir().unwrap();
    let json = out_dir.path().join("p.json");
    let (seconds, rates, timeout) = if emulated() {
        ("10", ["-F", "49", "--off-cpu-stack-rate", "10"], 600)
    } else {
        ("2.5", ["-F", "99", "--off-cpu-stack-rate", "50"], 90)
    };
    let mut cmd = pyebpf();
    cmd.arg("profile")
        .args(rates)
        .arg("-o")
        .arg(&json)
        .arg("--")
        .args(interp.argv())
        .arg(interp.workload("per_request.py"))
        .arg(seconds)
        .arg(dir_inside);
    let out = run(&mut cmd, Duration::from_secs(timeout));
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let printed = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u32>().ok())
            .ok_or_else(|| format!("no {key} printed: {stdout}"))
    };
    let printed = Printed { port: printed("port ")? as u16, slow_fsyncs: printed("slow_fsyncs ")? };
    Ok((read_json(&json)["processes"][0].clone(), printed))
}

/// Off-CPU stacks of `category` in `syscall` with `function` among their Python frames:
/// (weight, target).
fn waits_in<'a>(p: &'a Value, category: &str, syscall: &str, function: &str) -> Vec<(u64, Option<&'a str>)> {
    p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["category"] == category
                && s["syscall"] == syscall
                && s["python_frames"].as_array().unwrap().iter().any(|f| f["function"] == function)
        })
        .map(|s| (s["weight_ns"].as_u64().unwrap(), s["target"].as_str()))
        .collect()
}

/// Share (percent) of the weight whose target satisfies `ok`.
fn share(waits: &[(u64, Option<&str>)], ok: impl Fn(&str) -> bool) -> f64 {
    let total: u64 = waits.iter().map(|w| w.0).sum();
    let good: u64 = waits.iter().filter(|w| w.1.is_some_and(&ok)).map(|w| w.0).sum();
    good as f64 * 100.0 / total.max(1) as f64
}

/// A directory for the requests' files: (as the interpreter sees it, as the host sees it).
fn request_dir(interp: &Interpreter) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let parent = match &interp.root {
        Some(root) => root.join("tmp"),
        None => std::env::temp_dir(),
    };
    let dir = tempfile::Builder::new().prefix("pyebpf-requests-").tempdir_in(&parent).unwrap();
    // The kernel names files by their real path.
    let host = dir.path().canonicalize().unwrap();
    let inside = match &interp.root {
        Some(root) => Path::new("/").join(host.strip_prefix(root.canonicalize().unwrap()).unwrap()),
        None => host.clone(),
    };
    (dir, inside, host)
}

#[test]
fn per_request_files_and_connections_are_named() {
    for_each_interpreter("per-request wait targets", |interp| {
        let (_dir, inside, host) = request_dir(interp);
        let (p, Printed { port, slow_fsyncs }) = profile_requests(interp, &inside)?;
        // Every request's file is its own: each fsync names the file it waited for, not the
        // one each request then holds open under the same descriptor number. (Its unlink
        // waits too, but on a path given to the call: no descriptor to name.)
        let prefix = format!("file {}/req-", host.display());
        let disk = waits_in(&p, "disk", "fsync", "file_request");
        let named = |t: &str| {
            t.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(".dat")).is_some_and(|n| n.parse::<u32>().is_ok())
        };
        let files = share(&disk, named);
        let distinct: std::collections::HashSet<&str> = disk.iter().filter_map(|w| w.1).filter(|t| named(t)).collect();
        if disk.is_empty() {
            // No fsync slept in the kernel (tmpfs, as in test-kernels' guests, does not wait for
            // a disk: a slow fsync there is one preempted, a run-queue wait): nothing to name.
            // The disk category comes from the thread's state, not from the target, so a
            // broken capture still shows as fsync stacks without their file.
            eprintln!(
                "{}: no fsync slept on {} ({slow_fsyncs} took 1 ms or more): the file check is skipped",
                interp.label,
                host.display()
            );
        } else if files < 95.0 || distinct.len() < 3 {
            return Err(format!(
                "file_request: {files:.1}% of the disk time on a request's file ({} files named): {disk:?}",
                distinct.len()
            ));
        }
        // Each connection is new, and closed before the next: each net wait names its peer.
        let peer = format!("tcp 127.0.0.1:{port}");
        let net = waits_in(&p, "net", "recvfrom", "connection_request");
        let peers = share(&net, |t| t == peer);
        if net.is_empty() || peers < 95.0 {
            return Err(format!("connection_request: {peers:.1}% of the net time on {peer}: {net:?}"));
        }
        Ok(())
    });
}
