//! Real consumers of pyebpf's outputs: `go tool pprof` (Debian's golang-go) and the speedscope
//! app in headless Chromium (tests/consumers/speedscope_check.cjs). `cargo xtask test` installs
//! them (xtask/src/test_tools.rs); when one is missing the test fails and says how to get it.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{Value, target_dir, wait_output};

const INSTALL: &str = "`cargo xtask test` (or `cargo xtask setup --tests`) installs it";

/// One row of `go tool pprof -top`: flat and cumulative value (in nanoseconds or counts), name.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    pub flat: i64,
    pub cum: i64,
    pub name: String,
}

/// `go tool pprof -top` of one value, every function (no node dropped), values in plain units.
#[derive(Debug)]
pub struct Top {
    /// The total of the value over the whole profile.
    pub total: i64,
    pub rows: Vec<TopRow>,
    pub text: String,
}

/// Runs `go tool pprof -top -sample_index=INDEX` on a profile and parses its table.
pub fn pprof_top(profile: &Path, sample_index: &str, nodes: usize) -> Top {
    pprof_top_with(profile, &[&format!("-sample_index={sample_index}"), &format!("-nodecount={nodes}")])
}

/// `go tool pprof -top` with more options (`-tagfocus=...`, or none for the default value).
pub fn pprof_top_with(profile: &Path, options: &[&str]) -> Top {
    let mut cmd = Command::new("go");
    cmd.args(["tool", "pprof", "-top", "-unit=ns", "-nodefraction=0", "-edgefraction=0"])
        .args(options)
        .arg(profile)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run `go tool pprof` ({e}): {INSTALL}"));
    let out = wait_output(child, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "go tool pprof failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    parse_top(&text).unwrap_or_else(|e| panic!("cannot read `go tool pprof -top` output ({e}):\n{text}"))
}

/// A value as `-unit=ns` prints it: `123ns`, or a bare count; `%` columns are skipped.
fn value(text: &str) -> Result<i64, String> {
    let digits = text.strip_suffix("ns").unwrap_or(text);
    digits.parse().map_err(|_| format!("not a value: {text:?}"))
}

fn parse_top(text: &str) -> Result<Top, String> {
    // "Showing nodes accounting for X, P% of TOTAL total"
    let total = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Showing nodes accounting for ")?
                .split(" of ")
                .nth(1)?
                .strip_suffix(" total")
                .map(str::to_string)
        })
        .ok_or("no total")?;
    let mut rows = Vec::new();
    let mut table = false;
    for line in text.lines() {
        if line.trim_start().starts_with("flat") {
            table = true;
            continue;
        }
        if !table || line.trim().is_empty() {
            continue;
        }
        // flat flat% sum% cum cum% name (the name may contain spaces).
        let mut rest = line.trim_start();
        let mut cols = Vec::new();
        for _ in 0..5 {
            let end = rest.find(' ').ok_or("short row")?;
            cols.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
        rows.push(TopRow { flat: value(cols[0])?, cum: value(cols[3])?, name: rest.to_string() });
    }
    Ok(Top { total: value(&total)?, rows, text: text.to_string() })
}

/// The npm packages from tests/consumers, installed by xtask.
fn node_modules() -> PathBuf {
    let dir = target_dir().join("test-deps/node_modules");
    assert!(dir.join("speedscope").is_dir(), "{} has no speedscope: {INSTALL}", dir.display());
    dir
}

/// Validates a speedscope file against speedscope's schema and opens it in the speedscope app
/// in headless Chromium; returns what the app showed (see speedscope_check.cjs). Screenshots go
/// to `screenshot` (Left Heavy view) and `<screenshot>-sandwich.png`.
pub fn speedscope_check(file: &Path, screenshot: &Path) -> Value {
    assert!(Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium not found: {INSTALL}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("consumers/speedscope_check.cjs");
    let child = Command::new("node")
        .arg(script)
        .arg(file)
        .arg(screenshot)
        .env("NODE_PATH", node_modules())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): {INSTALL}"));
    let out = wait_output(child, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "speedscope check failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("speedscope check printed no JSON ({e}): {stdout}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pprof_top() {
        let text = "Type: wall\nShowing nodes accounting for 300ns, 75% of 400ns total\n      flat  flat%   sum%        cum   cum%\n     200ns 50.00% 50.00%      250ns 62.50%  [net] recvfrom tcp 127.0.0.1:80\n     100ns 25.00% 75.00%      400ns   100%  <module>\n";
        let top = parse_top(text).unwrap();
        assert_eq!(top.total, 400);
        assert_eq!(
            top.rows,
            vec![
                TopRow { flat: 200, cum: 250, name: "[net] recvfrom tcp 127.0.0.1:80".into() },
                TopRow { flat: 100, cum: 400, name: "<module>".into() },
            ]
        );
        assert!(parse_top("no table").is_err());
    }
}
