//! `pyebpf dump --native`: each blocked thread's native stack, walked from its saved registers
//! with the profile's CFI tables, merged with its Python frames, on every interpreter found.
//! The native code is a small C library built without frame pointers, called through ctypes:
//! C frames under Python frames, and C frames between Python frames (a callback).
use std::time::Duration;

use integration_tests::{python::*, *};
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
        // The spinner has no stable registers: said so, Python frames only.
        let t = thread("spinner")?;
        if t["state"] != "running" || t["native_note"] != "running, no native stack" {
            return Err(format!("spinner: {t}"));
        }
        if t["native"].as_array().unwrap().iter().any(|f| f["kind"] != "python") {
            return Err(format!("spinner: native frames of a running thread: {t}"));
        }
        // The text form says the same.
        let text = run(pyebpf().args(["dump", "--native", "--pid", &pid]), Duration::from_secs(120));
        assert_success(&text);
        let text = String::from_utf8_lossy(&text.stdout);
        if !text.contains("    chain_h (libdumpchain.so)\n    chain_g (libdumpchain.so)\n")
            || !text.contains("(running, no native stack)")
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
