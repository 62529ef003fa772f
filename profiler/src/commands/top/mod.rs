//! `pyebpf top`: a live view of where processes and threads spend their time, refreshed every
//! interval from one [`Session`] rotated into windows.
//!
//! On a terminal it is a full-screen ratatui view (keys to sort, filter and drill into a
//! process); the terminal is restored on quit, Ctrl-C, SIGTERM, errors and panics. When stdout
//! is not a terminal it prints the same table as plain text every interval.
mod cells;
mod text;
mod view;

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use self::view::Screen;
use crate::{
    cli::{SortKey, TopArgs},
    commands::runner::{self, Stop},
    engine::{session::Session, target::TargetSpec, window},
    model::{Category, ProcessProfile, Profile, ThreadProfile, Totals},
};

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    runner::preflight(&args.sampling)?;
    let children =
        runner::subprocesses(&args.target.subprocesses, args.target.all(), !args.target.containers.is_empty())?;
    let target =
        TargetSpec::resolve(args.target.all(), &args.target.pids, &args.target.containers, &[], children, false)?;
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

fn sort_value(sort: SortKey, totals: &Totals, wall: u64) -> u64 {
    match sort {
        SortKey::Cpu => totals[Category::Cpu],
        SortKey::Wall => wall,
    }
}

fn sorted_threads(p: &ProcessProfile, sort: SortKey) -> Vec<&ThreadProfile> {
    let mut threads: Vec<_> = p.threads.iter().collect();
    threads.sort_by(|a, b| {
        sort_value(sort, &b.totals_ns, b.wall_ns)
            .cmp(&sort_value(sort, &a.totals_ns, a.wall_ns))
            .then(a.tid.cmp(&b.tid))
    });
    threads
}

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
