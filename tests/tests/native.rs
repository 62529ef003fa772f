//! Native stacks from DWARF CFI (`--native`), end to end: code built without frame pointers,
//! a C extension called from Python and calling back into it (mixed stacks, every CPython
//! here), Rust, a stripped binary, code without CFI, and off-CPU stacks of a blocked C call.
use std::{process::Command, time::Duration};

use integration_tests::{python::*, *};

/// Built like most distributions' code: optimized, no frame pointers.
const NO_FP: &[&str] = &["-O2", "-fomit-frame-pointer"];

/// main → alpha_gate → beta_gate → gamma_spin, where gamma_spin is a leaf with no frame and
/// beta_gate's frame is set up without rbp: frame pointers lose beta_gate (the issue's case).
const GATES_C: &str = r#"
#include <stdlib.h>
#include <time.h>
static volatile unsigned long sink;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
__attribute__((noinline)) void gamma_spin(void) { for (unsigned long i = 0; i < 2000000UL; i++) sink += i; }
__attribute__((noinline)) void beta_gate(int n) { for (int i = 0; i < n; i++) gamma_spin(); sink += n; }
__attribute__((noinline)) void alpha_gate(int n) { beta_gate(n); sink++; }
int main(int argc, char **argv) {
    double end = now() + (argc > 1 ? atof(argv[1]) : 3.0);
    while (now() < end) alpha_gate(3);
    return 0;
}
"#;

/// The frames of a process's on-CPU stacks (process and thread frames are not in `frames`),
/// with their sample counts.
fn cpu_stacks(p: &Value) -> Vec<(Vec<String>, u64)> {
    p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["category"] == "cpu")
        .map(|s| {
            let frames = s["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
            (frames, s["samples"].as_u64().unwrap())
        })
        .collect()
}

/// A frame's function: a Python frame's text without its place, a native symbol as is.
fn function(frame: &str) -> &str {
    frame.split(" (").next().unwrap_or(frame)
}

/// Share of on-CPU samples whose stack ends (leaf last) with frames whose functions are
/// `tail`, exactly.
fn share_ending_with(p: &Value, tail: &[&str]) -> (f64, u64) {
    let stacks = cpu_stacks(p);
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let matching: u64 = stacks
        .iter()
        .filter(|(f, _)| {
            f.len() >= tail.len() && f[f.len() - tail.len()..].iter().map(|x| function(x)).eq(tail.iter().copied())
        })
        .map(|(_, n)| n)
        .sum();
    (matching as f64 / total.max(1) as f64, total)
}

fn profile_pid(pid: u32, extra: &[&str]) -> Value {
    profile_json(|cmd, json| {
        cmd.args(["profile", "--native", "--no-off-cpu", "-F", "199", "-d", "3", "--pid", &pid.to_string()])
            .args(extra)
            .arg("-o")
            .arg(json);
    })
}

fn describe(p: &Value) -> String {
    let mut stacks = cpu_stacks(p);
    stacks.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    stacks.iter().take(6).map(|(f, n)| format!("  {n}: {}", f.join(";"))).collect::<Vec<_>>().join("\n")
}

#[test]
fn frameless_leaves_keep_their_callers() {
    let bin = c_program_with("gates", GATES_C, NO_FP);
    let gates = KillOnDrop(Command::new(&bin).arg("60").spawn().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let profile = profile_pid(gates.pid(), &[]);
    let p = process(&profile, gates.pid()).expect("gates profiled");
    let chain =
        ["_start", "__libc_start_main_impl", "__libc_start_call_main", "main", "alpha_gate", "beta_gate", "gamma_spin"];
    let (share, total) = share_ending_with(p, &chain[3..]);
    assert!(total > 100, "{total} samples");
    assert!(share >= 0.95, "exact chain in {:.1}% of {total} samples:\n{}", share * 100.0, describe(p));
    // Unwound to the entry point, with nothing made up below it.
    let (whole, _) = share_ending_with(p, &chain);
    let (libc_renamed, _) = share_ending_with(
        p,
        &["_start", "__libc_start_main", "__libc_start_call_main", "main", "alpha_gate", "beta_gate", "gamma_spin"],
    );
    assert!(
        whole + libc_renamed >= 0.95,
        "complete to _start in {:.1}%:\n{}",
        (whole + libc_renamed) * 100.0,
        describe(p)
    );
}

#[test]
fn stripped_binaries_show_module_offsets_and_still_unwind() {
    let bin = c_program_with("gates", GATES_C, NO_FP);
    let stripped = bin.with_file_name("gates-stripped");
    if !stripped.exists() {
        let tmp = bin.with_file_name(format!("gates-stripped.{}", std::process::id()));
        assert!(Command::new("strip").arg("-o").arg(&tmp).arg(&bin).status().unwrap().success());
        std::fs::rename(&tmp, &stripped).unwrap();
    }
    let gates = KillOnDrop(Command::new(&stripped).arg("60").spawn().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let profile = profile_pid(gates.pid(), &[]);
    let p = process(&profile, gates.pid()).expect("profiled");
    let stacks = cpu_stacks(p);
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    // libc's start-up, then main, alpha_gate, beta_gate, gamma_spin as module+offset.
    let unknown = |f: &str| f.starts_with("[unknown] (gates-stripped+0x") && f.ends_with(')');
    let good: u64 = stacks
        .iter()
        .filter(|(f, _)| {
            f.len() >= 6
                && f[f.len() - 4..].iter().all(|x| unknown(x))
                && function(&f[f.len() - 5]).starts_with("__libc_start_call_main")
                && !f.iter().any(|x| x.starts_with("[unwind stopped"))
        })
        .map(|(_, n)| n)
        .sum();
    assert!(good as f64 >= 0.9 * total as f64, "{good}/{total} complete stripped stacks:\n{}", describe(p));
    // Every sample of the hot loop is at the same place in gamma_spin: few distinct offsets.
    let leaves: std::collections::HashSet<&str> =
        stacks.iter().filter_map(|(f, _)| f.last().map(String::as_str)).collect();
    assert!(leaves.iter().all(|l| unknown(l) || !l.contains("gates-stripped")), "{leaves:?}");
}

/// Calls a function through a trampoline in anonymous executable memory that keeps no frame
/// pointer (as a JIT or generated trampoline might): the walk cannot go past it.
const JIT_C: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
static volatile unsigned long sink;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
__attribute__((noinline)) void jitted_callee(void) { for (unsigned long i = 0; i < 2000000UL; i++) sink += i; }
int main(int argc, char **argv) {
    /* push %rbp; xor %ebp,%ebp; call *%rdi; pop %rbp; ret */
    static const unsigned char code[] = {0x55, 0x31, 0xed, 0xff, 0xd7, 0x5d, 0xc3};
    void *page = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memcpy(page, code, sizeof code);
    void (*tramp)(void (*)(void)) = (void (*)(void (*)(void)))page;
    double end = now() + (argc > 1 ? atof(argv[1]) : 3.0);
    while (now() < end) tramp(jitted_callee);
    return 0;
}
"#;

#[test]
fn code_without_unwind_info_ends_the_stack_with_a_marker() {
    let bin = c_program_with("jit", JIT_C, NO_FP);
    let jit = KillOnDrop(Command::new(&bin).arg("60").spawn().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let profile = profile_pid(jit.pid(), &[]);
    let p = process(&profile, jit.pid()).expect("profiled");
    let stacks = cpu_stacks(p);
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    // Root first: the marker, the trampoline (no symbol, no file), the callee. Nothing made up.
    let clean: u64 = stacks
        .iter()
        .filter(|(f, _)| f == &["[unwind stopped: no unwind info]", "[unknown]", "jitted_callee"])
        .map(|(_, n)| n)
        .sum();
    assert!(clean as f64 >= 0.9 * total as f64, "{clean}/{total}:\n{}", describe(p));
}

#[test]
fn rust_binaries_unwind_through_their_own_cfi() {
    let dir = target_dir().join("tmp/rust-programs");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("rustspin.rs");
    let bin = dir.join("rustspin");
    let code = r#"
use std::hint::black_box;
#[inline(never)] fn leaf_rs(n: u64) -> u64 { let mut x = 0u64; for i in 0..n { x = black_box(x.wrapping_mul(31).wrapping_add(i)); } x }
#[inline(never)] fn middle_rs(n: u64) -> u64 { black_box(leaf_rs(n)) + 1 }
#[inline(never)] fn outer_rs(n: u64) -> u64 { black_box(middle_rs(n)) + 1 }
fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    let mut s = 0;
    while std::time::Instant::now() < end { s += outer_rs(2_000_000); }
    black_box(s);
}
"#;
    if std::fs::read_to_string(&src).ok().as_deref() != Some(code) || !bin.exists() {
        std::fs::write(&src, code).unwrap();
        let status =
            Command::new("rustc").args(["-O", "-C", "debuginfo=0", "-o"]).arg(&bin).arg(&src).status().unwrap();
        assert!(status.success(), "rustc failed");
    }
    let spin = KillOnDrop(Command::new(&bin).arg("60").spawn().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let profile = profile_pid(spin.pid(), &[]);
    let p = process(&profile, spin.pid()).expect("profiled");
    let stacks = cpu_stacks(p);
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let good: u64 = stacks
        .iter()
        .filter(|(f, _)| {
            let n = f.len();
            n >= 4
                && f[n - 1].ends_with("leaf_rs")
                && f[n - 2].ends_with("middle_rs")
                && f[n - 3].ends_with("outer_rs")
                && f[n - 4].ends_with("rustspin::main")
                && function(&f[0]) == "_start"
        })
        .map(|(_, n)| n)
        .sum();
    assert!(good as f64 >= 0.9 * total as f64, "{good}/{total}:\n{}", describe(p));
}

/// A C call that blocks: main → wait_outer → wait_inner → nanosleep, no frame pointers.
const BLOCK_C: &str = r#"
#include <stdlib.h>
#include <time.h>
static volatile unsigned long sink;
__attribute__((noinline)) void wait_inner(void) { struct timespec t = {0, 20000000}; nanosleep(&t, 0); sink++; }
__attribute__((noinline)) void wait_outer(void) { wait_inner(); sink++; }
int main(int argc, char **argv) { int n = argc > 1 ? atoi(argv[1]) : 100; for (int i = 0; i < n; i++) wait_outer(); return 0; }
"#;

#[test]
fn off_cpu_stacks_of_a_blocked_c_call_are_complete() {
    let bin = c_program_with("blockwait", BLOCK_C, NO_FP);
    let child = KillOnDrop(Command::new(&bin).arg("3000").spawn().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let profile = profile_json(|cmd, json| {
        cmd.args(["profile", "--native", "-d", "3", "--pid", &child.pid().to_string(), "-o"]).arg(json);
    });
    let p = process(&profile, child.pid()).expect("profiled");
    let sleeping: Vec<&Value> = p["stacks"].as_array().unwrap().iter().filter(|s| s["category"] == "sleep").collect();
    let weight = |s: &&Value| s["weight_ns"].as_u64().unwrap();
    let total: u64 = sleeping.iter().map(weight).sum();
    let complete: u64 = sleeping
        .iter()
        .filter(|s| {
            let f: Vec<&str> = s["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
            f.windows(3).any(|w| w == ["main", "wait_outer", "wait_inner"])
                && f.first().is_some_and(|r| *r == "_start")
                && !f.iter().any(|x| x.starts_with("[unwind stopped"))
        })
        .map(weight)
        .sum();
    assert!(total > 1_000_000_000, "sleep time {total} ns");
    assert!(
        complete as f64 >= 0.9 * total as f64,
        "{complete}/{total} ns of sleep with the complete stack: {sleeping:?}"
    );
}

#[test]
fn c_extension_calling_back_into_python_gives_exact_mixed_stacks_on_every_interpreter() {
    let chain = [
        "outer",
        "py_call_through",
        "ext_call_through",
        "ext_middle",
        "callback",
        "py_spin",
        "ext_spin",
        "ext_spin_inner",
    ];
    for_each_interpreter("mixed stacks through a C extension", |interp| {
        // The extension goes where the interpreter's processes can see it.
        let ext = native_extension(interp);
        let script = interp.workload("native_ext.py");
        let ext_dir_seen = script.parent().unwrap().to_path_buf();
        let ext_dir = match &interp.root {
            Some(root) => root.join(ext_dir_seen.strip_prefix("/").unwrap()),
            None => ext.parent().unwrap().to_path_buf(),
        };
        if interp.root.is_some() {
            std::fs::copy(&ext, ext_dir.join(ext.file_name().unwrap())).map_err(|e| e.to_string())?;
        }
        let dir_arg = if interp.root.is_some() { ext_dir_seen } else { ext_dir };
        let mut child = interp
            .command()
            .arg(&script)
            .arg("60")
            .arg(&dir_arg)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line)
            .map_err(|e| e.to_string())?;
        let child = KillOnDrop(child);
        if line.trim() != "ready" {
            return Err(format!("workload did not start: {line:?}"));
        }
        let profile = profile_pid(child.pid(), &[]);
        let p = process(&profile, child.pid()).ok_or("not profiled")?;
        let (share, total) = share_ending_with(p, &chain);
        if total < 40 || share < 0.95 {
            return Err(format!("exact chain in {:.1}% of {total} samples:\n{}", share * 100.0, describe(p)));
        }
        // With the interpreter's frames, the eval loop's callers show between the Python frames.
        Ok(())
    });
}
