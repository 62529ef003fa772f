//! speedscope and pprof outputs, read by their own tools: `go tool pprof` must show the same
//! top functions as pyebpf's JSON, and the speedscope app (npm package `speedscope`, in headless
//! Chromium) must accept the file, list its threads and show its stacks. One profiling run of a
//! Python workload with on- and off-CPU time (tests/workloads/offcpu.py) writes all three.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

use integration_tests::{consumers::*, python::*, *};

struct Run {
    json: Value,
    pprof: PathBuf,
    speedscope_path: PathBuf,
    speedscope: Value,
    dir: PathBuf,
}

/// The one profiling run, shared by the tests. Outputs stay in target/test-output/formats for
/// a person to look at (screenshots included).
fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = target_dir().join("test-output/formats");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (json, pprof, speedscope) = (dir.join("p.json"), dir.join("p.pb.gz"), dir.join("p.speedscope.json"));
        let interp = host_interpreter();
        let start = Instant::now();
        let out = integration_tests::run(
            pyebpf()
                .args(["profile", "--no-summary", "-o"])
                .arg(&json)
                .arg("-o")
                .arg(&pprof)
                .arg("-o")
                .arg(&speedscope)
                .arg("--")
                .arg(&interp.path)
                .arg(workload("offcpu.py"))
                .arg("2"),
            Duration::from_secs(90),
        );
        assert_success(&out);
        eprintln!("profiled {} in {:.1} s into {}", interp.label, start.elapsed().as_secs_f64(), dir.display());
        let json = read_json(&json);
        assert_eq!(json["mode"], "wall", "off-CPU tracking makes wall the default mode");
        Run { speedscope: read_json(&speedscope), json, pprof, speedscope_path: speedscope, dir }
    })
}

fn stacks(json: &Value) -> impl Iterator<Item = (&Value, &Value)> {
    json["processes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["stacks"].as_array().unwrap().iter().map(move |s| (p, s)))
}

/// The speedscope profile of a stack's thread: `comm (pid) / thread (tid)`.
fn profile_name(p: &Value, s: &Value) -> String {
    format!("{} ({}) / {} ({})", p["comm"].as_str().unwrap(), p["pid"], s["thread"].as_str().unwrap(), s["tid"])
}

fn python_text(f: &Value) -> String {
    match f["line"].as_i64() {
        Some(line) => format!("{} ({}:{line})", f["function"].as_str().unwrap(), f["file"].as_str().unwrap()),
        None => format!("{} ({})", f["function"].as_str().unwrap(), f["file"].as_str().unwrap()),
    }
}

/// A JSON stack's frames, root first, as the structured formats name them: a Python frame by
/// its function (with its file and line beside it), any other frame by its text, then the wait
/// frame of an off-CPU stack.
/// A stack's frames (name, file) and its weight.
type WeightedStack = (Vec<(String, Option<String>)>, u64);

fn frame_names(s: &Value) -> Vec<(String, Option<String>)> {
    let mut python = s["python_frames"].as_array().unwrap().iter().peekable();
    let mut names: Vec<(String, Option<String>)> = s["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .map(|text| match python.next_if(|p| python_text(p) == text) {
            Some(p) => (
                p["function"].as_str().unwrap().to_string(),
                Some(format!("{}:{}", p["file"].as_str().unwrap(), p["line"].as_i64().unwrap_or(0))),
            ),
            None => (text.to_string(), None),
        })
        .collect();
    assert!(python.next().is_none(), "every python_frames entry is one of frames: {s}");
    if s["category"] != "cpu" {
        let mut wait = format!("[{}]", s["category"].as_str().unwrap());
        for part in [&s["syscall"], &s["target"]] {
            if let Some(p) = part.as_str() {
                wait = format!("{wait} {p}");
            }
        }
        names.push((wait, None));
    }
    names
}

/// Flat and cumulative value per function name, and the total, computed from the JSON the way
/// pprof aggregates functions (by name; a function counts once per stack for `cum`).
fn expected_top(json: &Value, value: impl Fn(&Value) -> i64) -> (HashMap<String, i64>, HashMap<String, i64>, i64) {
    let (mut flat, mut cum, mut total) = (HashMap::new(), HashMap::new(), 0);
    for (_, s) in stacks(json) {
        let v = value(s);
        if v == 0 {
            continue;
        }
        total += v;
        let names: Vec<String> = frame_names(s).into_iter().map(|(n, _)| n).collect();
        if let Some(leaf) = names.last() {
            *flat.entry(leaf.clone()).or_insert(0) += v;
        }
        for name in names.into_iter().collect::<HashSet<_>>() {
            *cum.entry(name).or_insert(0) += v;
        }
    }
    (flat, cum, total)
}

/// `go tool pprof -top` of one value against the JSON: same total, every row's flat and cum
/// values exact, and its rows are the JSON's heaviest functions.
fn check_top(index: &str, value: impl Fn(&Value) -> i64) -> Top {
    let r = run();
    let top = pprof_top(&r.pprof, index, 15);
    let (flat, cum, total) = expected_top(&r.json, value);
    assert_eq!(top.total, total, "{index}: pprof's total against the JSON's\n{}", top.text);
    assert!(!top.rows.is_empty(), "{index}: no rows\n{}", top.text);
    for row in &top.rows {
        let expected = (flat.get(&row.name).copied().unwrap_or(0), cum.get(&row.name).copied());
        assert_eq!((row.flat, Some(row.cum)), expected, "{index}: {}\n{}", row.name, top.text);
    }
    let mut heaviest: Vec<i64> = cum.keys().map(|n| flat.get(n).copied().unwrap_or(0)).collect();
    heaviest.sort_unstable_by(|a, b| b.cmp(a));
    heaviest.truncate(top.rows.len());
    assert_eq!(top.rows.iter().map(|r| r.flat).collect::<Vec<_>>(), heaviest, "{index}: top rows\n{}", top.text);
    top
}

#[test]
fn pprof_top_functions_match_the_json() {
    let r = run();
    let weight = |s: &Value| s["weight_ns"].as_i64().unwrap();

    // Wall time: off-CPU stacks end in their wait frame, e.g. the client's socket reads.
    let wall = check_top("wall", weight);
    assert!(
        wall.rows.iter().any(|row| row.name.starts_with("[net] recvfrom tcp 127.0.0.1:")),
        "the net-client's wait is among the top frames\n{}",
        wall.text
    );

    // CPU time: on-CPU stacks only, each its share of its thread's exact on-CPU time; the busy
    // loop is on top by cum.
    let cpu = check_top("cpu", |s| if s["category"] == "cpu" { s["weight_ns"].as_i64().unwrap() } else { 0 });
    assert!(
        cpu.rows.iter().all(|row| !row.name.starts_with("[net]") && !row.name.starts_with("[sleep]")),
        "{}",
        cpu.text
    );
    let (_, cum, _) =
        expected_top(&r.json, |s| if s["category"] == "cpu" { s["samples"].as_i64().unwrap() } else { 0 });
    assert!(cum.contains_key("compute_for"), "compute_for burns CPU: {cum:?}");

    // One value per category, named as in the JSON.
    let categories: BTreeMap<&str, i64> = stacks(&r.json).fold(BTreeMap::new(), |mut m, (_, s)| {
        *m.entry(s["category"].as_str().unwrap()).or_insert(0) += weight(s);
        m
    });
    for (category, ns) in categories.iter().filter(|(c, _)| **c != "cpu") {
        assert_eq!(pprof_top(&r.pprof, category, 1).total, *ns, "{category}");
    }
    for c in ["net", "sleep", "lock", "disk"] {
        assert!(categories.contains_key(c), "offcpu.py waits on {c}: {categories:?}");
    }

    // Labels: pprof keeps only the net-client thread's samples.
    let net_client: i64 = stacks(&r.json).filter(|(_, s)| s["thread"] == "net-client").map(|(_, s)| weight(s)).sum();
    let focused = pprof_top_with(&r.pprof, &["-sample_index=wall", "-tagfocus=thread=net-client"]);
    let shown: i64 = focused.rows.iter().map(|row| row.flat).sum();
    assert!(net_client > 0 && shown == net_client, "net-client: {net_client} ns in the JSON\n{}", focused.text);
}

/// speedscope's duration text (`2.02s`, `75.40ms`, `811.68µs`, `3ns`) in nanoseconds.
fn speedscope_ns(text: &str) -> f64 {
    let t = text.split_whitespace().next().unwrap();
    for (unit, scale) in [("min", 60e9), ("ms", 1e6), ("µs", 1e3), ("ns", 1.0), ("s", 1e9)] {
        if let Some(n) = t.strip_suffix(unit) {
            return n.parse::<f64>().unwrap() * scale;
        }
    }
    panic!("not a speedscope duration: {text}")
}

#[test]
fn speedscope_file_holds_the_json_stacks_per_thread() {
    let r = run();
    let f = &r.speedscope;
    assert_eq!(f["$schema"], "https://www.speedscope.app/file-format-schema.json");
    assert!(f["exporter"].as_str().unwrap().starts_with("pyebpf "));
    let frames = f["shared"]["frames"].as_array().unwrap();

    // Per thread, the multiset of (frames, weight) of the JSON's stacks.
    let mut expected: BTreeMap<String, Vec<WeightedStack>> = BTreeMap::new();
    for (p, s) in stacks(&r.json) {
        let w = s["weight_ns"].as_u64().unwrap();
        if w > 0 {
            expected.entry(profile_name(p, s)).or_default().push((frame_names(s), w));
        }
    }
    let mut found: BTreeMap<String, Vec<WeightedStack>> = BTreeMap::new();
    for p in f["profiles"].as_array().unwrap() {
        assert_eq!(
            (p["type"].as_str(), p["unit"].as_str(), p["startValue"].as_u64()),
            (Some("sampled"), Some("nanoseconds"), Some(0))
        );
        let (samples, weights) = (p["samples"].as_array().unwrap(), p["weights"].as_array().unwrap());
        assert_eq!(samples.len(), weights.len());
        assert_eq!(p["endValue"].as_u64().unwrap(), weights.iter().map(|w| w.as_u64().unwrap()).sum::<u64>());
        let stacks = found.entry(p["name"].as_str().unwrap().to_string()).or_default();
        assert!(stacks.is_empty(), "one profile per thread: {}", p["name"]);
        for (sample, w) in samples.iter().zip(weights) {
            let names = sample
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    let fr = &frames[i.as_u64().unwrap() as usize];
                    let at = fr["file"].as_str().map(|file| format!("{file}:{}", fr["line"].as_i64().unwrap_or(0)));
                    (fr["name"].as_str().unwrap().to_string(), at)
                })
                .collect();
            stacks.push((names, w.as_u64().unwrap()));
        }
    }
    for v in expected.values_mut().chain(found.values_mut()) {
        v.sort();
    }
    assert_eq!(found.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "threads");
    for (thread, stacks) in &expected {
        assert_eq!(&found[thread], stacks, "{thread}");
    }
    // speedscope opens the thread with the most CPU time.
    let mut cpu: BTreeMap<String, u64> = BTreeMap::new();
    for (p, s) in stacks(&r.json).filter(|(_, s)| s["category"] == "cpu") {
        *cpu.entry(profile_name(p, s)).or_default() += s["weight_ns"].as_u64().unwrap();
    }
    let busiest = cpu.iter().max_by_key(|(_, ns)| **ns).unwrap().0;
    assert_eq!(&f["profiles"][f["activeProfileIndex"].as_u64().unwrap() as usize]["name"], busiest.as_str());
}

#[test]
fn speedscope_app_validates_the_file_and_shows_its_threads_and_stacks() {
    let r = run();
    let screenshot = r.dir.join("speedscope.png");
    let start = Instant::now();
    let shown = speedscope_check(&r.speedscope_path, &screenshot);
    eprintln!(
        "speedscope schema + app check in {:.1} s; screenshots {}",
        start.elapsed().as_secs_f64(),
        screenshot.display()
    );
    assert_eq!(shown["problems"], serde_json::json!([]), "{shown}");

    let f = &r.speedscope;
    let profiles = f["profiles"].as_array().unwrap();
    let frames = f["shared"]["frames"].as_array().unwrap();
    let names: Vec<&Value> = profiles.iter().map(|p| &p["name"]).collect();
    assert_eq!(shown["threads"].as_array().unwrap().iter().collect::<Vec<_>>(), names, "every thread listed");
    let active = &profiles[f["activeProfileIndex"].as_u64().unwrap() as usize];
    assert_eq!(shown["shown"], active["name"], "the app opens the file's active profile");

    // Left Heavy puts the heaviest root frame at the top-left; the tooltip names it.
    let mut roots: BTreeMap<usize, u64> = BTreeMap::new();
    let mut selfs: BTreeMap<usize, u64> = BTreeMap::new();
    for (s, w) in active["samples"].as_array().unwrap().iter().zip(active["weights"].as_array().unwrap()) {
        let ids: Vec<usize> = s.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect();
        *roots.entry(ids[0]).or_default() += w.as_u64().unwrap();
        *selfs.entry(*ids.last().unwrap()).or_default() += w.as_u64().unwrap();
    }
    let root = &frames[*roots.iter().max_by_key(|(_, w)| **w).unwrap().0];
    let hovered = shown["hovered"].as_str().unwrap();
    assert!(hovered.contains(root["name"].as_str().unwrap()), "hovered {hovered:?}, heaviest root {root}");
    if let Some(file) = root["file"].as_str() {
        assert!(hovered.contains(&format!("{file}:{}", root["line"])), "hovered {hovered:?}, heaviest root {root}");
    }

    // Sandwich lists functions by self weight: the first is the heaviest leaf, with its weight.
    let first = shown["functions"][0].as_array().unwrap_or_else(|| panic!("no sandwich rows: {shown}"));
    let max_self = *selfs.values().max().unwrap();
    let tied: Vec<&str> = selfs
        .iter()
        .filter(|(_, w)| **w as f64 >= max_self as f64 * 0.995)
        .map(|(i, _)| frames[*i]["name"].as_str().unwrap())
        .collect();
    assert!(tied.contains(&first[2].as_str().unwrap()), "sandwich top {first:?}, expected one of {tied:?}");
    let self_ns = speedscope_ns(first[1].as_str().unwrap());
    assert!(
        (self_ns - max_self as f64).abs() <= max_self as f64 * 0.01 + 10.0,
        "sandwich self {first:?} against {max_self} ns"
    );
}

#[test]
fn format_flag_overrides_the_extension_and_mode_picks_pprofs_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profile.data");
    let spin = spin_program();
    assert_success(&integration_tests::run(
        pyebpf()
            .args(["profile", "--no-summary", "--format", "pprof", "--mode", "cpu", "-o"])
            .arg(&out)
            .arg("--")
            .arg(&spin)
            .arg("1"),
        Duration::from_secs(60),
    ));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");
    // No -sample_index: pprof shows the profile's default, cpu in cpu mode.
    let top = pprof_top_with(&out, &[]);
    assert!(top.text.lines().any(|l| l == "Type: cpu"), "{}", top.text);
    assert!(top.rows.iter().any(|row| row.name == "inner_spin"), "{}", top.text);
}
