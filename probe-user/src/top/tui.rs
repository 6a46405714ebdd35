//! The interactive view. The terminal is restored however it ends: `q`, Ctrl-C, SIGTERM or
//! SIGHUP (checked between key presses), an error (the guard's Drop), or a panic (ratatui's
//! panic hook).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
    Frame,
};

use super::{
    instance_cells,
    past::Cursor,
    process_cells,
    source::Source,
    view::{compute, sort, SortBy, View},
    INSTANCE_COLUMNS, PROCESS_COLUMNS,
};

/// Below this size the table cannot show its columns; the view says so instead.
pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 10;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Restores the terminal when dropped (errors and early returns).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Where the views come from: now (a daemon or probe's own programs), or history (`--at`).
pub enum Feed {
    Live(Source),
    Past(Cursor),
}

/// What a key asks for.
#[derive(Debug, PartialEq)]
enum Action {
    Quit,
    Redraw,
    /// History: move by frames, by milliseconds, or to a TIME.
    Step(i64),
    Shift(i64),
    Jump(String),
}

struct State {
    view: Option<View>,
    error: Option<String>,
    sort: SortBy,
    reverse: bool,
    filter: String,
    editing_filter: bool,
    show_processes: bool,
    selected: TableState,
    source: String,
    interval: Duration,
    /// History: the moment shown (unix ms), and a TIME being typed after `g`.
    at_ms: Option<i64>,
    editing_time: Option<String>,
}

pub fn run(mut feed: Feed, interval: Duration, sort_by: SortBy) -> anyhow::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let (mut prev, describe) = match &mut feed {
        Feed::Live(source) => (Some(source.sample()?), source.describe()),
        Feed::Past(cursor) => (None, cursor.describe()),
    };
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let mut st = State {
        view: None,
        error: None,
        sort: sort_by,
        reverse: false,
        filter: String::new(),
        editing_filter: false,
        show_processes: false,
        selected: TableState::default().with_selected(Some(0)),
        source: describe,
        interval,
        at_ms: None,
        editing_time: None,
    };
    if let Feed::Past(cursor) = &feed {
        show_past(&mut st, cursor);
    }
    let mut next = Instant::now() + interval;
    loop {
        terminal.draw(|f| draw(f, &mut st))?;
        if STOP.load(Ordering::Relaxed) {
            return Ok(());
        }
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait.min(Duration::from_millis(250)))? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                let action = key(&mut st, k);
                if action == Action::Quit {
                    return Ok(());
                }
                if let Feed::Past(cursor) = &mut feed {
                    let moved = match action {
                        Action::Step(n) => cursor.step(n),
                        Action::Shift(ms) => cursor.shift(ms),
                        Action::Jump(t) => crate::history::time::parse_now(&t)
                            .map_err(anyhow::Error::msg)
                            .and_then(|t| cursor.jump(t)),
                        Action::Quit | Action::Redraw => continue,
                    };
                    match moved {
                        Ok(()) => show_past(&mut st, cursor),
                        Err(e) => st.error = Some(format!("{e:#}")),
                    }
                }
            }
            continue;
        }
        let Feed::Live(source) = &mut feed else {
            // History moves only on keys: nothing to refresh until one comes.
            next = Instant::now() + Duration::from_secs(3_600);
            continue;
        };
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + interval;
        match source.sample() {
            Ok(cur) => {
                if let Some(prev) = &prev {
                    let mut v = compute(prev, &cur);
                    sort(&mut v, st.sort, st.reverse);
                    st.view = Some(v);
                }
                st.error = None;
                prev = Some(cur);
            }
            // Keep showing the last view; say what went wrong.
            Err(e) => st.error = Some(format!("{e:#}")),
        }
    }
}

/// The view at the cursor, and the moment in the header.
fn show_past(st: &mut State, cursor: &Cursor) {
    st.at_ms = Some(cursor.at_ms);
    match cursor.view() {
        Ok(mut v) => {
            sort(&mut v, st.sort, st.reverse);
            st.view = Some(v);
            st.error = None;
        }
        Err(e) => {
            st.view = None;
            st.error = Some(format!("{e:#}"));
        }
    }
}

/// Handles a key.
fn key(st: &mut State, k: KeyEvent) -> Action {
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Action::Quit;
    }
    if let Some(t) = &mut st.editing_time {
        match k.code {
            KeyCode::Enter => {
                let t = std::mem::take(t);
                st.editing_time = None;
                return Action::Jump(t);
            }
            KeyCode::Esc => st.editing_time = None,
            KeyCode::Backspace => {
                t.pop();
            }
            KeyCode::Char(c) if !c.is_control() && t.len() < 40 => t.push(c),
            _ => {}
        }
        return Action::Redraw;
    }
    let past = st.at_ms.is_some() && !st.editing_filter;
    match k.code {
        KeyCode::Left if past => return Action::Step(-1),
        KeyCode::Right if past => return Action::Step(1),
        KeyCode::Char('[') if past => return Action::Shift(-60_000),
        KeyCode::Char(']') if past => return Action::Shift(60_000),
        KeyCode::Char('g') if past => {
            st.editing_time = Some(String::new());
            return Action::Redraw;
        }
        _ => {}
    }
    if st.editing_filter {
        match k.code {
            KeyCode::Enter | KeyCode::Esc => st.editing_filter = false,
            KeyCode::Backspace => {
                st.filter.pop();
            }
            KeyCode::Char(c) if !c.is_control() && st.filter.len() < 64 => st.filter.push(c),
            _ => {}
        }
        return Action::Redraw;
    }
    match k.code {
        KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
        KeyCode::Char('s') | KeyCode::Tab => st.sort = st.sort.next(),
        KeyCode::Char('r') => st.reverse = !st.reverse,
        KeyCode::Char('/') => st.editing_filter = true,
        KeyCode::Char('p') | KeyCode::Enter => st.show_processes = !st.show_processes,
        KeyCode::Down | KeyCode::Char('j') => st.selected.select_next(),
        KeyCode::Up | KeyCode::Char('k') => st.selected.select_previous(),
        KeyCode::Char(c @ '1'..='8') => {
            let i = c as usize - '1' as usize;
            st.sort = SortBy::ALL[i];
        }
        _ => {}
    }
    if let Some(v) = &mut st.view {
        sort(v, st.sort, st.reverse);
    }
    Action::Redraw
}

fn draw(f: &mut Frame, st: &mut State) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal too small: {}x{}, probe top needs at least {MIN_WIDTH}x{MIN_HEIGHT} \
             (or use --once)",
            area.width, area.height
        );
        f.render_widget(Paragraph::new(msg), area);
        return;
    }
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    let status = match (&st.view, &st.error) {
        (_, Some(e)) => format!("error: {}", super::view::safe(e)),
        (None, None) => format!("measuring for {:.1}s...", st.interval.as_secs_f64()),
        (Some(v), None) => format!(
            "{} instances over {:.1}s",
            v.instances.len(),
            v.interval_seconds
        ),
    };
    let filter = if st.filter.is_empty() && !st.editing_filter {
        String::new()
    } else {
        format!(
            "  filter: {}{}",
            st.filter,
            if st.editing_filter { "_" } else { "" }
        )
    };
    let (source, header_style) = match st.at_ms {
        Some(t) => (
            format!(
                "HISTORY at {} ({}){}",
                crate::history::time::show_local(t),
                st.source,
                st.editing_time
                    .as_ref()
                    .map(|t| format!(" - go to: {t}_"))
                    .unwrap_or_default()
            ),
            Style::default()
                .add_modifier(Modifier::BOLD)
                .fg(Color::Black)
                .bg(Color::Cyan),
        ),
        None => (
            st.source.clone(),
            Style::default().add_modifier(Modifier::BOLD),
        ),
    };
    f.render_widget(
        Paragraph::new(format!(
            "probe top - {source} - sort: {:?}{}{} - {status}",
            st.sort,
            if st.reverse { " (reversed)" } else { "" },
            filter
        ))
        .style(header_style),
        header,
    );
    let keys = if st.at_ms.is_some() {
        "q quit  left/right frame  [/] minute  g go to time  enter processes  s/1-8 sort  \
         r reverse  / filter  ! noisy  ~ suffering"
    } else {
        "q quit  up/down select  enter processes  s/1-8 sort  r reverse  / filter   \
         ! noisy (dominates while others' latency rises)  ~ suffering"
    };
    f.render_widget(
        Paragraph::new(keys).style(Style::default().fg(Color::DarkGray)),
        footer,
    );
    let Some(view) = &st.view else {
        return;
    };
    let needle = st.filter.to_lowercase();
    let instances: Vec<_> = view
        .instances
        .iter()
        .filter(|i| needle.is_empty() || i.name.to_lowercase().contains(&needle))
        .collect();
    let selected_name = st
        .selected
        .selected()
        .and_then(|i| instances.get(i.min(instances.len().saturating_sub(1))))
        .map(|i| i.name.clone());
    let (inst_area, proc_area) = if st.show_processes {
        let [a, b] =
            Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(body);
        (a, Some(b))
    } else {
        (body, None)
    };
    let rows = instances.iter().map(|i| {
        let style = if !i.noisy.is_empty() {
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else if !i.suffering.is_empty() {
            Style::default().fg(Color::Yellow)
        } else {
            Style::default()
        };
        Row::new(instance_cells(i).into_iter().map(Cell::from)).style(style)
    });
    let widths = [
        Constraint::Length(10),
        Constraint::Min(16),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Min(6),
    ];
    let table = Table::new(rows, widths)
        .header(header_row(&INSTANCE_COLUMNS))
        .block(Block::default().borders(Borders::TOP).title(" instances "))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(table, inst_area, &mut st.selected);
    if let (Some(area), Some(name)) = (proc_area, selected_name) {
        draw_processes(f, area, view, &name);
    }
}

fn draw_processes(f: &mut Frame, area: Rect, view: &View, instance: &str) {
    let rows = view
        .processes
        .iter()
        .filter(|p| p.instance == instance)
        .map(|p| Row::new(process_cells(p).into_iter().map(Cell::from)));
    let widths = [
        Constraint::Length(8),
        Constraint::Min(16),
        Constraint::Min(16),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
    ];
    let title = Line::from(format!(
        " processes of {instance} (the daemon's top-K per resource) "
    ));
    let table = Table::new(rows, widths)
        .header(header_row(&PROCESS_COLUMNS))
        .block(Block::default().borders(Borders::TOP).title(title));
    f.render_widget(table, area);
}

fn header_row(cols: &[&'static str]) -> Row<'static> {
    Row::new(cols.iter().map(|c| Cell::from(*c)))
        .style(Style::default().add_modifier(Modifier::UNDERLINED))
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::top::view::InstanceView;

    fn state(view: Option<View>) -> State {
        State {
            view,
            error: None,
            sort: SortBy::Cpu,
            reverse: false,
            filter: String::new(),
            editing_filter: false,
            show_processes: true,
            selected: TableState::default().with_selected(Some(0)),
            source: "test".into(),
            interval: Duration::from_secs(2),
            at_ms: None,
            editing_time: None,
        }
    }

    fn screen(w: u16, h: u16, st: &mut State) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        t.draw(|f| draw(f, st)).expect("draw");
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..h {
            for x in 0..w {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn a_small_terminal_is_told_so() {
        let s = screen(40, 5, &mut state(None));
        assert!(s.contains("terminal too small: 40x5"), "{s}");
    }

    #[test]
    fn instances_are_drawn_marked_and_escaped() {
        let view = View {
            instances: vec![InstanceView {
                // What a hostile daemon or process could send: it must be shown, not run.
                name: crate::top::view::safe("evil\x1b]0;pwned\x07"),
                cpu_percent: 180.0,
                noisy: vec!["cpu".into()],
                ..InstanceView::default()
            }],
            ..View::default()
        };
        let s = screen(120, 20, &mut state(Some(view)));
        assert!(s.contains("!cpu"), "{s}");
        assert!(s.contains("evil\\x1b]0;pwned\\x07"), "{s}");
        assert!(!s.contains('\x1b'), "no raw escape reaches the terminal");
        assert!(s.contains("processes of evil"), "{s}");
    }

    #[test]
    fn keys_sort_filter_and_quit() {
        let mut st = state(None);
        let press = |c| KeyEvent::new(c, KeyModifiers::NONE);
        assert_eq!(key(&mut st, press(KeyCode::Char('s'))), Action::Redraw);
        assert_eq!(st.sort, SortBy::Runq);
        assert_eq!(key(&mut st, press(KeyCode::Char('1'))), Action::Redraw);
        assert_eq!(st.sort, SortBy::Name);
        assert_eq!(key(&mut st, press(KeyCode::Char('/'))), Action::Redraw);
        assert_eq!(
            key(&mut st, press(KeyCode::Char('q'))),
            Action::Redraw,
            "typed into the filter"
        );
        assert_eq!(st.filter, "q");
        assert_eq!(key(&mut st, press(KeyCode::Enter)), Action::Redraw);
        // Live, the history keys do nothing.
        assert_eq!(key(&mut st, press(KeyCode::Left)), Action::Redraw);
        assert_eq!(key(&mut st, press(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(
            key(
                &mut st,
                KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
            ),
            Action::Quit
        );
    }

    #[test]
    fn history_keys_step_shift_and_jump_and_the_header_says_history() {
        let mut st = state(None);
        st.at_ms = Some(1_796_438_474_000);
        let press = |c| KeyEvent::new(c, KeyModifiers::NONE);
        assert_eq!(key(&mut st, press(KeyCode::Left)), Action::Step(-1));
        assert_eq!(key(&mut st, press(KeyCode::Right)), Action::Step(1));
        assert_eq!(
            key(&mut st, press(KeyCode::Char('['))),
            Action::Shift(-60_000)
        );
        assert_eq!(
            key(&mut st, press(KeyCode::Char(']'))),
            Action::Shift(60_000)
        );
        assert_eq!(key(&mut st, press(KeyCode::Char('g'))), Action::Redraw);
        for c in "03:10".chars() {
            assert_eq!(key(&mut st, press(KeyCode::Char(c))), Action::Redraw);
        }
        let s = screen(120, 20, &mut st);
        assert!(s.contains("HISTORY at "), "{s}");
        assert!(s.contains("go to: 03:10_"), "{s}");
        assert_eq!(
            key(&mut st, press(KeyCode::Enter)),
            Action::Jump("03:10".into())
        );
        assert!(st.editing_time.is_none());
        assert!(!screen(120, 20, &mut st).contains("go to:"));
    }
}
