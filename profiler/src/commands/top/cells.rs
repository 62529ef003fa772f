//! How `top` draws numbers: seconds, shares per category, and stacked bars of the split
//! (letters in plain text, colours in the terminal view).
use ratatui::{
    style::{Color, Style},
    text::{Line, Span},
};

use crate::model::{CATEGORIES, Category, FunctionProfile, Totals};

pub(super) fn share(part: u64, whole: u64) -> f64 {
    if whole > 0 { 100.0 * part as f64 / whole as f64 } else { 0.0 }
}

/// One cell per category: its share of `wall`, in percent.
pub(super) fn category_cells(totals: &Totals, wall: u64) -> Vec<String> {
    CATEGORIES.iter().map(|&c| format!("{:.1}", share(totals[c], wall))).collect()
}

/// The letter a category's part of a bar is drawn with.
pub(super) fn category_letter(c: Category) -> char {
    // One letter each, spelled out: first letters collide (ipc and idle, cpu...).
    match c {
        Category::Cpu => 'C',
        Category::Runqueue => 'Q',
        Category::Net => 'N',
        Category::Disk => 'D',
        Category::Lock => 'L',
        Category::Gil => 'G',
        Category::Sleep => 'S',
        Category::Ipc => 'P',
        Category::Idle => 'I',
        Category::Other => 'O',
    }
}

pub(super) fn category_color(c: Category) -> Color {
    match c {
        Category::Cpu => Color::Rgb(0xe8, 0x74, 0x3b),
        Category::Runqueue => Color::Rgb(0xf2, 0xc9, 0x4c),
        Category::Net => Color::Rgb(0x2f, 0x80, 0xed),
        Category::Disk => Color::Rgb(0x27, 0xae, 0x60),
        Category::Lock => Color::Rgb(0x9b, 0x51, 0xe0),
        Category::Gil => Color::Rgb(0xeb, 0x57, 0x57),
        Category::Sleep => Color::Rgb(0xbd, 0xbd, 0xbd),
        Category::Ipc => Color::Rgb(0x56, 0xcc, 0xf2),
        #[allow(unreachable_patterns, reason = "categories added later get the default grey")]
        _ => Color::Rgb(0x82, 0x82, 0x82),
    }
}

/// A stacked bar of `width` cells: each category gets cells in proportion to its share
/// (largest remainders first, so the cells add up to the width when there is any time).
pub(super) fn bar(totals: &Totals, wall: u64, width: usize) -> Vec<(Category, usize)> {
    if wall == 0 {
        return Vec::new();
    }
    let exact: Vec<(Category, f64)> =
        CATEGORIES.iter().map(|&c| (c, totals[c] as f64 * width as f64 / wall as f64)).collect();
    let mut cells: Vec<(Category, usize, f64)> =
        exact.iter().map(|&(c, x)| (c, x.floor() as usize, x - x.floor())).collect();
    let mut left = width.saturating_sub(cells.iter().map(|c| c.1).sum());
    let mut order: Vec<usize> = (0..cells.len()).collect();
    order.sort_by(|&a, &b| cells[b].2.total_cmp(&cells[a].2));
    for i in order {
        if left == 0 || cells[i].2 < 0.05 {
            break;
        }
        cells[i].1 += 1;
        left -= 1;
    }
    cells.into_iter().filter(|c| c.1 > 0).map(|(c, n, _)| (c, n)).collect()
}

pub(super) fn bar_text(totals: &Totals, wall: u64, width: usize) -> String {
    let mut s: String =
        bar(totals, wall, width).into_iter().flat_map(|(c, n)| std::iter::repeat_n(category_letter(c), n)).collect();
    while s.chars().count() < width {
        s.push('.');
    }
    s
}

pub(super) fn bar_line(totals: &Totals, wall: u64, width: usize) -> Line<'static> {
    let mut spans: Vec<Span> = bar(totals, wall, width)
        .into_iter()
        .map(|(c, n)| {
            Span::styled(
                std::iter::repeat_n(category_letter(c), n).collect::<String>(),
                Style::default().bg(category_color(c)).fg(Color::Black),
            )
        })
        .collect();
    let used: usize = spans.iter().map(|s| s.content.chars().count()).sum();
    if used < width {
        spans.push(Span::raw(".".repeat(width - used)));
    }
    Line::from(spans)
}

pub(super) fn secs(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1e9)
}

pub(super) fn short_version(v: Option<&str>) -> String {
    v.map(|v| v.split('.').take(2).collect::<Vec<_>>().join(".")).unwrap_or_else(|| "-".into())
}

pub(super) fn truncate(text: &str, width: usize) -> String {
    crate::output::summary::truncate_with(text, width, '~')
}

pub(super) const BAR_WIDTH: usize = 20;

pub(super) fn category_header() -> Vec<String> {
    CATEGORIES.iter().map(|c| format!("{}%", c.name())).collect()
}

pub(super) fn function_cells(f: &FunctionProfile) -> Vec<String> {
    let mut cells = vec![secs(f.wall_ns)];
    cells.extend(category_cells(&f.totals_ns, f.wall_ns));
    cells.push(format!("{} ({})", f.function, f.file));
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_has_its_own_letter() {
        let letters: std::collections::HashSet<char> = CATEGORIES.iter().map(|&c| category_letter(c)).collect();
        assert_eq!(letters.len(), CATEGORIES.len());
        assert!(!letters.contains(&'.'), "'.' fills the unused part of a bar");
    }

    #[test]
    fn bars_add_up_to_their_width() {
        let totals: Totals = [(Category::Cpu, 40), (Category::Sleep, 59), (Category::Net, 1)].into_iter().collect();
        let b = bar(&totals, 100, 20);
        assert_eq!(b.iter().map(|x| x.1).sum::<usize>(), 20);
        assert_eq!(b.iter().find(|x| x.0 == Category::Cpu).unwrap().1, 8);
        assert_eq!(bar_text(&totals, 100, 20), "CCCCCCCCSSSSSSSSSSSS");
        assert_eq!(bar_text(&totals, 0, 4), "....");
        assert_eq!(category_cells(&totals, 100)[0], "40.0");
    }
}
