//! The terminal summary printed when profiling ends.
use std::io::Write;

use crate::profile::Profile;

const TOP_PROCESSES: usize = 15;
const TOP_THREADS: usize = 5;
const TOP_STACKS: usize = 8;
const STACK_FRAMES_SHOWN: usize = 6;

/// Percent of one CPU that `samples` stand for over the profile.
fn cpu_percent(profile: &Profile, samples: u64) -> f64 {
    let possible = profile.duration_ns as f64 / 1e9 * profile.frequency_hz as f64;
    if possible > 0.0 { 100.0 * samples as f64 / possible } else { 0.0 }
}

fn share(part: u64, total: u64) -> f64 {
    if total > 0 { 100.0 * part as f64 / total as f64 } else { 0.0 }
}

/// Fits `text` in `width` columns on one line (command lines can hold newlines and tabs).
fn truncate(text: &str, width: usize) -> String {
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub fn write(profile: &Profile, notes: &[String], w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        w,
        "pyebpf: profiled {:.2} s at {} Hz on {} CPUs: {} samples from {} processes, {} lost events",
        profile.duration_ns as f64 / 1e9,
        profile.frequency_hz,
        profile.cpus,
        profile.samples,
        profile.processes.len(),
        profile.lost_events,
    )?;
    if profile.lost_events > 0 {
        writeln!(w, "  warning: {} samples were lost (ring buffer full); try a lower --frequency", profile.lost_events)?;
    }
    for note in notes {
        writeln!(w, "  note: {note}")?;
    }
    if profile.processes.is_empty() {
        writeln!(w, "  no samples: the targets did not run on a CPU while profiling")?;
        return Ok(());
    }

    writeln!(w)?;
    writeln!(w, "{:>8}  {:<16} {:>8} {:>7}  COMMAND", "PID/└TID", "PROCESS/THREAD", "SAMPLES", "CPU%")?;
    for p in profile.processes.iter().take(TOP_PROCESSES) {
        writeln!(
            w,
            "{:>8}  {:<16} {:>8} {:>6.1}%  {}",
            p.pid,
            truncate(&p.comm, 16),
            p.samples,
            cpu_percent(profile, p.samples),
            truncate(p.cmdline.as_deref().unwrap_or("-"), 60),
        )?;
        if p.threads.len() > 1 {
            for t in p.threads.iter().take(TOP_THREADS) {
                writeln!(
                    w,
                    "{:>8}  {:<16} {:>8} {:>6.1}%",
                    format!("└{}", t.tid),
                    truncate(t.python_name.as_deref().unwrap_or(&t.name), 16),
                    t.samples,
                    cpu_percent(profile, t.samples),
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

    let mut stacks: Vec<_> = profile
        .processes
        .iter()
        .flat_map(|p| p.stacks.iter().map(move |s| (p, s)))
        .collect();
    stacks.sort_by(|a, b| b.1.samples.cmp(&a.1.samples));
    writeln!(w)?;
    writeln!(w, "Top stacks (leaf first):")?;
    for (p, s) in stacks.iter().take(TOP_STACKS) {
        writeln!(
            w,
            "  {:>5.1}% {:>7} samples  {} ({}) thread {} ({})",
            share(s.samples, profile.samples),
            s.samples,
            p.comm,
            p.pid,
            s.thread,
            s.tid
        )?;
        let shown: Vec<&str> = s.frames.iter().rev().take(STACK_FRAMES_SHOWN).map(String::as_str).collect();
        let more = s.frames.len().saturating_sub(STACK_FRAMES_SHOWN);
        let mut line = shown.join(" <- ");
        if more > 0 {
            line.push_str(&format!(" <- … {more} more"));
        }
        if line.is_empty() {
            line = "(no stack)".to_string();
        }
        writeln!(w, "          {line}")?;
    }
    Ok(())
}
