//! SVG flame graphs through inferno.
use std::io::Write;

use inferno::flamegraph::{self, Options, color::{BasicPalette, Palette}};

use crate::profile::Profile;

pub fn write_svg(profile: &Profile, w: &mut dyn Write) -> anyhow::Result<()> {
    let lines = profile.folded_lines();
    let mut opts = Options::default();
    opts.title = "pyebpf: on-CPU".to_string();
    opts.subtitle = Some(format!(
        "{} samples at {} Hz over {:.1} s on {} CPUs{}",
        profile.samples,
        profile.frequency_hz,
        profile.duration_ns as f64 / 1e9,
        profile.cpus,
        if profile.lost_events > 0 { format!(", {} lost", profile.lost_events) } else { String::new() }
    ));
    opts.count_name = "samples".to_string();
    opts.colors = Palette::Basic(BasicPalette::Hot);
    opts.deterministic = true;
    // Keep the start of a frame's text when it does not fit: the function name, not the path.
    opts.text_truncate_direction = inferno::flamegraph::TextTruncateDirection::Right;
    if lines.is_empty() {
        // inferno refuses empty input; an empty profile is still a valid answer.
        opts.title = "pyebpf: on-CPU (no samples)".to_string();
        let placeholder = ["[no samples] 1"];
        flamegraph::from_lines(&mut opts, placeholder.iter().copied(), w)?;
    } else {
        flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), w)?;
    }
    Ok(())
}
