//! Thread and process life from the kernel's events (issue 13): a thread that starts, renames
//! itself and exits during a profile is reported with its final names and its exact time; a
//! process that exits mid-profile keeps its profile.
use std::time::Duration;

use integration_tests::{python::*, *};

/// The JSON lines the workload printed: its truths.
fn truths(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// `got` within `tolerance` (relative) or `floor_ns` of `want`.
fn close(got: u64, want: u64, tolerance: f64, floor_ns: u64) -> bool {
    got.abs_diff(want) as f64 <= (want as f64 * tolerance).max(floor_ns as f64)
}

#[test]
fn a_thread_that_renames_itself_and_exits_keeps_its_final_names_and_time() {
    for_each_interpreter("thread and process life", |interp| {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("p.json");
        let out = run(
            pyebpf()
                .args(["profile", "--no-summary", "-o"])
                .arg(&json)
                .arg("--")
                .args(interp.argv())
                .arg(interp.workload("thread_life.py")),
            Duration::from_secs(90),
        );
        assert_success(&out);
        let profile = read_json(&json);
        let truths = truths(&out.stdout);
        let thread = truths.iter().find(|t| t.get("thread").is_some()).ok_or("the thread printed no truth")?;
        let child = truths.iter().find(|t| t.get("child").is_some()).ok_or("the child printed no truth")?;

        let tid = thread["thread"].as_u64().unwrap();
        let processes = profile["processes"].as_array().unwrap();
        let t = processes
            .iter()
            .flat_map(|p| p["threads"].as_array().unwrap())
            .find(|t| t["tid"] == tid)
            .ok_or_else(|| format!("thread {tid} missing from the profile"))?;
        eprintln!(
            "{}: thread {tid}: name {} python_name {} cpu {} ns (truth {}), wall {} ns (truth {})",
            interp.label,
            t["name"],
            t["python_name"],
            t["totals_ns"]["cpu"],
            thread["cpu_ns"],
            t["wall_ns"],
            thread["wall_ns"]
        );
        if t["name"] != "renamed-os" {
            return Err(format!("thread {tid}: OS name {} (want its last, renamed-os)", t["name"]));
        }
        if t["python_name"] != "renamed-worker" {
            return Err(format!("thread {tid}: Python name {} (want its last, renamed-worker)", t["python_name"]));
        }
        // Its CPU time, exact from the kernel's switch times, against the thread's own count
        // (read just before its last lines: the rest of its exit comes on top).
        let (cpu, cpu_truth) = (t["totals_ns"]["cpu"].as_u64().unwrap_or(0), thread["cpu_ns"].as_u64().unwrap());
        if !close(cpu, cpu_truth, 0.1, 10_000_000) {
            return Err(format!("thread {tid}: cpu {cpu} ns, its own count {cpu_truth} ns"));
        }
        // Its wall time: from its creation (before its first line) to its exit (after its
        // last), so about what it measured, and not much more. (Once on 3.13t under a load of
        // 10, 40 ms of 1.43 s were missing from the total: not explained yet, hence 5%.)
        let (wall, wall_truth) = (t["wall_ns"].as_u64().unwrap(), thread["wall_ns"].as_u64().unwrap());
        if wall < wall_truth * 95 / 100 || wall > wall_truth + 500_000_000 {
            return Err(format!("thread {tid}: wall {wall} ns, its own {wall_truth} ns: {}", t["totals_ns"]));
        }

        // The child exited a while before the profile ended: its profile is kept.
        let pid = child["child"].as_u64().unwrap() as u32;
        let p = process(&profile, pid).ok_or_else(|| format!("child {pid} missing from the profile"))?;
        let (cpu, cpu_truth) = (p["totals_ns"]["cpu"].as_u64().unwrap_or(0), child["cpu_ns"].as_u64().unwrap());
        eprintln!("{}: child {pid}: cpu {cpu} ns (truth {cpu_truth}), {} samples", interp.label, p["samples"]);
        if !close(cpu, cpu_truth, 0.1, 10_000_000) {
            return Err(format!("child {pid}: cpu {cpu} ns, its own count {cpu_truth} ns"));
        }
        Ok(())
    });
}
