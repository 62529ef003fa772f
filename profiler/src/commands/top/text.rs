//! `top` when stdout is not a terminal: one plain-text block per interval.
use std::io::Write;

use super::{
    State,
    cells::{BAR_WIDTH, bar_text, category_cells, category_header, function_cells, secs, short_version, truncate},
    header_line,
};
use crate::model::Category;

/// Plain-text output (stdout is not a terminal): one block per interval.
pub(super) fn write_text(state: &State, rows: usize, w: &mut dyn Write) -> std::io::Result<()> {
    let Some(_) = state.profile() else { return Ok(()) };
    writeln!(w, "{}  (after {:.1} s)", header_line(state), state.started.elapsed().as_secs_f64())?;
    let cats = category_header();
    write!(w, "{:>8} {:<16} {:<5} {:>8} {:>8}", "PID", "COMMAND", "PY", "CPU s", "WALL s")?;
    for c in &cats {
        write!(w, " {c:>9}")?;
    }
    writeln!(w, "  {:<BAR_WIDTH$}", "SPLIT")?;
    for p in state.processes().into_iter().take(rows) {
        write!(
            w,
            "{:>8} {:<16} {:<5} {:>8} {:>8}",
            p.pid,
            truncate(&p.comm, 16),
            short_version(p.python_version.as_deref()),
            secs(p.totals_ns[Category::Cpu]),
            secs(p.wall_ns)
        )?;
        for c in category_cells(&p.totals_ns, p.wall_ns) {
            write!(w, " {c:>9}")?;
        }
        writeln!(w, "  {}", bar_text(&p.totals_ns, p.wall_ns, BAR_WIDTH))?;
    }
    if let Some(p) = state.processes().into_iter().find(|p| !p.functions.is_empty()) {
        writeln!(w, "Python functions of {} ({}), inclusive:", p.pid, p.comm)?;
        for f in p.functions.iter().take(8) {
            let cells = function_cells(f);
            write!(w, "{:>8}", cells[0])?;
            for c in &cells[1..cells.len() - 1] {
                write!(w, " {c:>9}")?;
            }
            writeln!(w, "  {}", cells[cells.len() - 1])?;
        }
    }
    writeln!(w)?;
    w.flush()
}
