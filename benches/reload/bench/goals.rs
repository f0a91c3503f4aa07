//! Each figure the project has a goal for, beside the goal, from one run:
//! the table `--markdown` prints for docs/performance.md. [`FIGURES`] is
//! the list the docs test checks that page against, so a figure cannot be
//! dropped from it or reworded there alone.

use std::fmt::Write as _;
use std::time::Duration;

use super::load::Outcome;
use super::report::Report;
use super::scenarios::Mode;
use super::stats::{median, ms};

/// Every figure with a goal, and the goal, in the order shown.
pub const FIGURES: &[(&str, &str)] = &[
    (
        "failed requests during reloads (2 and 4 workers, keep-alive and close)",
        "0",
    ),
    (
        "p99 during keep-alive reloads / steady p99, 2 workers",
        "≤ 1.5×",
    ),
    (
        "p99 during keep-alive reloads / steady p99, 4 workers",
        "≤ 1.5×",
    ),
    (
        "reload time minus the workers' own start-up, per worker",
        "< 5 ms",
    ),
    (
        "master memory, default flags, 4 workers, after 3 reloads, a status and a scrape",
        "anonymous ≤ 1024 KiB, RSS awake ≤ 4096 KiB",
    ),
    ("kill -9 to replacement exec'd, idle (8 workers)", "< 1 ms"),
    (
        "kill -9 to replacement ready, idle (8 workers, a worker that says READY=1 at once)",
        "< 2 ms",
    ),
    (
        "master CPU per worker per reload, largest / smallest from 8 to 1024 workers",
        "≤ 1.2×",
    ),
    ("idle master: CPU ticks and wakeups in 10 s", "0 and 0"),
];

/// One figure: what was measured (None: its scenario did not run), and
/// whether that meets the goal.
pub struct Row {
    pub figure: &'static str,
    pub goal: &'static str,
    pub measured: Option<(String, bool)>,
}

pub fn rows(report: &Report) -> Vec<Row> {
    let measured = [
        failed(report),
        p99_ratio(report, 2),
        p99_ratio(report, 4),
        overhead(report),
        memory(report),
        restart(report, |s| s.restart_exec, Duration::from_millis(1)),
        restart(report, |s| s.restart, Duration::from_millis(2)),
        cpu_growth(report),
        idle(report),
    ];
    FIGURES
        .iter()
        .zip(measured)
        .map(|(&(figure, goal), measured)| Row {
            figure,
            goal,
            measured,
        })
        .collect()
}

/// The goals as a Markdown table.
pub fn markdown(report: &Report) -> String {
    let mut t = String::from("| figure | goal | measured | |\n|---|---|---|---|\n");
    for row in rows(report) {
        let (measured, verdict) = match &row.measured {
            Some((text, true)) => (text.as_str(), "met"),
            Some((text, false)) => (text.as_str(), "**missed**"),
            None => ("not run", ""),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {measured} | {verdict} |",
            row.figure, row.goal
        );
    }
    t
}

/// The goals as text, for the bench's table.
pub fn text(report: &Report) -> String {
    let mut t = String::from("\ngoals\n");
    for row in rows(report) {
        let Some((measured, met)) = &row.measured else {
            continue;
        };
        let verdict = if *met { "met" } else { "MISSED" };
        let _ = writeln!(
            t,
            "  {:<6} {measured} (goal {}): {}",
            verdict, row.goal, row.figure
        );
    }
    t
}

fn failed(report: &Report) -> Option<(String, bool)> {
    if report.reload.is_empty() {
        return None;
    }
    let total: u64 = report
        .reload
        .iter()
        .flat_map(|r| r.failed.iter().map(|f| f.1))
        .sum();
    let served: u64 = report.reload.iter().map(|r| r.served).sum();
    // Silent closes are failures, counted in the total; connections the
    // server closed after its stated idle timeout were replaced, no
    // failure, but shown beside them.
    let silent: u64 = report
        .reload
        .iter()
        .flat_map(|r| &r.failed)
        .filter(|f| f.0 == Outcome::SilentClose)
        .map(|f| f.1)
        .sum();
    let replaced: u64 = report.reload.iter().map(|r| r.samples.idle_closed).sum();
    Some((
        format!(
            "{total} of {served} ({silent} closed while idle; {replaced} idle connections \
             replaced after the server's stated timeout)"
        ),
        total == 0,
    ))
}

fn p99_ratio(report: &Report, workers: usize) -> Option<(String, bool)> {
    let reload = report
        .reload
        .iter()
        .find(|r| r.workers == workers && r.mode == Mode::KeepAlive)?;
    let steady = report
        .steady
        .iter()
        .find(|s| s.workers == workers && s.mode == Mode::KeepAlive)?;
    if steady.latency.p99.is_zero() {
        return None;
    }
    let ratio = reload.during.p99.as_secs_f64() / steady.latency.p99.as_secs_f64();
    // The window's length says how much steady traffic the figure holds:
    // the drains' spread lengthens it; p99.9 shows the tail it dilutes.
    let windows: Vec<Duration> = reload.windows.iter().map(|(a, b)| *b - *a).collect();
    Some((
        format!(
            "{ratio:.2}× ({:.2} / {:.2} ms; p99.9 {:.2} / {:.2} ms; window median {:.0} ms)",
            ms(reload.during.p99),
            ms(steady.latency.p99),
            ms(reload.during.p999),
            ms(steady.latency.p999),
            ms(median(&windows))
        ),
        ratio <= 1.5,
    ))
}

fn overhead(report: &Report) -> Option<(String, bool)> {
    let all: Vec<Duration> = report
        .reload
        .iter()
        .filter_map(|r| r.overhead_per_worker())
        .collect();
    let worst = *all.iter().max()?;
    let shown: Vec<String> = all.iter().map(|d| format!("{:.2}", ms(*d))).collect();
    Some((
        format!("{} ms", shown.join(", ")),
        worst < Duration::from_millis(5),
    ))
}

fn memory(report: &Report) -> Option<(String, bool)> {
    let m = report.memory.as_ref()?;
    Some((
        format!(
            "{} KiB anonymous; RSS {} KiB as the status returned, {} KiB asleep ({} \
             file-backed, shared)",
            m.anon_kib, m.awake_kib, m.rss_kib, m.file_kib
        ),
        // What the master holds of its own, and what it touches as it
        // works. Not RSS asleep: that once counted only the binary's pages
        // the master dropped when idle, which stayed cached and charged to
        // the cgroup all the same (#35), and it no longer drops them.
        m.anon_kib <= 1024 && m.awake_kib <= 4096,
    ))
}

fn restart(
    report: &Report,
    which: impl Fn(&super::scenarios::ScaleRow) -> Duration,
    goal: Duration,
) -> Option<(String, bool)> {
    let row = report.scale.iter().find(|s| s.workers == 8)?;
    let took = which(row);
    Some((format!("{:.2} ms", ms(took)), took < goal))
}

fn cpu_growth(report: &Report) -> Option<(String, bool)> {
    if report.scale.len() < 2 {
        return None;
    }
    let per_worker: Vec<f64> = report
        .scale
        .iter()
        .map(|s| s.cpu_per_reload.as_secs_f64() * 1e6 / s.workers as f64)
        .collect();
    let max = per_worker.iter().cloned().fold(f64::MIN, f64::max);
    let min = per_worker.iter().cloned().fold(f64::MAX, f64::min);
    let shown: Vec<String> = report
        .scale
        .iter()
        .zip(&per_worker)
        .map(|(s, us)| format!("{us:.0} µs at {}", s.workers))
        .collect();
    let ratio = max / min.max(1.0);
    Some((format!("{ratio:.2}× ({})", shown.join(", ")), ratio <= 1.2))
}

fn idle(report: &Report) -> Option<(String, bool)> {
    let i = report.idle.as_ref()?;
    Some((
        format!("{} and {}", i.ticks, i.wakeups),
        i.ticks == 0 && i.wakeups == 0,
    ))
}

/// The crash scenario's medians, under load: not a goal's figure (the
/// goals are idle), shown beside them.
pub fn under_load(report: &Report) -> Option<String> {
    let c = report.crash.first()?;
    let exec: Vec<Duration> = c.kills.iter().map(|k| k.to_exec).collect();
    let ready: Vec<Duration> = c.kills.iter().map(|k| k.to_ready).collect();
    Some(format!(
        "under load (crash): kill -9 to exec'd {:.2} ms, to ready {:.2} ms (medians)",
        ms(median(&exec)),
        ms(median(&ready))
    ))
}
