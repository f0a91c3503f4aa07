//! The report: a table on stdout, the raw figures as JSON, and an SVG
//! picture of latency over time with failures and reloads marked.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;
use serde_json::Value;

use super::config::ConfigRow;
use super::load::{Outcome, Sample};
use super::memory::MemoryRow;
use super::probes::ProbeRow;
use super::scenarios::{BalanceRow, Crash, DefaultsRow, Idle, Reload, ScaleRow, StderrRow, Steady};
use super::stats::{self, Latency, median, ms};
use super::upgrade::UpgradeRow;

/// Everything one run measured.
#[derive(Default)]
pub struct Report {
    pub machine: String,
    pub steady: Vec<Steady>,
    pub reload: Vec<Reload>,
    pub defaults: Vec<DefaultsRow>,
    pub crash: Vec<Crash>,
    pub scale: Vec<ScaleRow>,
    pub idle: Option<Idle>,
    pub stderr: Vec<StderrRow>,
    pub balance: Vec<BalanceRow>,
    pub upgrade: Vec<UpgradeRow>,
    pub memory: Option<MemoryRow>,
    pub probes: Vec<ProbeRow>,
    pub config: Vec<ConfigRow>,
}

fn lat(l: &Latency) -> String {
    format!(
        "{:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        ms(l.p50),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    )
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "rcluster reload bench: {}", self.machine);
        if !self.steady.is_empty() {
            let _ = writeln!(
                t,
                "\nsteady                  served      req/s   failed   p50 ms   p99 ms p99.9 ms   max ms"
            );
            for s in &self.steady {
                let _ = writeln!(
                    t,
                    "  {} workers, {:<10} {:>9} {:>10.0} {:>8}  {}",
                    s.workers,
                    s.mode.name(),
                    s.served,
                    s.rps(),
                    stats::failures_text(&s.failed),
                    lat(&s.latency)
                );
            }
        }
        for r in &self.reload {
            let complete: Vec<Duration> = r.timings.iter().map(|t| t.to_complete).collect();
            let first: Vec<Duration> = r.timings.iter().filter_map(|t| t.to_first_ready).collect();
            let _ = writeln!(
                t,
                "\nreload, {} workers, {} ({} reloads)",
                r.workers,
                r.mode.name(),
                r.timings.len()
            );
            if first.is_empty() {
                let _ = writeln!(
                    t,
                    "  reload command: median {:.2} ms",
                    ms(median(&complete))
                );
            } else {
                let _ = writeln!(
                    t,
                    "  HUP to first new worker ready: median {:.2} ms; HUP to reload complete: median {:.2} ms",
                    ms(median(&first)),
                    ms(median(&complete))
                );
            }
            let drained: Vec<Duration> = r.timings.iter().filter_map(|t| t.to_drained).collect();
            if !drained.is_empty() {
                let _ = writeln!(
                    t,
                    "  HUP to the last replaced worker's exit (the window of \"during\"): median {:.2} ms",
                    ms(median(&drained))
                );
            }
            if let Some(overhead) = r.overhead_per_worker() {
                let _ = writeln!(
                    t,
                    "  reload time minus the workers' own start-up, per worker: median {:.3} ms",
                    ms(overhead)
                );
            }
            let _ = writeln!(
                t,
                "  served {}, failed {}; idle connections closed after the server's stated idle timeout, replaced before reuse: {}",
                r.served,
                stats::failures_text(&r.failed),
                r.samples.idle_closed
            );
            for error in &r.samples.errors {
                let _ = writeln!(t, "    {error}");
            }
            let _ = writeln!(
                t,
                "                     requests   p50 ms   p99 ms p99.9 ms   max ms"
            );
            let _ = writeln!(
                t,
                "  during reloads   {:>10}  {}",
                r.during.count,
                lat(&r.during)
            );
            let _ = writeln!(
                t,
                "  outside reloads  {:>10}  {}",
                r.outside.count,
                lat(&r.outside)
            );
            if r.mode == super::scenarios::Mode::KeepAlive {
                let _ = writeln!(
                    t,
                    "  during, not reconnecting {:>2}  {}",
                    r.during_reused.count,
                    lat(&r.during_reused)
                );
            }
            if let Some(steady) = self
                .steady
                .iter()
                .find(|s| s.mode == r.mode && s.workers == r.workers)
                && steady.latency.p99 > Duration::ZERO
            {
                let _ = writeln!(
                    t,
                    "  p99 during reloads / steady p99: {:.2}x",
                    r.during.p99.as_secs_f64() / steady.latency.p99.as_secs_f64()
                );
            }
        }
        for u in &self.upgrade {
            let _ = writeln!(
                t,
                "\nupgrade, {} workers, {} ({} live upgrades of the master by USR2, then as many reloads)",
                u.workers,
                u.mode.name(),
                u.to_control.len()
            );
            let _ = writeln!(
                t,
                "  USR2 to the new image answering status: median {:.2} ms (its own count, asked to going on: median {:.2} ms); HUP to reload complete: median {:.2} ms",
                ms(u.median_to_control()),
                ms(median(&u.own)),
                ms(median(&u.reloads))
            );
            let _ = writeln!(
                t,
                "  served {}, failed {}",
                u.served,
                stats::failures_text(&u.failed)
            );
            let _ = writeln!(
                t,
                "                     requests   p50 ms   p99 ms p99.9 ms   max ms"
            );
            for (what, l) in [
                ("during upgrades ", &u.during_upgrades),
                ("during reloads  ", &u.during_reloads),
                ("outside either  ", &u.outside),
            ] {
                let _ = writeln!(t, "  {what} {:>10}  {}", l.count, lat(l));
            }
        }
        for c in &self.crash {
            let exec: Vec<Duration> = c.kills.iter().map(|k| k.to_exec).collect();
            let ready: Vec<Duration> = c.kills.iter().map(|k| k.to_ready).collect();
            let _ = writeln!(
                t,
                "\ncrash: kill -9 of a random worker every {:.0} ms, {} ({} kills)",
                ms(c.every),
                c.mode.name(),
                c.kills.len()
            );
            let _ = writeln!(
                t,
                "  kill to replacement exec'd: median {:.2} ms; to replacement ready: median {:.2} ms",
                ms(median(&exec)),
                ms(median(&ready))
            );
            let _ = writeln!(
                t,
                "  served {}, failed {}; longest time without a response: {:.1} ms",
                c.served,
                stats::failures_text(&c.failed),
                ms(c.longest_gap)
            );
        }
        if !self.defaults.is_empty() {
            let _ = writeln!(
                t,
                "\ndefaults: reload with no flag (canary held 2 s, then a quarter at a time)\n  worker             workers  reload ms"
            );
            for d in &self.defaults {
                let _ = writeln!(
                    t,
                    "  {:<18} {:>7} {:>10.1}",
                    d.worker(),
                    d.workers,
                    ms(d.reload)
                );
            }
        }
        if !self.scale.is_empty() {
            let _ = writeln!(
                t,
                "\nscale   workers  start ms reload ms per worker ms overhead/worker ms master CPU/reload ms CPU/worker us master RSS KiB restart ms"
            );
            for s in &self.scale {
                let _ = writeln!(
                    t,
                    "        {:>7} {:>9.1} {:>9.1} {:>13.3} {:>18.3} {:>20.1} {:>13.0} {:>14} {:>10.2}",
                    s.workers,
                    ms(s.startup),
                    ms(s.reload),
                    ms(s.per_worker()),
                    ms(s.overhead_per_worker),
                    ms(s.cpu_per_reload),
                    s.cpu_per_reload.as_secs_f64() * 1e6 / s.workers as f64,
                    s.rss_kib,
                    ms(s.restart)
                );
            }
            let _ = writeln!(
                t,
                "\nrestart, idle master, median of 5 kills: ms from the kill to the exit seen, spawned, exec'd, ready"
            );
            for s in &self.scale {
                let r = &s.restart_steps;
                let _ = writeln!(
                    t,
                    "        {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                    s.workers,
                    ms(r.exited),
                    ms(r.spawned),
                    ms(r.exec),
                    ms(r.ready)
                );
            }
        }
        if let Some(i) = &self.idle {
            let _ = writeln!(
                t,
                "\nidle master ({} workers, {:.0} s): {} CPU ticks ({} us), {} wakeups, RSS {} KiB",
                i.workers,
                i.seconds,
                i.ticks,
                i.cpu.as_micros(),
                i.wakeups,
                i.rss_kib
            );
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                t,
                "\nmaster memory (default flags, {} workers, after 3 reloads, a status, a scrape): \
                 RSS {} KiB {}, {} anonymous, {} file-backed; {} KiB as the status returned",
                m.workers,
                m.rss_kib,
                if m.asleep {
                    "asleep"
                } else {
                    "(never fell asleep)"
                },
                m.anon_kib,
                m.file_kib,
                m.awake_kib
            );
        }
        if !self.balance.is_empty() {
            let _ = writeln!(
                t,
                "\nbalance (4 workers, 2 ms CPU a request)   load    req/s  per worker            max/min   p50 ms   p99 ms p99.9 ms   max ms  failed"
            );
            for b in &self.balance {
                let shares: Vec<String> = b.shares.iter().map(u64::to_string).collect();
                let _ = writeln!(
                    t,
                    "  {:<8} {:<29} {:>3.0}% {:>8.0}  {:<22} {:>6.1} {} {:>7}",
                    b.server,
                    b.balance,
                    b.load * 100.0,
                    b.rate,
                    shares.join("/"),
                    b.spread(),
                    lat(&b.latency),
                    b.failed
                );
            }
        }
        if !self.probes.is_empty() {
            self.probes_table(&mut t);
        }
        if !self.config.is_empty() {
            let _ = writeln!(
                t,
                "\nconfig (hello, 4 workers, keep-alive)  reloads  complete ms  drained ms  master CPU ms/reload     req  failed"
            );
            for r in &self.config {
                let _ = writeln!(
                    t,
                    "  {:<37} {:>7} {:>12.1} {:>11.1} {:>19.2} {:>7} {:>7}",
                    r.how,
                    r.reloads,
                    ms(r.median_complete()),
                    ms(r.median_drained()),
                    ms(r.cpu_per_reload()),
                    r.served,
                    r.failed
                );
            }
        }
        if !self.stderr.is_empty() {
            let _ = writeln!(
                t,
                "\nworker stderr      offered MB/s  delivered MB/s  master CPU (% of a core)"
            );
            for r in &self.stderr {
                let offered = r
                    .offered
                    .map_or("flood".into(), |b| format!("{:.0}", b as f64 / 1e6));
                let _ = writeln!(
                    t,
                    "  {:<16} {:>12} {:>15.1} {:>25.1}",
                    r.route,
                    offered,
                    r.delivered / 1e6,
                    r.master_cpu * 100.0
                );
            }
        }
        t
    }

    /// `probes`: each probed row beside the same cluster without probes.
    fn probes_table(&self, t: &mut String) {
        let _ = writeln!(
            t,
            "\nprobes (hello, keep-alive load)  workers  probes/s  master CPU ms/s (without)  per probe us     req/s  failed"
        );
        for row in self.probes.iter().filter(|r| r.probed) {
            let without = self
                .probes
                .iter()
                .find(|r| !r.probed && r.balance == row.balance && r.workers == row.workers);
            let per_s = |r: &ProbeRow| r.master_cpu.as_secs_f64() * 1e3 / r.seconds;
            let base = without.map_or(0.0, per_s);
            let per_probe = (per_s(row) - base) * 1e3 / row.probes_per_s();
            let _ = writeln!(
                t,
                "  {:<31} {:>7} {:>9.0} {:>12.1} ({:>5.1}) {:>19.0} {:>9.0} {:>7}",
                row.balance,
                row.workers,
                row.probes_per_s(),
                per_s(row),
                base,
                per_probe,
                row.served as f64 / row.seconds,
                row.failed
            );
        }
    }

    pub fn json(&self) -> Value {
        serde_json::json!({
            "machine": self.machine,
            "steady": self.steady.iter().map(Steady::json).collect::<Vec<_>>(),
            "reload": self.reload.iter().map(Reload::json).collect::<Vec<_>>(),
            "defaults": self.defaults.iter().map(DefaultsRow::json).collect::<Vec<_>>(),
            "crash": self.crash.iter().map(Crash::json).collect::<Vec<_>>(),
            "scale": self.scale.iter().map(ScaleRow::json).collect::<Vec<_>>(),
            "idle": self.idle.as_ref().map(Idle::json),
            "stderr": self.stderr.iter().map(StderrRow::json).collect::<Vec<_>>(),
            "balance": self.balance.iter().map(BalanceRow::json).collect::<Vec<_>>(),
            "upgrade": self.upgrade.iter().map(UpgradeRow::json).collect::<Vec<_>>(),
            "memory": self.memory.as_ref().map(MemoryRow::json),
            "probes": self.probes.iter().map(ProbeRow::json).collect::<Vec<_>>(),
            "config": self.config.iter().map(ConfigRow::json).collect::<Vec<_>>(),
        })
    }

    /// One panel per reload and crash run: latency over time (p50 and max
    /// per 25 ms), failed requests as red crosses, reloads shaded, kills as
    /// red lines.
    pub fn svg(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let mut panels: Vec<Panel> = Vec::new();
        for r in &self.reload {
            panels.push(Panel {
                title: format!(
                    "reload: {} workers, {}, {} reloads (shaded), served {}, failed {}",
                    r.workers,
                    r.mode.name(),
                    r.timings.len(),
                    r.served,
                    stats::failures_text(&r.failed)
                ),
                samples: &r.samples.samples,
                spans: r.windows.clone(),
                marks: Vec::new(),
            });
        }
        for c in &self.crash {
            panels.push(Panel {
                title: format!(
                    "crash: kill -9 every {:.0} ms (red lines), {}, served {}, failed {}",
                    ms(c.every),
                    c.mode.name(),
                    c.served,
                    stats::failures_text(&c.failed)
                ),
                samples: &c.samples.samples,
                spans: Vec::new(),
                marks: c.kill_times.clone(),
            });
        }
        if panels.is_empty() {
            return Ok(());
        }
        let root = SVGBackend::new(path, (1100, 280 * panels.len() as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(&panels) {
            panel.draw(area)?;
        }
        root.present()?;
        Ok(())
    }
}

struct Panel<'a> {
    title: String,
    samples: &'a [Sample],
    spans: Vec<(Duration, Duration)>,
    marks: Vec<Duration>,
}

impl Panel<'_> {
    fn draw(
        &self,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let buckets = stats::buckets(self.samples, Duration::from_millis(25));
        let x_max = self
            .samples
            .iter()
            .map(|s| s.end().as_secs_f64())
            .fold(0.1, f64::max);
        let overall = stats::latency(self.samples);
        let y_max = (ms(overall.p999) * 2.0).max(ms(overall.p99) * 3.0).max(1.0);
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("latency, ms")
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(self.spans.iter().map(|(a, b)| {
            Rectangle::new(
                [
                    (a.as_secs_f64(), 0.0),
                    (b.as_secs_f64().max(a.as_secs_f64() + x_max / 500.0), y_max),
                ],
                BLUE.mix(0.15).filled(),
            )
        }))?;
        chart.draw_series(self.marks.iter().map(|t| {
            PathElement::new(
                vec![(t.as_secs_f64(), 0.0), (t.as_secs_f64(), y_max)],
                RED.mix(0.4),
            )
        }))?;
        let clamp = |d: Duration| ms(d).min(y_max);
        chart
            .draw_series(LineSeries::new(
                buckets
                    .iter()
                    .filter(|b| b.ok > 0)
                    .map(|b| (b.start.as_secs_f64(), clamp(b.max))),
                RGBColor(160, 160, 160),
            ))?
            .label("max per 25 ms")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RGBColor(160, 160, 160)));
        chart
            .draw_series(LineSeries::new(
                buckets
                    .iter()
                    .filter(|b| b.ok > 0)
                    .map(|b| (b.start.as_secs_f64(), clamp(b.p50))),
                BLACK,
            ))?
            .label("p50 per 25 ms")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK));
        chart
            .draw_series(
                self.samples
                    .iter()
                    .filter(|s| s.outcome != Outcome::Ok)
                    .map(|s| Cross::new((s.start.as_secs_f64(), y_max * 0.95), 4, RED)),
            )?
            .label("failed request")
            .legend(|(x, y)| Cross::new((x + 7, y), 4, RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        Ok(())
    }
}
