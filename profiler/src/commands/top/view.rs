//! `top`'s terminal view (ratatui): the process or thread table with category shares and
//! bars, the selected process's Python functions, and the key legend.
use ratatui::{
    DefaultTerminal, Frame,
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table, TableState},
};

use super::{State, cells::*, header_line, sorted_threads, text::write_text};
use crate::model::{CATEGORIES, Category, Totals};

pub(super) enum Screen {
    Tui(DefaultTerminal),
    /// Plain text, with the number of process rows per block.
    Text(usize),
}

impl Screen {
    pub(super) fn tui() -> anyhow::Result<Self> {
        // ratatui's init also installs a panic hook that restores the terminal.
        let terminal = ratatui::try_init().map_err(|e| {
            ratatui::restore();
            anyhow::anyhow!("cannot set up the terminal: {e}")
        })?;
        Ok(Screen::Tui(terminal))
    }

    pub(super) fn draw(&mut self, state: &mut State) -> anyhow::Result<()> {
        match self {
            Screen::Tui(terminal) => {
                terminal.draw(|frame| render(frame, state))?;
            }
            Screen::Text(rows) => {
                let stdout = std::io::stdout();
                // A closed stdout (piped into `head`) ends top quietly.
                if let Err(e) = write_text(state, *rows, &mut stdout.lock())
                    && e.kind() == std::io::ErrorKind::BrokenPipe
                {
                    state.quit = true;
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
    // The functions pane: 12 lines (9 functions), or half a taller terminal. Threads blocked
    // all along carry their functions too, so a busy process has more than 9 worth seeing.
    let functions_height = (frame.area().height / 2).max(12);
    let [header, main, functions, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(6),
        Constraint::Length(functions_height),
        Constraint::Length(1),
    ])
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
    let numbers = |totals: &Totals, wall: u64| -> Vec<Cell<'static>> {
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
                        right(secs(t.totals_ns[Category::Cpu])),
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
                        right(secs(p.totals_ns[Category::Cpu])),
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
