//! The terminal summary printed when profiling ends: where each process's and thread's time
//! went (CPU versus each kind of waiting), the stacks that spent it, and the Python functions
//! that are CPU- or I/O-bound.
use std::io::Write;

use crate::model::{
    Category, Container, FunctionProfile, LoopStall, Mode, ProcessProfile, Profile, StackProfile, Totals,
};

const TOP_PROCESSES: usize = 15;
const TOP_THREADS: usize = 6;
const TOP_STACKS: usize = 8;
const TOP_FUNCTIONS: usize = 8;
const STACK_FRAMES_SHOWN: usize = 5;

fn share(part: u64, total: u64) -> f64 {
    if total > 0 { 100.0 * part as f64 / total as f64 } else { 0.0 }
}

/// Fits `text` in `width` columns on one line (command lines can hold newlines and tabs).
fn truncate(text: &str, width: usize) -> String {
    truncate_with(text, width, '…')
}

/// [`truncate`] ending a cut text with `marker` (`top` uses an ASCII one).
pub(crate) fn truncate_with(text: &str, width: usize, marker: char) -> String {
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().count() <= width {
        text
    } else {
        let mut t: String = text.chars().take(width.saturating_sub(1)).collect();
        t.push(marker);
        t
    }
}

/// "cpu 41%  net 52%  sleep 7%": categories above half a percent, largest first.
fn split(totals: &Totals, wall: u64) -> String {
    let mut parts: Vec<(&str, u64)> =
        totals.iter().map(|(c, ns)| (c.name(), ns)).filter(|(_, ns)| share(*ns, wall) >= 0.5).collect();
    // Ties keep name order.
    parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    parts.iter().map(|(c, ns)| format!("{c} {:.0}%", share(*ns, wall))).collect::<Vec<_>>().join("  ")
}

pub fn write(profile: &Profile, notes: &[String], w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        w,
        "pyebpf: profiled {:.2} s at {} Hz on {} CPUs{}: {} samples from {} processes, {} lost events",
        profile.duration_ns as f64 / 1e9,
        profile.frequency_hz,
        profile.cpus,
        if profile.off_cpu { " with off-CPU tracking" } else { "" },
        profile.samples,
        profile.processes.len(),
        profile.lost_events,
    )?;
    if profile.lost_events > 0 {
        writeln!(w, "  warning: {} events were lost (ring buffer full); try a lower --frequency", profile.lost_events)?;
    }
    for note in notes {
        writeln!(w, "  note: {note}")?;
    }
    if profile.processes.is_empty() {
        writeln!(w, "  no samples: the targets did not run on a CPU while profiling")?;
        return Ok(());
    }

    let wall_secs = |ns: u64| ns as f64 / 1e9;
    writeln!(w)?;
    writeln!(w, "{:>8}  {:<16} {:>9}  {:<44} COMMAND", "PID/└TID", "PROCESS/THREAD", "TIME s", "WHERE THE TIME WENT")?;
    // A process whose parent is profiled too (a followed child: a worker, a pool process) says
    // which one: their command lines are often the same.
    let profiled: std::collections::HashSet<u32> = profile.processes.iter().map(|p| p.pid).collect();
    for p in profile.processes.iter().take(TOP_PROCESSES) {
        writeln!(
            w,
            "{:>8}  {:<16} {:>9.2}  {:<44} {}{}{}",
            p.pid,
            truncate(&p.comm, 16),
            wall_secs(p.wall_ns),
            truncate(&split(&p.totals_ns, p.wall_ns), 44),
            p.ppid.filter(|ppid| profiled.contains(ppid)).map(|ppid| format!("[child of {ppid}] ")).unwrap_or_default(),
            p.python_version.as_deref().map(|v| format!("[Python {v}] ")).unwrap_or_default(),
            truncate(p.cmdline.as_deref().unwrap_or("-"), 50),
        )?;
        if let Some(c) = p.container.as_ref().filter(|c| c.id.is_some() || c.pod_uid.is_some()) {
            writeln!(w, "{:>8}  {}", "", container_line(c))?;
        }
        if p.threads.len() > 1 {
            for t in p.threads.iter().take(TOP_THREADS) {
                writeln!(
                    w,
                    "{:>8}  {:<16} {:>9.2}  {}",
                    format!("└{}", t.tid),
                    truncate(t.python_name.as_deref().unwrap_or(&t.name), 16),
                    wall_secs(t.wall_ns),
                    split(&t.totals_ns, t.wall_ns),
                )?;
            }
            if p.threads.len() > TOP_THREADS {
                writeln!(w, "{:>8}  … {} more threads", "└", p.threads.len() - TOP_THREADS)?;
            }
        }
    }
    if profile.processes.len() > TOP_PROCESSES {
        writeln!(w, "  … {} more processes", profile.processes.len() - TOP_PROCESSES)?;
    }

    write_top_stacks(profile, w)?;
    write_loop_stalls(profile, w)?;
    write_functions(profile, w)?;
    super::task_summary::write_task_handlers(profile, w)
}

/// `container 3f4e5d6c7b8a (docker) pod 7c1b…`: under the process's line in the summary.
fn container_line(c: &Container) -> String {
    let mut out = String::new();
    if let Some(id) = c.short_id() {
        out.push_str(&format!("container {id}"));
        if let Some(runtime) = &c.runtime {
            out.push_str(&format!(" ({runtime})"));
        }
    }
    if let Some(pod) = &c.pod_uid {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("pod {pod}"));
    }
    out
}

const TOP_STALLS: usize = 6;

/// Blocking calls made on an event loop: the coroutine, the call and what it waited on.
fn write_loop_stalls(profile: &Profile, w: &mut dyn Write) -> std::io::Result<()> {
    let mut stalls: Vec<(&ProcessProfile, &LoopStall)> =
        profile.processes.iter().flat_map(|p| p.loop_stalls.iter().map(move |s| (p, s))).collect();
    if stalls.is_empty() {
        return Ok(());
    }
    stalls.sort_by_key(|s| std::cmp::Reverse(s.1.wall_ns));
    writeln!(w)?;
    writeln!(w, "Event loops held up by blocking calls (nothing else on the loop ran meanwhile):")?;
    for (p, s) in stalls.iter().take(TOP_STALLS) {
        let mut call = format!("[{}]", s.category.name());
        for part in [&s.syscall, &s.target].into_iter().flatten() {
            call.push(' ');
            call.push_str(part);
        }
        writeln!(
            w,
            "  {:>7.3} s  {} blocked in {call} ({} calls)   [{} ({}) thread {} ({})]",
            s.wall_ns as f64 / 1e9,
            s.coroutine.as_deref().unwrap_or("a callback"),
            s.count,
            p.comm,
            p.pid,
            s.thread,
            s.tid,
        )?;
    }
    Ok(())
}

/// The innermost Python frame of a stack, for "in get_user (app/db.py:42)".
fn innermost_python(s: &StackProfile) -> Option<String> {
    s.innermost_python().map(|f| f.to_string())
}

/// Longest frame text shown in the summary (names can be 10,000 characters long).
const FRAME_CHARS_SHOWN: usize = 160;

fn write_top_stacks(profile: &Profile, w: &mut dyn Write) -> std::io::Result<()> {
    let mut stacks: Vec<(&ProcessProfile, &StackProfile)> = profile
        .processes
        .iter()
        .flat_map(|p| p.stacks.iter().map(move |s| (p, s)))
        .filter(|(_, s)| profile.mode == Mode::Wall || s.category == Category::Cpu)
        .collect();
    stacks.sort_by_key(|s| std::cmp::Reverse(s.1.weight_ns));
    writeln!(w)?;
    writeln!(
        w,
        "Top stacks by {} (leaf first):",
        if profile.mode == Mode::Wall { "wall time" } else { "CPU samples" }
    )?;
    for (p, s) in stacks.iter().take(TOP_STACKS) {
        let thread_wall = p.threads.iter().find(|t| t.tid == s.tid).map_or(0, |t| t.wall_ns);
        let mut what = format!("{:<8} {:>4.0}% of thread", s.category.name(), share(s.weight_ns, thread_wall));
        for part in [&s.syscall, &s.target].into_iter().flatten() {
            what.push_str("  ");
            what.push_str(part);
        }
        if let Some(func) = innermost_python(s) {
            what.push_str(&format!("  in {}", truncate(&func, FRAME_CHARS_SHOWN)));
        }
        writeln!(
            w,
            "  {:>7.3} s  {what}   [{} ({}) thread {} ({})]",
            s.weight_ns as f64 / 1e9,
            p.comm,
            p.pid,
            s.thread,
            s.tid
        )?;
        let shown: Vec<String> = s
            .frames
            .iter()
            .rev()
            .take(STACK_FRAMES_SHOWN)
            .map(|f| truncate(&f.to_string(), FRAME_CHARS_SHOWN))
            .collect();
        if !shown.is_empty() {
            let more = s.frames.len().saturating_sub(STACK_FRAMES_SHOWN);
            let mut line = shown.join(" <- ");
            if more > 0 {
                line.push_str(&format!(" <- … {more} more"));
            }
            writeln!(w, "             {line}")?;
        }
    }
    Ok(())
}

/// Per Python function, own time (where the time is spent: its code, or the calls it makes
/// into C or the kernel) with its split, and inclusive time: what to fix first.
fn write_functions(profile: &Profile, w: &mut dyn Write) -> std::io::Result<()> {
    let mut rows: Vec<(&ProcessProfile, &FunctionProfile)> = profile
        .processes
        .iter()
        .flat_map(|p| p.functions.iter().map(move |f| (p, f)))
        .filter(|(_, f)| f.own_ns > 0)
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.own_ns));
    writeln!(w)?;
    writeln!(w, "Python functions by own time (innermost Python frame; TOTAL includes callees):")?;
    writeln!(w, "  {:>7}  {:>7}  {:<44} OWN TIME WENT TO", "OWN s", "TOTAL s", "FUNCTION")?;
    for (p, f) in rows.iter().take(TOP_FUNCTIONS) {
        writeln!(
            w,
            "  {:>7.3}  {:>7.3}  {:<44} {}  [pid {}]",
            f.own_ns as f64 / 1e9,
            f.wall_ns as f64 / 1e9,
            truncate(&format!("{} ({})", f.function, f.file), 44),
            split(&f.own_totals_ns, f.own_ns),
            p.pid
        )?;
    }
    Ok(())
}
