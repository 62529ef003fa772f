//! `pyebpf diff BEFORE AFTER`: what changed between two saved profiles (JSON or folded).
//!
//! Both inputs become folded stacks with the run-specific parts taken out, so that the same code
//! path matches across runs: pids and tids (`python3 (1234)` → `python3`), Python line numbers
//! (`work (app.py:42)` → `work (app.py)`, so an edit above a function does not make it new), and
//! by default the thread frame. A differential flame graph (inferno's `differential` module:
//! each frame sized by AFTER, red where it grew, blue where it shrank) is written with `-o`, and
//! a table of the functions whose inclusive time moved most is printed.
use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::Path,
};

use anyhow::Context as _;

use crate::{
    cli::DiffArgs,
    error::{ExitCode, fatal},
    model::{
        Frame, Mode, Profile,
        folded::sanitize,
        profile::{FORMAT_NAME, FORMAT_VERSION},
    },
    output,
};

/// What the counts of a profile stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// On-CPU samples (`--mode cpu` JSON).
    Samples,
    /// Microseconds of wall time (`--mode wall` JSON).
    Micros,
    /// Folded input: whatever the tool that wrote it counted.
    Unknown,
}

/// One input, as normalized folded stacks with their counts.
#[derive(Debug)]
pub struct Stacks {
    pub unit: Unit,
    pub counts: HashMap<String, u64>,
}

impl Stacks {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// How stacks are normalized before comparing.
#[derive(Clone, Copy, Debug)]
pub struct Normalize {
    pub threads: bool,
    pub lines: bool,
}

/// A frame's weight before and after (BEFORE already scaled when normalizing): its own (as the
/// leaf) and inclusive (anywhere on the stack, once per stack).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moved {
    pub function: String,
    pub self_before: f64,
    pub self_after: f64,
    pub before: f64,
    pub after: f64,
}

impl Moved {
    pub fn self_delta(&self) -> f64 {
        self.self_after - self.self_before
    }

    pub fn delta(&self) -> f64 {
        self.after - self.before
    }
}

pub fn run(args: DiffArgs) -> anyhow::Result<()> {
    let norm = Normalize { threads: args.threads, lines: args.lines };
    if let Some(out) = &args.output {
        check_output(out)?;
    }
    let before = load(&args.before, norm)?;
    let after = load(&args.after, norm)?;
    if before.unit != after.unit && before.unit != Unit::Unknown && after.unit != Unit::Unknown {
        return Err(fatal(
            ExitCode::Usage,
            format!(
                "'{}' weighs {} and '{}' weighs {}: profile both with the same --mode",
                args.before.display(),
                unit_name(before.unit),
                args.after.display(),
                unit_name(after.unit)
            ),
        ));
    }
    let unit = if after.unit == Unit::Unknown { before.unit } else { after.unit };
    if let Some(out) = &args.output {
        write_output(&before, &after, out, args.normalize, unit)?;
    }
    let moved = functions_moved(&before, &after, args.normalize);
    let stdout = std::io::stdout();
    let _ = write_table(&before, &after, &moved, args.top, unit, args.normalize, &mut stdout.lock());
    Ok(())
}

fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Samples => "CPU samples (--mode cpu)",
        Unit::Micros => "wall time (--mode wall)",
        Unit::Unknown => "counts",
    }
}

fn check_output(path: &Path) -> anyhow::Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if !matches!(ext.as_deref(), Some("svg" | "folded" | "collapsed")) {
        return Err(fatal(
            ExitCode::Usage,
            format!("cannot tell the format of '{}': name it .svg (flame graph) or .folded", path.display()),
        ));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() || path.is_dir() {
        return Err(fatal(
            ExitCode::Output,
            format!("cannot write '{}': '{}' is not a directory", path.display(), dir.display()),
        ));
    }
    Ok(())
}

/// Reads a profile: pyebpf JSON (recognized by its `format`), else folded stacks.
pub fn load(path: &Path, norm: Normalize) -> anyhow::Result<Stacks> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| fatal(ExitCode::Input, format!("cannot read profile '{}': {e}", path.display())))?;
    let bad =
        |why: String| fatal(ExitCode::Input, format!("'{}' is not a profile pyebpf can read: {why}", path.display()));
    if text.trim_start().starts_with('{') {
        from_json_text(&text, norm).map_err(bad)
    } else {
        from_folded(&text, norm).map_err(bad)
    }
}

/// A pyebpf JSON profile, read as the [`Profile`] type (after checking it is one, so other JSON
/// gets a clear reason).
fn from_json_text(text: &str, norm: Normalize) -> Result<Stacks, String> {
    #[derive(serde::Deserialize)]
    struct Header {
        format: Option<String>,
        version: Option<u32>,
    }
    let header: Header = serde_json::from_str(text).map_err(|e| format!("invalid JSON ({e})"))?;
    if header.format.as_deref() != Some(FORMAT_NAME) {
        return Err(format!("JSON without \"format\": \"{FORMAT_NAME}\""));
    }
    match header.version {
        Some(v) if v <= FORMAT_VERSION => {}
        v => return Err(format!("format version {v:?}, newer than this pyebpf reads ({FORMAT_VERSION})")),
    }
    let profile: Profile = serde_json::from_str(text).map_err(|e| format!("not a complete profile ({e})"))?;
    Ok(from_profile(&profile, norm))
}

/// Folded lines of a profile, weighed as its own folded output is (`mode`).
pub fn from_profile(profile: &Profile, norm: Normalize) -> Stacks {
    let unit = match profile.mode {
        Mode::Cpu => Unit::Samples,
        Mode::Wall => Unit::Micros,
    };
    let mut counts = HashMap::new();
    for p in &profile.processes {
        for s in &p.stacks {
            let count = match profile.mode {
                Mode::Cpu if s.category == crate::model::Category::Cpu => s.samples,
                Mode::Cpu => continue,
                Mode::Wall => s.weight_ns / 1000,
            };
            if count == 0 {
                continue;
            }
            let mut frames = vec![sanitize(&p.comm)];
            if norm.threads {
                frames.push(sanitize(&s.thread));
            }
            for f in s.frames_with_wait() {
                let text = match (&*f, norm.lines) {
                    (Frame::Python(py), false) => py.without_line().to_string(),
                    (Frame::Python(_) | Frame::Wait(_), _) | (_, true) => f.to_string(),
                    // Frames of other tools' JSON may still carry a line.
                    (_, false) => strip_line(&f.to_string()),
                };
                frames.push(sanitize(&text));
            }
            *counts.entry(frames.join(";")).or_insert(0) += count;
        }
    }
    Stacks { unit, counts }
}

/// Folded stacks (`frame;frame;leaf count`). pyebpf's own start with `process (pid);thread
/// (tid)`: the ids are dropped, and so is the thread unless asked for.
pub fn from_folded(text: &str, norm: Normalize) -> Result<Stacks, String> {
    let mut counts = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (stack, count) = line.rsplit_once(' ').ok_or_else(|| format!("line {}: no count", i + 1))?;
        let count: u64 = count.parse().map_err(|_| format!("line {}: '{count}' is not a count", i + 1))?;
        let mut frames = Vec::new();
        for (n, frame) in stack.split(';').enumerate() {
            let f = if n < 2 { strip_id(frame) } else { frame };
            if n == 1 && f.len() != frame.len() && !norm.threads {
                // pyebpf's thread frame (it had an id): threads are merged.
                continue;
            }
            frames.push(if norm.lines { f.to_string() } else { strip_line(f) });
        }
        *counts.entry(frames.join(";")).or_insert(0) += count;
    }
    if counts.is_empty() {
        return Err("no folded stacks in it".into());
    }
    Ok(Stacks { unit: Unit::Unknown, counts })
}

/// `python3 (1234)` → `python3`.
fn strip_id(frame: &str) -> &str {
    if let Some((name, rest)) = frame.rsplit_once(" (")
        && let Some(id) = rest.strip_suffix(')')
        && !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
    {
        return name;
    }
    frame
}

/// `work (app.py:42)` → `work (app.py)`; other frames unchanged.
pub fn strip_line(frame: &str) -> String {
    if let Some(inner) = frame.strip_suffix(')')
        && let Some((head, location)) = inner.rsplit_once(" (")
        && let Some((file, line)) = location.rsplit_once(':')
        && !line.is_empty()
        && line.bytes().all(|b| b.is_ascii_digit())
    {
        return format!("{head} ({file})");
    }
    frame.to_string()
}

/// Scale of BEFORE's counts: 1, or AFTER's total over BEFORE's when normalizing.
fn scale(before: &Stacks, after: &Stacks, normalize: bool) -> f64 {
    let (b, a) = (before.total(), after.total());
    if normalize && b > 0 { a as f64 / b as f64 } else { 1.0 }
}

/// Every frame's own and inclusive weight before and after, the process root frames left out.
/// Sorted by the change of own time, then of inclusive time: the function whose code changed
/// comes before its callers, whose inclusive time moved just as much.
pub fn functions_moved(before: &Stacks, after: &Stacks, normalize: bool) -> Vec<Moved> {
    let mut table: HashMap<&str, Moved> = HashMap::new();
    let k = scale(before, after, normalize);
    for (stacks, is_after) in [(before, false), (after, true)] {
        for (stack, &count) in &stacks.counts {
            let (count, mut seen) = (if is_after { count as f64 } else { count as f64 * k }, HashSet::new());
            // The first frame is the process.
            let frames: Vec<&str> = stack.split(';').skip(1).collect();
            for (i, f) in frames.iter().enumerate() {
                let e = table.entry(f).or_default();
                let leaf = i + 1 == frames.len();
                match (is_after, seen.insert(*f)) {
                    (true, true) => e.after += count,
                    (false, true) => e.before += count,
                    _ => {}
                }
                match (is_after, leaf) {
                    (true, true) => e.self_after += count,
                    (false, true) => e.self_before += count,
                    _ => {}
                }
            }
        }
    }
    let mut moved: Vec<Moved> = table.into_iter().map(|(f, m)| Moved { function: f.to_string(), ..m }).collect();
    moved.sort_by(|a, b| {
        b.self_delta()
            .abs()
            .total_cmp(&a.self_delta().abs())
            .then(b.delta().abs().total_cmp(&a.delta().abs()))
            .then_with(|| a.function.cmp(&b.function))
    });
    moved
}

fn is_svg(out: &Path) -> bool {
    out.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"))
}

fn write_output(before: &Stacks, after: &Stacks, out: &Path, normalize: bool, unit: Unit) -> anyhow::Result<()> {
    let folded = |s: &Stacks| {
        let mut lines: Vec<String> = s.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        lines.sort();
        lines.join("\n") + "\n"
    };
    let mut merged = Vec::new();
    let opts = inferno::differential::Options { normalize, strip_hex: false };
    inferno::differential::from_readers(opts, folded(before).as_bytes(), folded(after).as_bytes(), &mut merged)
        .context("differential stacks")?;
    let merged = String::from_utf8(merged).context("differential stacks")?;
    if merged.trim().is_empty() && is_svg(out) {
        return Err(fatal(ExitCode::Input, "both profiles are empty: nothing to compare"));
    }
    output::write_with(out, |w| {
        if is_svg(out) {
            let mut opts = inferno::flamegraph::Options::default();
            opts.title = "pyebpf: differential flame graph".to_string();
            opts.subtitle = Some("sized by AFTER; red grew, blue shrank (hover for the change)".to_string());
            opts.count_name = match unit {
                Unit::Samples => "samples",
                Unit::Micros => "µs",
                Unit::Unknown => "count",
            }
            .to_string();
            opts.deterministic = true;
            opts.text_truncate_direction = inferno::flamegraph::TextTruncateDirection::Right;
            inferno::flamegraph::from_lines(&mut opts, merged.lines(), w).context("flame graph")?;
        } else {
            w.write_all(merged.as_bytes())?;
        }
        Ok(())
    })?;
    Ok(())
}

fn signed(text: String) -> String {
    if text.starts_with('-') { text } else { format!("+{text}") }
}

fn write_table(
    before: &Stacks,
    after: &Stacks,
    moved: &[Moved],
    top: usize,
    unit: Unit,
    normalize: bool,
    w: &mut dyn Write,
) -> std::io::Result<()> {
    let (amount, name): (Box<dyn Fn(f64) -> String>, &str) = match unit {
        Unit::Micros => (Box::new(|v: f64| format!("{:.3}", v / 1e6)), "s"),
        Unit::Samples => (Box::new(|v: f64| format!("{v:.0}")), "samples"),
        Unit::Unknown => (Box::new(|v: f64| format!("{v:.0}")), "count"),
    };
    let (tb, ta) = (before.total() as f64 * scale(before, after, normalize), after.total() as f64);
    writeln!(
        w,
        "pyebpf diff: before {} {name}, after {} {name}{}",
        amount(tb),
        amount(ta),
        if normalize { " (before scaled to the same total)" } else { "" }
    )?;
    writeln!(
        w,
        "{:>10} {:>10} {:>7}  {:>10} {:>10}  FUNCTION (moved most first)",
        "Δ self", "Δ total", "Δ %", "BEFORE", "AFTER"
    )?;
    for m in moved.iter().take(top) {
        let share = |v: f64, t: f64| if t > 0.0 { 100.0 * v / t } else { 0.0 };
        writeln!(
            w,
            "{:>10} {:>10} {:>+7.1}  {:>10} {:>10}  {}",
            signed(amount(m.self_delta())),
            signed(amount(m.delta())),
            share(m.after, ta) - share(m.before, tb),
            amount(m.before),
            amount(m.after),
            m.function
        )?;
    }
    writeln!(
        w,
        "(self: time as the innermost frame; total: inclusive; Δ %: change of its share of all time; in {name})"
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Normalize = Normalize { threads: false, lines: false };

    #[test]
    fn folded_ids_threads_and_lines_are_normalized() {
        let s = from_folded("python3 (12);MainThread (12);main (a.py:3);work (a.py:9) 5\npython3 (13);MainThread (13);main (a.py:4);work (a.py:9) 2\n", ALL).unwrap();
        assert_eq!(s.counts.get("python3;main (a.py);work (a.py)"), Some(&7));
        let kept =
            from_folded("python3 (12);w (14);main (a.py:3) 5\n", Normalize { threads: true, lines: true }).unwrap();
        assert_eq!(kept.counts.get("python3;w;main (a.py:3)"), Some(&5));
        // Native frames keep their module; foreign folded input keeps its frames.
        assert_eq!(strip_line("[unknown] (libc.so.6)"), "[unknown] (libc.so.6)");
        let other = from_folded("a;b;c 3\n", ALL).unwrap();
        assert_eq!(other.counts.get("a;b;c"), Some(&3));
        assert!(from_folded("a;b;c x\n", ALL).is_err());
        assert!(from_folded("", ALL).is_err());
    }

    #[test]
    fn functions_that_moved_most_come_first() {
        let before = from_folded("p (1);t (1);main;fast 10\np (1);t (1);main;slow 90\n", ALL).unwrap();
        let after = from_folded("p (2);t (2);main;fast 10\np (2);t (2);main;slow 20\n", ALL).unwrap();
        let moved = functions_moved(&before, &after, false);
        // slow's own time moved; main's inclusive time moved as much, but it comes after.
        assert_eq!(moved[0].function, "slow");
        assert_eq!((moved[0].self_delta(), moved[0].delta()), (-70.0, -70.0));
        assert_eq!(moved[1].function, "main");
        assert_eq!((moved[1].self_delta(), moved[1].delta()), (0.0, -70.0));
        assert_eq!(moved.iter().find(|m| m.function == "fast").unwrap().delta(), 0.0);
        // Normalized: before is scaled to after's total (30 / 100).
        let moved = functions_moved(&before, &after, true);
        let fast = moved.iter().find(|m| m.function == "fast").unwrap();
        assert!((fast.before - 3.0).abs() < 1e-9 && fast.after == 10.0);
    }

    #[test]
    fn json_is_weighed_by_its_mode_with_wait_frames() {
        use crate::model::profile::tests::sample_profile;
        let json = serde_json::to_string(&sample_profile(Mode::Wall)).unwrap();
        let s = from_json_text(&json, ALL).unwrap();
        assert_eq!(s.unit, Unit::Micros);
        assert_eq!(s.counts.get("app;main;work (/srv/app.py);a::b:c"), Some(&30_000));
        assert_eq!(s.counts.get("app;main;get;[net] recvfrom tcp 127.0.0.1:5432"), Some(&50_000));
        assert_eq!(s.counts.get("app;[sleep] short waits (no stack)"), Some(&1_000));
        let lines = from_json_text(&json, Normalize { threads: true, lines: true }).unwrap();
        assert_eq!(lines.counts.get("app;main;main;work (/srv/app.py:7);a::b:c"), Some(&30_000));
        let cpu = serde_json::to_string(&sample_profile(Mode::Cpu)).unwrap();
        let s = from_json_text(&cpu, ALL).unwrap();
        assert_eq!((s.unit, s.counts.len(), s.total()), (Unit::Samples, 2, 7));
        assert!(from_json_text(r#"{"format": "x"}"#, ALL).unwrap_err().contains("without"));
        assert!(from_json_text(r#"{"format": "pyebpf-profile", "version": 99}"#, ALL).unwrap_err().contains("newer"));
        assert!(from_json_text(r#"{"format": "pyebpf-profile", "version": 1}"#, ALL).unwrap_err().contains("complete"));
    }
}
