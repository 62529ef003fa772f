//! `pyebpf dump --native`: each blocked thread's native stack, walked from its saved registers
//! with the profile's CFI tables, merged with its Python frames, on every interpreter found.
//! The native code is a small C library built without frame pointers, called through ctypes:
//! C frames under Python frames, and C frames between Python frames (a callback).
use std::time::Duration;

use integration_tests::{python::*, sched::*, *};
use serde_json::Value;

/// chain_f → chain_g → chain_h, which sleeps; chain_cb_f → chain_cb_g → chain_cb_h, which
/// calls a Python callback. Calls are followed by a store so that none is a tail call.
const CHAIN_C: &str = r#"
#include <time.h>
static volatile unsigned long sink;
__attribute__((noinline)) void chain_h(int s) { struct timespec t = {s, 0}; for (;;) nanosleep(&t, 0); sink++; }
__attribute__((noinline)) void chain_g(int s) { chain_h(s); sink++; }
__attribute__((noinline)) void chain_f(int s) { chain_g(s); sink++; }
__attribute__((noinline)) void chain_cb_h(void (*cb)(void)) { cb(); sink++; }
__attribute__((noinline)) void chain_cb_g(void (*cb)(void)) { chain_cb_h(cb); sink++; }
__attribute__((noinline)) void chain_cb_f(void (*cb)(void)) { chain_cb_g(cb); sink++; }
"#;

/// The functions of a thread's `native` stack, innermost first (native frames by symbol,
/// Python frames by function name).
fn functions(t: &Value) -> Vec<String> {
    t["native"]
        .as_array()
        .map(|frames| frames.iter().map(|f| f["function"].as_str().unwrap_or("[unknown]").to_string()).collect())
        .unwrap_or_default()
}

/// `want` appears in `have` in this order (other frames may lie between).
fn in_order(have: &[String], want: &[&str]) -> bool {
    let mut it = have.iter();
    want.iter().all(|w| it.any(|h| h == w))
}

#[test]
fn dump_native_shows_c_frames_in_order_with_the_python_frames_on_every_interpreter() {
    for_each_interpreter("dump --native", |interp| {
        let lib = c_program_with("libdumpchain.so", CHAIN_C, &["-O2", "-fomit-frame-pointer", "-shared", "-fPIC"]);
        // The library goes where the interpreter's process can see it.
        let lib_seen = match &interp.root {
            Some(root) => {
                let seen = std::path::Path::new("/tmp").join(lib.file_name().unwrap());
                std::fs::copy(&lib, root.join(seen.strip_prefix("/").unwrap())).map_err(|e| e.to_string())?;
                seen
            }
            None => lib.clone(),
        };
        let target = start_ready(interp, "native_chain.py", &[lib_seen.to_str().unwrap()]);
        let pid = target.pid().to_string();
        let out = run(pyebpf().args(["dump", "--native", "--pid", &pid, "--json"]), Duration::from_secs(120));
        assert_success(&out);
        let doc: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
        let p = &doc["processes"][0];
        let thread = |name: &str| python_thread(p, name).map_err(|e| format!("{e}: {p}"));
        // C under Python: the sleep in libc, then h, g, f, then the Python caller and its
        // caller, and the walk reached the thread's start.
        let t = thread("c_sleeper")?;
        let f = functions(t);
        if !in_order(&f, &["chain_h", "chain_g", "chain_f", "call_chain", "c_sleeper"]) || !t["native_note"].is_null() {
            return Err(format!("c_sleeper: {f:?} ({})", t["native_note"]));
        }
        let leaf = &t["native"][0];
        if leaf["kind"] != "native" || !leaf["library"].as_str().is_some_and(|l| l.starts_with("libc.so")) {
            return Err(format!("c_sleeper: the leaf is not in libc: {leaf}"));
        }
        let h = t["native"].as_array().unwrap().iter().find(|f| f["function"] == "chain_h").unwrap();
        if h["kind"] != "native" || h["library"] != "libdumpchain.so" {
            return Err(format!("c_sleeper: chain_h is not a native frame of the library: {h}"));
        }
        // C between Python frames: the callback's Python frame innermost, the C chain below it,
        // the Python caller below that.
        let t = thread("cb_sleeper")?;
        let f = functions(t);
        if !in_order(&f, &["in_callback", "chain_cb_h", "chain_cb_g", "chain_cb_f", "call_with_callback", "cb_sleeper"])
        {
            return Err(format!("cb_sleeper: {f:?} ({})", t["native_note"]));
        }
        // Python frames stay where they were, and nothing is lost: every Python frame of the
        // thread is in its mixed stack.
        for name in ["c_sleeper", "cb_sleeper"] {
            let t = thread(name)?;
            let py: Vec<&Value> = t["native"].as_array().unwrap().iter().filter(|f| f["kind"] == "python").collect();
            if py.len() != t["frames"].as_array().unwrap().len() {
                return Err(format!("{name}: Python frames {py:?} against {}", t["frames"]));
            }
        }
        // The spinner on a CPU has no stable registers: said so, Python frames only. (Waiting
        // for a CPU, it is walked as a blocked thread: see the running/runnable test.)
        let t = thread("spinner")?;
        if t["state"] == "running" {
            if t["native_note"] != "running, no native stack" {
                return Err(format!("spinner: {t}"));
            }
            if t["native"].as_array().unwrap().iter().any(|f| f["kind"] != "python") {
                return Err(format!("spinner: native frames of a running thread: {t}"));
            }
        } else if t["state"] != "runnable" {
            return Err(format!("spinner: {t}"));
        }
        // The text form says the same.
        let text = run(pyebpf().args(["dump", "--native", "--pid", &pid]), Duration::from_secs(120));
        assert_success(&text);
        let text = String::from_utf8_lossy(&text.stdout);
        if !text.contains("    chain_h (libdumpchain.so)\n    chain_g (libdumpchain.so)\n")
            || !(text.contains("(running, no native stack)") || text.contains(": runnable"))
        {
            return Err(format!("text dump:\n{text}"));
        }
        Ok(())
    });
}

#[test]
fn dump_native_of_a_c_program_and_of_a_missing_pid() {
    // A process that is not Python: its native stack alone, main at the root.
    const SLEEP_C: &str = r#"
#include <time.h>
static volatile unsigned long sink;
__attribute__((noinline)) void inner_wait(void) { struct timespec t = {3600, 0}; nanosleep(&t, 0); sink++; }
__attribute__((noinline)) void outer_wait(void) { inner_wait(); sink++; }
int main(void) { outer_wait(); return 0; }
"#;
    let bin = c_program_with("dumpsleep", SLEEP_C, &["-O2", "-fomit-frame-pointer"]);
    let child = KillOnDrop(std::process::Command::new(&bin).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let out =
        run(pyebpf().args(["dump", "--native", "--json", "--pid", &child.pid().to_string()]), Duration::from_secs(60));
    assert_success(&out);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &doc["processes"][0]["threads"][0];
    let f = functions(t);
    assert!(in_order(&f, &["inner_wait", "outer_wait", "main"]), "{f:?} {t}");
    assert!(t["native_note"].is_null(), "the walk reached the root: {t}");
    // Bad targets fail as `dump` and `profile` do: one line, the target status.
    let out = run(pyebpf().args(["dump", "--native", "--pid", &unused_pid().to_string()]), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// The one thread of a dumped burner process.
fn burner_thread(doc: &Value, pid: u32) -> Result<&Value, String> {
    let p = doc["processes"].as_array().and_then(|ps| ps.iter().find(|p| p["pid"] == pid));
    p.and_then(|p| p["threads"].get(0)).ok_or_else(|| format!("burner {pid} missing from the dump: {doc}"))
}

fn runs_burn(t: &Value) -> bool {
    t["frames"].as_array().is_some_and(|f| f.iter().any(|f| f["function"] == "burn"))
}

/// Three CPU-bound processes pinned to one CPU, so that at most one runs: `dump` must say which
/// runs (`running on CPU n`) and that the others wait for that CPU (`runnable`), against the
/// scheduler's own counters. First under the ordinary scheduler, where which one runs changes
/// every few milliseconds (so each must be running or runnable on that CPU, with its Python
/// stack); then with the three at one SCHED_FIFO priority, where the first keeps the CPU and the
/// others wait for as long as that lasts, without a switch: the iterator visits threads one
/// after the other, not at one instant, and only then is the answer fixed for the whole dump.
/// Truth: a waiter's on-CPU time and switch count do not move from before the dump to after it
/// (state R all along), and the wait it reports so far is at most what its `run_delay` grows by
/// when the wait ends (the same clock: `sched_info.last_queued` to the switch-in). The dump
/// runs on another CPU; one CPU is busy for a few seconds per interpreter.
#[test]
fn dump_tells_running_from_runnable_threads_on_one_cpu_on_every_interpreter() {
    let cpus = allowed_cpus();
    let (Some(&other), Some(&cpu)) = (cpus.first(), cpus.last()) else { panic!("no CPUs allowed") };
    if cpu == other {
        eprintln!("dump running/runnable: skipped, one CPU only (it needs one for the burners, one for the dump)");
        return;
    }
    // This test and what it starts run on `other` unless moved (children inherit it).
    set_affinity(0, other).unwrap();
    for_each_interpreter("dump running/runnable", |interp| {
        let burners: Vec<KillOnDrop> = (0..3).map(|_| start_ready(interp, "burner.py", &[])).collect();
        let pids: Vec<u32> = burners.iter().map(KillOnDrop::pid).collect();
        for &pid in &pids {
            set_affinity(pid, cpu)?;
        }
        let mut dump = pyebpf();
        dump.arg("dump");
        for pid in &pids {
            dump.args(["--pid", &pid.to_string()]);
        }
        let dump_json = |extra: &[&str]| -> Result<Value, String> {
            let out = run(
                std::process::Command::new(dump.get_program()).args(dump.get_args()).args(extra).arg("--json"),
                Duration::from_secs(120),
            );
            assert_success(&out);
            serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))
        };
        // The ordinary scheduler: each on `cpu`, running or waiting for it, with its stack.
        std::thread::sleep(Duration::from_millis(200));
        let doc = dump_json(&[])?;
        for &pid in &pids {
            let t = burner_thread(&doc, pid)?;
            let ok = match t["state"].as_str() {
                Some("running") => true,
                Some("runnable") => t["category"] == "runqueue" && t["runqueue_s"].as_f64().is_some_and(|s| s >= 0.0),
                _ => false,
            };
            if !ok || t["cpu"] != cpu || !runs_burn(t) || proc_state(pid) != 'R' {
                return Err(format!("burner {pid} (proc state {}): {t}", proc_state(pid)));
            }
        }
        // One SCHED_FIFO priority: the first keeps the CPU, the others wait behind it.
        for &pid in &pids {
            set_fifo(pid, true)?;
        }
        let settle = Duration::from_millis(300);
        let (before, waiters) = poll(Duration::from_secs(20), "one burner alone on the CPU", || {
            let first: Vec<_> = pids.iter().map(|&p| schedstat(p)).collect::<Result<_, _>>()?;
            std::thread::sleep(settle);
            let second: Vec<_> = pids.iter().map(|&p| schedstat(p)).collect::<Result<_, _>>()?;
            let waiters: Vec<usize> = (0..pids.len()).filter(|&i| first[i] == second[i]).collect();
            if waiters.len() == pids.len() - 1 {
                Ok((first, waiters))
            } else {
                Err(format!("{first:?} then {second:?}"))
            }
        });
        let doc = dump_json(&["--native"])?;
        let after: Vec<_> = pids.iter().map(|&p| schedstat(p)).collect::<Result<_, _>>()?;
        let head = (0..pids.len()).find(|i| !waiters.contains(i)).unwrap();
        for &i in &waiters {
            if after[i] != before[i] {
                return Err(format!("burner {} ran during the dump: {:?} then {:?}", pids[i], before[i], after[i]));
            }
        }
        let mut reported = Vec::new();
        for (i, &pid) in pids.iter().enumerate() {
            let t = burner_thread(&doc, pid)?;
            if !runs_burn(t) || proc_state(pid) != 'R' {
                return Err(format!("burner {pid} (proc state {}): {t}", proc_state(pid)));
            }
            if i == head {
                // It may be preempted at that instant (the CPU's share for ordinary tasks).
                if !(t["state"] == "running" || t["state"] == "runnable") || t["cpu"] != cpu {
                    return Err(format!("the running burner {pid}: {t}"));
                }
                continue;
            }
            let queued = t["runqueue_s"].as_f64();
            // It has waited at least since the first of the two readings (less the run
            // queue clock's lag, at most a tick).
            let least = settle.as_secs_f64() - 0.02;
            if t["state"] != "runnable"
                || t["cpu"] != cpu
                || t["category"] != "runqueue"
                || t["preempted"] != true
                || queued.is_none_or(|s| s < least)
            {
                return Err(format!("waiting burner {pid}: {t}"));
            }
            // Off the CPU, its registers hold still: its native stack is walked, not skipped.
            let native = t["native"].as_array().map(Vec::as_slice).unwrap_or_default();
            if t["native_note"] == "running, no native stack" || !native.iter().any(|f| f["function"] == "burn") {
                return Err(format!("waiting burner {pid}: no native stack: {t}"));
            }
            reported.push((i, queued.unwrap()));
        }
        // The text form says the same.
        let text = run(&mut dump, Duration::from_secs(120));
        assert_success(&text);
        let text = String::from_utf8_lossy(&text.stdout);
        if !text.contains(&format!("runnable (preempted, waiting for CPU {cpu} for ")) {
            return Err(format!("text dump:\n{text}"));
        }
        // Let them all run: each waiter's wait ends, and its run_delay grows by all of it.
        for &pid in &pids {
            set_fifo(pid, false)?;
        }
        for (i, queued) in reported {
            let (_, delay, switches) = poll(Duration::from_secs(60), "the waiter runs", || {
                let now = schedstat(pids[i])?;
                if now.2 > before[i].2 { Ok(now) } else { Err(format!("{now:?}")) }
            });
            let grown = (delay - before[i].1) as f64 / 1e9;
            eprintln!("{}: burner {} dumped waiting {queued:.4} s; run_delay grew {grown:.4} s", interp.label, pids[i]);
            if grown < queued {
                return Err(format!(
                    "burner {}: dumped as waiting {queued:.4} s, but its run_delay grew by {grown:.4} s ({switches} switches)",
                    pids[i]
                ));
            }
        }
        Ok(())
    });
}
