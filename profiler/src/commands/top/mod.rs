//! `pyebpf top`: a live view of where processes and threads spend their time, refreshed every
//! interval from one [`Session`] rotated into windows.
//!
//! On a terminal it is a full-screen ratatui view (keys to sort, filter and drill into a
//! process); the terminal is restored on quit, Ctrl-C, SIGTERM, errors and panics. When stdout
//! is not a terminal it prints the same table as plain text every interval.
use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write},
    time::{Duration, Instant},
};

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table, TableState},
};

use crate::{
    cli::{SortKey, TopArgs},
    commands::runner::{self, Stop},
    engine::{session::Session, target::TargetSpec, window},
    model::{CATEGORIES, Category, ProcessProfile, Profile},
};

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    runner::preflight(&args.sampling)?;
    let target = TargetSpec::resolve(args.target.all || args.target.pids.is_empty(), &args.target.pids, &[])?;
    let mode = runner::mode(None, &args.sampling)?;
    let mut stop = Stop::catch_signals()?;
    let mut session = Session::start(runner::session_config(target, &args.sampling, mode, false))?;
    let mut state = State::new(args.sort);
    let mut screen = if std::io::stdout().is_terminal() { Screen::tui()? } else { Screen::Text(args.rows) };
    screen.draw(&mut state)?;

    stop.start_clock(args.duration);
    let mut last = Instant::now();
    let reason = runner::drive(&mut session, &mut stop, |session| {
        let mut redraw = false;
        if let Screen::Tui(_) = screen {
            while event::poll(Duration::ZERO)? {
                match event::read()? {
                    Event::Key(key) if key.kind != KeyEventKind::Release => {
                        if state.key(key) == Action::Quit {
                            break;
                        }
                        redraw = true;
                    }
                    Event::Resize(..) => redraw = true,
                    _ => {}
                }
            }
            if state.quit {
                return Ok(Some("quit".to_string()));
            }
        }
        if last.elapsed() >= args.interval {
            last = Instant::now();
            state.add_window(session.rotate());
            redraw = true;
        }
        if redraw {
            screen.draw(&mut state)?;
            if state.quit {
                return Ok(Some("output closed".to_string()));
            }
        }
        Ok(None)
    })
    .await?;
    drop(screen);
    session.stop();
    if !matches!(reason.as_str(), "quit" | "interrupted" | "output closed" | "duration reached") {
        eprintln!("pyebpf top: stopped: {reason}");
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Action {
    None,
    Quit,
}

/// What is shown, and the data it is shown from.
struct State {
    sort: SortKey,
    /// Since start (true) or the last interval.
    cumulative: bool,
    filter: String,
    editing_filter: bool,
    /// The selected process (list view) or thread (drilled in), kept by id across refreshes.
    selected: Option<u32>,
    /// The process drilled into.
    drill: Option<u32>,
    quit: bool,
    started: Instant,
    last: Option<Profile>,
    total: Option<Profile>,
}

impl State {
    fn new(sort: SortKey) -> Self {
        State {
            sort,
            cumulative: false,
            filter: String::new(),
            editing_filter: false,
            selected: None,
            drill: None,
            quit: false,
            started: Instant::now(),
            last: None,
            total: None,
        }
    }

    fn add_window(&mut self, w: Profile) {
        match &mut self.total {
            Some(total) => window::merge(total, &w),
            None => self.total = Some(w.clone()),
        }
        self.last = Some(w);
    }

    fn profile(&self) -> Option<&Profile> {
        if self.cumulative { self.total.as_ref() } else { self.last.as_ref() }
    }

    /// Processes shown: filtered, sorted.
    fn processes(&self) -> Vec<&ProcessProfile> {
        let Some(p) = self.profile() else { return Vec::new() };
        let filter = self.filter.to_lowercase();
        let mut rows: Vec<&ProcessProfile> = p
            .processes
            .iter()
            .filter(|p| {
                filter.is_empty()
                    || p.pid.to_string() == filter
                    || p.comm.to_lowercase().contains(&filter)
                    || p.cmdline.as_deref().is_some_and(|c| c.to_lowercase().contains(&filter))
            })
            .collect();
        rows.sort_by(|a, b| {
            sort_value(self.sort, &b.totals_ns, b.wall_ns)
                .cmp(&sort_value(self.sort, &a.totals_ns, a.wall_ns))
                .then(a.pid.cmp(&b.pid))
        });
        rows
    }

    fn drilled(&self) -> Option<&ProcessProfile> {
        let pid = self.drill?;
        self.profile()?.processes.iter().find(|p| p.pid == pid)
    }

    /// Ids of the rows of the main table (pids, or tids when drilled in).
    fn row_ids(&self) -> Vec<u32> {
        match self.drill {
            Some(_) => {
                self.drilled().map(|p| sorted_threads(p, self.sort).iter().map(|t| t.tid).collect()).unwrap_or_default()
            }
            None => self.processes().iter().map(|p| p.pid).collect(),
        }
    }

    fn selected_index(&self) -> Option<usize> {
        let ids = self.row_ids();
        match self.selected {
            Some(id) => ids.iter().position(|&i| i == id).or(if ids.is_empty() { None } else { Some(0) }),
            None => (!ids.is_empty()).then_some(0),
        }
    }

    /// The process whose functions are shown: the one drilled into, else the selected one.
    fn focus(&self) -> Option<&ProcessProfile> {
        if self.drill.is_some() {
            return self.drilled();
        }
        let rows = self.processes();
        let i = self.selected_index()?;
        rows.get(i).copied()
    }

    fn key(&mut self, key: KeyEvent) -> Action {
        let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
        if ctrl_c {
            self.quit = true;
            return Action::Quit;
        }
        if self.editing_filter {
            match key.code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.selected = None;
            return Action::None;
        }
        let ids = self.row_ids();
        let index = self.selected_index();
        match key.code {
            KeyCode::Char('q') => {
                self.quit = true;
                return Action::Quit;
            }
            KeyCode::Char('c') => self.sort = SortKey::Cpu,
            KeyCode::Char('w') => self.sort = SortKey::Wall,
            KeyCode::Char('s') => self.sort = if self.sort == SortKey::Cpu { SortKey::Wall } else { SortKey::Cpu },
            KeyCode::Char('a') => self.cumulative = !self.cumulative,
            KeyCode::Char('/') => {
                self.editing_filter = true;
                self.filter.clear();
            }
            KeyCode::Down | KeyCode::Char('j') => {
                if let Some(i) = index {
                    self.selected = ids.get((i + 1).min(ids.len().saturating_sub(1))).copied();
                }
            }
            KeyCode::Up | KeyCode::Char('k') => {
                if let Some(i) = index {
                    self.selected = ids.get(i.saturating_sub(1)).copied();
                }
            }
            KeyCode::Enter | KeyCode::Right if self.drill.is_none() => {
                if let Some(p) = self.focus() {
                    self.drill = Some(p.pid);
                    self.selected = None;
                }
            }
            KeyCode::Esc | KeyCode::Left | KeyCode::Backspace if self.drill.is_some() => {
                self.selected = self.drill.take();
            }
            KeyCode::Esc => self.filter.clear(),
            _ => {}
        }
        Action::None
    }
}

fn sort_value(sort: SortKey, totals: &BTreeMap<String, u64>, wall: u64) -> u64 {
    match sort {
        SortKey::Cpu => totals.get("cpu").copied().unwrap_or(0),
        SortKey::Wall => wall,
    }
}

fn sorted_threads(p: &ProcessProfile, sort: SortKey) -> Vec<&crate::model::profile::ThreadProfile> {
    let mut threads: Vec<_> = p.threads.iter().collect();
    threads.sort_by(|a, b| {
        sort_value(sort, &b.totals_ns, b.wall_ns)
            .cmp(&sort_value(sort, &a.totals_ns, a.wall_ns))
            .then(a.tid.cmp(&b.tid))
    });
    threads
}

fn share(part: u64, whole: u64) -> f64 {
    if whole > 0 { 100.0 * part as f64 / whole as f64 } else { 0.0 }
}

/// One cell per category: its share of `wall`, in percent.
fn category_cells(totals: &BTreeMap<String, u64>, wall: u64) -> Vec<String> {
    CATEGORIES.iter().map(|c| format!("{:.1}", share(totals.get(c.name()).copied().unwrap_or(0), wall))).collect()
}

/// The letter a category's part of a bar is drawn with.
fn category_letter(c: Category) -> char {
    match c {
        Category::Runqueue => 'Q',
        _ => c.name().chars().next().unwrap_or('?').to_ascii_uppercase(),
    }
}

fn category_color(c: Category) -> Color {
    match c {
        Category::Cpu => Color::Rgb(0xe8, 0x74, 0x3b),
        Category::Runqueue => Color::Rgb(0xf2, 0xc9, 0x4c),
        Category::Net => Color::Rgb(0x2f, 0x80, 0xed),
        Category::Disk => Color::Rgb(0x27, 0xae, 0x60),
        Category::Lock => Color::Rgb(0x9b, 0x51, 0xe0),
        Category::Gil => Color::Rgb(0xeb, 0x57, 0x57),
        Category::Sleep => Color::Rgb(0xbd, 0xbd, 0xbd),
        Category::Ipc => Color::Rgb(0x56, 0xcc, 0xf2),
        #[allow(unreachable_patterns)]
        _ => Color::Rgb(0x82, 0x82, 0x82),
    }
}

/// A stacked bar of `width` cells: each category gets cells in proportion to its share
/// (largest remainders first, so the cells add up to the width when there is any time).
fn bar(totals: &BTreeMap<String, u64>, wall: u64, width: usize) -> Vec<(Category, usize)> {
    if wall == 0 {
        return Vec::new();
    }
    let exact: Vec<(Category, f64)> = CATEGORIES
        .iter()
        .map(|c| (*c, totals.get(c.name()).copied().unwrap_or(0) as f64 * width as f64 / wall as f64))
        .collect();
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

fn bar_text(totals: &BTreeMap<String, u64>, wall: u64, width: usize) -> String {
    let mut s: String =
        bar(totals, wall, width).into_iter().flat_map(|(c, n)| std::iter::repeat_n(category_letter(c), n)).collect();
    while s.chars().count() < width {
        s.push('.');
    }
    s
}

fn bar_line(totals: &BTreeMap<String, u64>, wall: u64, width: usize) -> Line<'static> {
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

fn secs(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1e9)
}

fn short_version(v: Option<&str>) -> String {
    v.map(|v| v.split('.').take(2).collect::<Vec<_>>().join(".")).unwrap_or_else(|| "-".into())
}

fn truncate(text: &str, width: usize) -> String {
    crate::output::summary::truncate_with(text, width, '~')
}

const BAR_WIDTH: usize = 20;

fn header_line(state: &State) -> String {
    let (span, processes, lost) = match state.profile() {
        Some(p) => (p.duration_ns as f64 / 1e9, p.processes.len(), p.lost_events),
        None => (0.0, 0, 0),
    };
    format!(
        "pyebpf top  {}: {span:.1} s  processes: {processes}  sort: {}  lost events: {lost}{}",
        if state.cumulative { "since start" } else { "last interval" },
        state.sort.name(),
        if state.filter.is_empty() && !state.editing_filter {
            String::new()
        } else {
            format!("  filter: {}", state.filter)
        },
    )
}

fn category_header() -> Vec<String> {
    CATEGORIES.iter().map(|c| format!("{}%", c.name())).collect()
}

fn function_cells(f: &crate::model::profile::FunctionProfile) -> Vec<String> {
    let mut cells = vec![secs(f.wall_ns)];
    cells.extend(category_cells(&f.totals_ns, f.wall_ns));
    cells.push(format!("{} ({})", f.function, f.file));
    cells
}

/// Plain-text output (stdout is not a terminal): one block per interval.
fn write_text(state: &State, rows: usize, w: &mut dyn Write) -> std::io::Result<()> {
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
            secs(p.totals_ns.get("cpu").copied().unwrap_or(0)),
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

enum Screen {
    Tui(DefaultTerminal),
    /// Plain text, with the number of process rows per block.
    Text(usize),
}

impl Screen {
    fn tui() -> anyhow::Result<Self> {
        // ratatui's init also installs a panic hook that restores the terminal.
        let terminal = ratatui::try_init().map_err(|e| {
            ratatui::restore();
            anyhow::anyhow!("cannot set up the terminal: {e}")
        })?;
        Ok(Screen::Tui(terminal))
    }

    fn draw(&mut self, state: &mut State) -> anyhow::Result<()> {
        match self {
            Screen::Tui(terminal) => {
                terminal.draw(|frame| render(frame, state))?;
            }
            Screen::Text(rows) => {
                let stdout = std::io::stdout();
                // A closed stdout (piped into `head`) ends top quietly.
                if let Err(e) = write_text(state, *rows, &mut stdout.lock()) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        state.quit = true;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if let Screen::Tui(terminal) = self {
            let _ = terminal.show_cursor();
            ratatui::restore();
        }
    }
}

fn render(frame: &mut Frame, state: &State) {
    let [header, main, functions, footer] =
        Layout::vertical([Constraint::Length(2), Constraint::Min(6), Constraint::Length(12), Constraint::Length(1)])
            .areas(frame.area());

    let mut title = header_line(state);
    if let Some(p) = state.drilled() {
        title = format!("{title}  |  process {} ({})  Esc: back", p.pid, p.comm);
    }
    let legend: Vec<Span> = CATEGORIES
        .iter()
        .flat_map(|c| {
            [
                Span::styled(category_letter(*c).to_string(), Style::default().bg(category_color(*c)).fg(Color::Black)),
                Span::raw(format!(" {}  ", c.name())),
            ]
        })
        .collect();
    frame.render_widget(
        Paragraph::new(vec![
            Line::from(Span::styled(title, Style::default().add_modifier(Modifier::BOLD))),
            Line::from(legend),
        ]),
        header,
    );

    let cats = category_header();
    let mut widths = vec![
        Constraint::Length(8),
        Constraint::Length(16),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    widths.extend(cats.iter().map(|c| Constraint::Length(c.len().max(5) as u16)));
    widths.push(Constraint::Length(BAR_WIDTH as u16));
    let numbers = |totals: &BTreeMap<String, u64>, wall: u64| -> Vec<Cell<'static>> {
        category_cells(totals, wall).into_iter().map(|c| Cell::from(Line::from(c).right_aligned())).collect()
    };
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    let (head, rows): (Vec<String>, Vec<Row>) = match state.drilled() {
        Some(p) => (
            ["TID", "THREAD", "", "CPU s", "WALL s"].map(String::from).to_vec(),
            sorted_threads(p, state.sort)
                .into_iter()
                .map(|t| {
                    let mut cells = vec![
                        right(t.tid.to_string()),
                        Cell::from(truncate(t.python_name.as_deref().unwrap_or(&t.name), 16)),
                        Cell::from(""),
                        right(secs(t.totals_ns.get("cpu").copied().unwrap_or(0))),
                        right(secs(t.wall_ns)),
                    ];
                    cells.extend(numbers(&t.totals_ns, t.wall_ns));
                    cells.push(Cell::from(bar_line(&t.totals_ns, t.wall_ns, BAR_WIDTH)));
                    Row::new(cells)
                })
                .collect(),
        ),
        None => (
            ["PID", "COMMAND", "PY", "CPU s", "WALL s"].map(String::from).to_vec(),
            state
                .processes()
                .into_iter()
                .map(|p| {
                    let mut cells = vec![
                        right(p.pid.to_string()),
                        Cell::from(truncate(&p.comm, 16)),
                        Cell::from(short_version(p.python_version.as_deref())),
                        right(secs(p.totals_ns.get("cpu").copied().unwrap_or(0))),
                        right(secs(p.wall_ns)),
                    ];
                    cells.extend(numbers(&p.totals_ns, p.wall_ns));
                    cells.push(Cell::from(bar_line(&p.totals_ns, p.wall_ns, BAR_WIDTH)));
                    Row::new(cells)
                })
                .collect(),
        ),
    };
    let mut head: Vec<Cell> = head.into_iter().map(Cell::from).collect();
    head.extend(cats.iter().map(|c| Cell::from(Line::from(c.clone()).right_aligned())));
    head.push(Cell::from("SPLIT"));
    let empty = state.profile().is_none();
    let table = Table::new(rows, widths.clone())
        .header(Row::new(head).style(Style::default().add_modifier(Modifier::REVERSED)))
        .row_highlight_style(Style::default().add_modifier(Modifier::BOLD).fg(Color::Cyan))
        .highlight_symbol("> ")
        .block(Block::default().title(if empty { " collecting the first interval… " } else { "" }));
    let mut table_state = TableState::default().with_selected(state.selected_index());
    frame.render_stateful_widget(table, main, &mut table_state);

    let focus = state.focus();
    let mut fwidths = vec![Constraint::Length(8)];
    fwidths.extend(cats.iter().map(|c| Constraint::Length(c.len().max(5) as u16)));
    fwidths.push(Constraint::Min(20));
    let frows: Vec<Row> = focus
        .map(|p| {
            p.functions
                .iter()
                .map(|f| {
                    let cells = function_cells(f);
                    let n = cells.len();
                    Row::new(
                        cells.into_iter().enumerate().map(|(i, c)| if i + 1 == n { Cell::from(c) } else { right(c) }),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut fhead = vec![Cell::from(Line::from("WALL s").right_aligned())];
    fhead.extend(cats.iter().map(|c| Cell::from(Line::from(c.clone()).right_aligned())));
    fhead.push(Cell::from("PYTHON FUNCTION (inclusive)"));
    let ftitle = match focus {
        Some(p) => format!(" Python functions of {} ({}) ", p.pid, p.comm),
        None => " Python functions ".to_string(),
    };
    frame.render_widget(
        Table::new(frows, fwidths)
            .header(Row::new(fhead).style(Style::default().add_modifier(Modifier::REVERSED)))
            .block(Block::bordered().title(ftitle)),
        functions,
    );

    let help = if state.editing_filter {
        format!("filter: {}_   (Enter: apply, Esc: clear)", state.filter)
    } else {
        "q quit  ↑↓ select  Enter drill in  Esc back  c/w sort by cpu/wall  a interval/since start  / filter"
            .to_string()
    };
    frame.render_widget(Paragraph::new(help).style(Style::default().add_modifier(Modifier::REVERSED)), footer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_add_up_to_their_width() {
        let totals: BTreeMap<String, u64> =
            [("cpu".to_string(), 40), ("sleep".to_string(), 59), ("net".to_string(), 1)].into_iter().collect();
        let b = bar(&totals, 100, 20);
        assert_eq!(b.iter().map(|x| x.1).sum::<usize>(), 20);
        assert_eq!(b.iter().find(|x| x.0 == Category::Cpu).unwrap().1, 8);
        assert_eq!(bar_text(&totals, 100, 20), "CCCCCCCCSSSSSSSSSSSS");
        assert_eq!(bar_text(&totals, 0, 4), "....");
        assert_eq!(category_cells(&totals, 100)[0], "40.0");
    }
}
