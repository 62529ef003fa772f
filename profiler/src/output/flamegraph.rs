//! SVG flame graphs through inferno.
use std::io::Write;

use inferno::flamegraph::{
    self, Options, TextTruncateDirection,
    color::{BasicPalette, Palette, PaletteMap, parse_hex_color},
};

use crate::model::{Category, Mode, Profile};

/// Colours of off-CPU leaf frames: blues for I/O, purples for waiting on others, greys for
/// time asleep.
fn category_color(c: Category) -> &'static str {
    match c {
        Category::Cpu => "#e8743b",
        Category::Runqueue => "#f2c94c",
        Category::Net => "#2f80ed",
        Category::Disk => "#27ae60",
        Category::Lock => "#9b51e0",
        Category::Gil => "#eb5757",
        Category::Sleep => "#bdbdbd",
        Category::Ipc => "#56ccf2",
        Category::Idle => "#e0e0e0",
        Category::Other => "#828282",
    }
}

/// Colours of the task views' leaves (`[running]`, `[ready]`, `[awaiting] sleep`): a
/// running task as CPU, a ready one as the run queue (both wait for the loop's thread), an
/// awaiting one in teal, apart from the threads' wait colours.
fn task_state_color(state: &str) -> &'static str {
    match state {
        "running" => category_color(Category::Cpu),
        "ready" => category_color(Category::Runqueue),
        _ => "#1abc9c",
    }
}

pub fn write_svg(profile: &Profile, w: &mut dyn Write) -> anyhow::Result<()> {
    let mut lines = profile.folded_lines();
    // Each asyncio process's tasks beside its threads, under one `[asyncio tasks]` frame.
    lines.extend(profile.task_folded_lines());
    lines.sort();
    let mut opts = Options::default();
    let wall = profile.mode == Mode::Wall;
    opts.title = if wall { "pyebpf: wall clock (on- and off-CPU)" } else { "pyebpf: on-CPU" }.to_string();
    opts.subtitle = Some(format!(
        "{} samples at {} Hz over {:.1} s on {} CPUs{}",
        profile.samples,
        profile.frequency_hz,
        profile.duration_ns as f64 / 1e9,
        profile.cpus,
        if profile.lost_events > 0 { format!(", {} lost", profile.lost_events) } else { String::new() }
    ));
    opts.count_name = if wall { "µs" } else { "samples" }.to_string();
    // Off-CPU leaf frames coloured by category, so waits stand out from the hot-palette CPU.
    let mut palette = PaletteMap::default();
    for p in &profile.processes {
        for s in &p.stacks {
            if let (Some(leaf), Some(color)) = (s.wait_frame(), parse_hex_color(category_color(s.category))) {
                palette.insert(crate::model::folded::sanitize(&leaf.to_string()), color);
            }
        }
    }
    for t in profile.processes.iter().flat_map(|p| &p.tasks) {
        if let Some(color) = parse_hex_color(task_state_color(&t.state)) {
            palette.insert(crate::model::folded::sanitize(&t.leaf()), color);
        }
    }
    opts.palette_map = Some(&mut palette);
    opts.colors = Palette::Basic(BasicPalette::Hot);
    opts.deterministic = true;
    // Keep the start of a frame's text when it does not fit: the function name, not the path.
    opts.text_truncate_direction = TextTruncateDirection::Right;
    if lines.is_empty() {
        // inferno refuses empty input; an empty profile is still a valid answer.
        opts.title = format!("{} (no samples)", opts.title);
        let placeholder = ["[no samples] 1"];
        flamegraph::from_lines(&mut opts, placeholder.iter().copied(), w)?;
    } else {
        flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), w)?;
    }
    Ok(())
}
