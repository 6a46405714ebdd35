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
    instance_cells, process_cells,
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
}

pub fn run(mut source: Source, interval: Duration, sort_by: SortBy) -> anyhow::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let mut prev = source.sample()?;
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
        source: source.describe(),
        interval,
    };
    let mut next = Instant::now() + interval;
    loop {
        terminal.draw(|f| draw(f, &mut st))?;
        if STOP.load(Ordering::Relaxed) {
            return Ok(());
        }
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait.min(Duration::from_millis(250)))? {
            if let Event::Key(k) = event::read()? {
                if k.kind == KeyEventKind::Press && !key(&mut st, k) {
                    return Ok(());
                }
            }
            continue;
        }
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + interval;
        match source.sample() {
            Ok(cur) => {
                let mut v = compute(&prev, &cur);
                sort(&mut v, st.sort, st.reverse);
                st.view = Some(v);
                st.error = None;
                prev = cur;
            }
            // Keep showing the last view; say what went wrong.
            Err(e) => st.error = Some(format!("{e:#}")),
        }
    }
}

/// Handles a key; false to quit.
fn key(st: &mut State, k: KeyEvent) -> bool {
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return false;
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
        return true;
    }
    match k.code {
        KeyCode::Char('q') | KeyCode::Esc => return false,
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
    true
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
    f.render_widget(
        Paragraph::new(format!(
            "probe top - {} - sort: {:?}{}{} - {status}",
            st.source,
            st.sort,
            if st.reverse { " (reversed)" } else { "" },
            filter
        ))
        .style(Style::default().add_modifier(Modifier::BOLD)),
        header,
    );
    f.render_widget(
        Paragraph::new(
            "q quit  up/down select  enter processes  s/1-8 sort  r reverse  / filter   \
             ! noisy (dominates while others' latency rises)  ~ suffering",
        )
        .style(Style::default().fg(Color::DarkGray)),
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
        assert!(key(&mut st, press(KeyCode::Char('s'))));
        assert_eq!(st.sort, SortBy::Runq);
        assert!(key(&mut st, press(KeyCode::Char('1'))));
        assert_eq!(st.sort, SortBy::Name);
        assert!(key(&mut st, press(KeyCode::Char('/'))));
        assert!(
            key(&mut st, press(KeyCode::Char('q'))),
            "typed into the filter"
        );
        assert_eq!(st.filter, "q");
        assert!(key(&mut st, press(KeyCode::Enter)));
        assert!(!key(&mut st, press(KeyCode::Char('q'))));
        assert!(!key(
            &mut st,
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
        ));
    }
}
