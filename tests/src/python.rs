//! The CPython interpreters on this machine, and Python workloads to profile.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{KillOnDrop, Value};

/// Minor versions the product supports; every one found is tested, every one missing is said.
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u8> = 8..=13;

#[derive(Debug, Clone)]
pub struct Interpreter {
    /// e.g. "3.12.1 (pyenv)".
    pub label: String,
    pub path: PathBuf,
    pub minor: u8,
}

fn minor_of(version: &str) -> Option<u8> {
    let mut parts = version.split('.');
    (parts.next()? == "3").then_some(())?;
    parts.next()?.parse().ok()
}

/// Every CPython 3.8+ here: pyenv versions and the system python3. Prints which supported
/// versions are missing, so a machine without them says so in the test output.
pub fn interpreters() -> Vec<Interpreter> {
    let mut found = Vec::new();
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".pyenv"))
        .join("versions");
    if let Ok(dirs) = std::fs::read_dir(&pyenv) {
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            let Some(minor) = minor_of(&name) else { continue };
            // Plain releases only (not 3.13t free-threaded builds or virtualenvs).
            if minor < *SUPPORTED_MINORS.start() || !name.chars().all(|c| c.is_ascii_digit() || c == '.') {
                continue;
            }
            let path = dir.path().join(format!("bin/python3.{minor}"));
            if path.exists() {
                found.push(Interpreter { label: format!("{name} (pyenv)"), path, minor });
            }
        }
    }
    for system in ["/usr/bin/python3"] {
        let Ok(real) = std::fs::canonicalize(system) else { continue };
        let version = Command::new(&real)
            .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if let Some(minor) = minor_of(&version).filter(|m| *m >= *SUPPORTED_MINORS.start()) {
            found.push(Interpreter { label: format!("{version} (system {})", real.display()), path: real, minor });
        }
    }
    found.sort_by(|a, b| (a.minor, &a.label).cmp(&(b.minor, &b.label)));
    let missing: Vec<String> =
        SUPPORTED_MINORS.filter(|m| !found.iter().any(|i| i.minor == *m)).map(|m| format!("3.{m}")).collect();
    eprintln!(
        "CPython interpreters under test: {}",
        found.iter().map(|i| i.label.as_str()).collect::<Vec<_>>().join(", ")
    );
    if !missing.is_empty() {
        eprintln!("MISSING CPython versions (not tested on this machine): {}", missing.join(", "));
    }
    assert!(!found.is_empty(), "no CPython 3.8+ interpreter found");
    found
}

/// Path of a workload script in tests/workloads.
pub fn workload(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads").join(name)
}

/// Starts `python script args...` and waits for it to print "ready".
pub fn start_ready(python: &Path, script: &Path, args: &[&str]) -> KillOnDrop {
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "{} did not start", script.display());
    KillOnDrop(child)
}

/// 1-based line of the line containing `marker` in `script`.
pub fn line_of(script: &Path, marker: &str) -> i64 {
    let text = std::fs::read_to_string(script).unwrap();
    let hits: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.contains(marker)).map(|(i, _)| i + 1).collect();
    assert_eq!(hits.len(), 1, "marker {marker:?} must appear once in {}", script.display());
    hits[0] as i64
}

/// One expected Python frame: function name, and the allowed line range.
#[derive(Debug, Clone)]
pub struct Expect {
    pub function: String,
    pub lines: std::ops::RangeInclusive<i64>,
}

impl Expect {
    pub fn at(function: &str, line: i64) -> Self {
        Self { function: function.to_string(), lines: line..=line }
    }
}

/// Does a stack's `python_frames` hold `chain` as consecutive frames of `file`?
pub fn has_chain(stack: &Value, file: &Path, chain: &[Expect]) -> bool {
    let frames = stack["python_frames"].as_array().unwrap();
    let file = file.to_str().unwrap();
    frames.windows(chain.len()).any(|w| {
        w.iter().zip(chain).all(|(f, e)| {
            f["file"] == file && f["function"] == e.function.as_str() && f["line"].as_i64().is_some_and(|l| e.lines.contains(&l))
        })
    })
}

/// On-CPU samples of `process` (optionally of one thread) whose stack satisfies `pred`, and all.
pub fn count(process: &Value, tid: Option<u64>, pred: impl Fn(&Value) -> bool) -> (u64, u64) {
    let mut matching = 0;
    let mut total = 0;
    for s in process["stacks"].as_array().unwrap().iter().filter(|s| s["category"] == "cpu") {
        if tid.is_some_and(|t| s["tid"].as_u64() != Some(t)) {
            continue;
        }
        let n = s["samples"].as_u64().unwrap();
        total += n;
        if pred(s) {
            matching += n;
        }
    }
    (matching, total)
}

/// Runs `check` on every interpreter and fails once with every version's failure listed, so one
/// failing version does not hide the others.
pub fn for_each_interpreter(what: &str, mut check: impl FnMut(&Interpreter) -> Result<(), String>) {
    let failures: Vec<String> =
        interpreters().iter().filter_map(|i| check(i).err().map(|e| format!("{}: {e}", i.label))).collect();
    assert!(failures.is_empty(), "{what} failed on:\n{}", failures.join("\n"));
}
