//! Host-level diagnosis: `pyebpf diff`, `pyebpf top` (driven in tmux) and `pyebpf daemon`
//! (scraped by a real Prometheus, read by `go tool pprof`), against workloads whose truth is
//! known by construction.
use std::{
    time::{Duration, Instant},
};

use integration_tests::{python::*, *};

/// Profiles `diffwork.py VARIANT` (CPU samples) into JSON.
fn profile_variant(interp: &Interpreter, variant: &str, json: &std::path::Path) {
    let mut cmd = pyebpf();
    cmd.args(["profile", "--mode", "cpu", "-F", "499", "--no-summary", "-o"])
        .arg(json)
        .arg("--")
        .arg(&interp.path)
        .arg(workload("diffwork.py"))
        .args([variant, "150"]);
    assert_success(&run(&mut cmd, Duration::from_secs(60)));
}

#[test]
fn diff_puts_the_changed_function_on_top() {
    let started = Instant::now();
    let interp = interpreters().pop().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (before, after, svg) = (dir.path().join("before.json"), dir.path().join("after.json"), dir.path().join("diff.svg"));
    profile_variant(&interp, "before", &before);
    profile_variant(&interp, "after", &after);

    let out = run(pyebpf().arg("diff").arg(&before).arg(&after).arg("-o").arg(&svg), Duration::from_secs(30));
    assert_success(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{table}");
    // The first row of the table is the function whose own time moved most: changed(), which
    // lost most of its time; steady() did the same work in both.
    let rows: Vec<&str> = table.lines().skip(2).collect();
    assert!(rows[0].ends_with(&format!("changed ({})", workload("diffwork.py").display())), "{table}");
    let delta: f64 = rows[0].split_whitespace().next().unwrap().parse().unwrap();
    assert!(delta < 0.0, "{table}");
    let steady = rows.iter().find(|r| r.contains("steady (")).expect("steady in the table");
    let steady_delta: f64 = steady.split_whitespace().next().unwrap().parse().unwrap();
    assert!(steady_delta.abs() * 4.0 < delta.abs(), "{table}");

    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("differential"), "not a differential flame graph");
    // inferno titles a frame of a differential graph with its change: changed() shrank.
    let title = svg.lines().find(|l| l.contains("<title>changed (")).expect("changed() in the flame graph");
    assert!(title.contains("; -"), "{title}");

    // Folded input gives the same answer as JSON.
    let folded = dir.path().join("after.folded");
    let mut cmd = pyebpf();
    cmd.args(["profile", "--mode", "cpu", "-F", "499", "--no-summary", "-o"])
        .arg(&folded)
        .arg("--")
        .arg(&interp.path)
        .arg(workload("diffwork.py"))
        .args(["after", "150"]);
    assert_success(&run(&mut cmd, Duration::from_secs(60)));
    let out = run(pyebpf().arg("diff").arg(&before).arg(&folded), Duration::from_secs(30));
    assert_success(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().nth(2).unwrap().contains("changed ("), "{table}");

    // Bad input: one line, its own exit status.
    let out = run(pyebpf().arg("diff").arg(&before).arg(dir.path().join("missing.json")), Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.starts_with("error: cannot read profile") && err.trim_end().lines().count() == 1, "{err}");
    std::fs::write(dir.path().join("junk.json"), "{ not json").unwrap();
    let out = run(pyebpf().arg("diff").arg(&before).arg(dir.path().join("junk.json")), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("diff test: {:.1} s", started.elapsed().as_secs_f64());
}
