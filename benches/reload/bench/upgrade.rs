//! The `upgrade` scenario: live upgrades of the master (`SIGUSR2`) under
//! load, beside reloads of the same cluster under the same load: time
//! from `USR2` to the new image answering its control socket, requests
//! failed, and the latency of the requests that overlapped each.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::Opts;
use super::load::{Load, Outcome, Sample};
use super::scenarios::{Mode, hello_cluster};
use super::stats::{self, Latency, failures, latency, median};
use super::target::Bins;

pub struct UpgradeRow {
    pub mode: Mode,
    pub workers: usize,
    /// `USR2` to the first `status` the new image answered.
    pub to_control: Vec<Duration>,
    /// The new image's own count: asked to going on (its `upgraded` record).
    pub own: Vec<Duration>,
    /// `HUP` to `reload complete`, for the reloads beside.
    pub reloads: Vec<Duration>,
    pub served: u64,
    pub failed: Vec<(Outcome, u64)>,
    pub during_upgrades: Latency,
    pub during_reloads: Latency,
    pub outside: Latency,
}

impl UpgradeRow {
    pub fn json(&self) -> Value {
        let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>();
        json!({
            "mode": self.mode.name(),
            "workers": self.workers,
            "usr2_to_control_ms": ms(&self.to_control),
            "own_ms": ms(&self.own),
            "hup_to_reload_complete_ms": ms(&self.reloads),
            "served": self.served,
            "failed": stats::failures_json(&self.failed),
            "during_upgrades": self.during_upgrades.json(),
            "during_reloads": self.during_reloads.json(),
            "outside": self.outside.json(),
        })
    }

    pub fn median_to_control(&self) -> Duration {
        median(&self.to_control)
    }
}

/// How many upgrades the master went through, as its `status` says.
fn upgrades_done(control: &Path) -> Option<u64> {
    let request = json!({"cmd": "status"});
    let status = rcluster::control::server::ask(control, &request, Duration::from_secs(10)).ok()?;
    status["master"]["upgrades"]["done"].as_u64()
}

pub fn upgrade(opts: &Opts, bins: &Bins, workers: usize, mode: Mode) -> UpgradeRow {
    let control = std::env::temp_dir().join(format!(
        "rcluster-bench-upgrade-{}.sock",
        std::process::id()
    ));
    let control_arg = control.to_str().expect("utf-8 path");
    let mut rcluster = hello_cluster(opts, bins, workers, &["--control", control_arg]);
    let addr = rcluster.addr.expect("a TCP listener");
    let (epoch, epoch_wall) = (Instant::now(), SystemTime::now());
    let load = Load::start_at(addr, opts.connections, mode == Mode::KeepAlive, epoch);
    load.wait_for_more(100);
    std::thread::sleep(opts.gap);
    let (mut to_control, mut own, mut upgrade_windows) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.reloads {
        let before = upgrades_done(&control).expect("the master answers status");
        let asked = SystemTime::now();
        let start = asked.duration_since(epoch_wall).unwrap_or_default();
        rcluster.signal(libc::SIGUSR2);
        let deadline = Instant::now() + Duration::from_secs(30);
        while upgrades_done(&control).is_none_or(|done| done == before) {
            assert!(Instant::now() < deadline, "no upgrade within 30 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = asked.elapsed().unwrap_or_default();
        to_control.push(took);
        upgrade_windows.push((start, start + took));
        let events = rcluster.collect_until("upgraded", |e| e.msg() == "upgraded");
        let upgraded = events.last().expect("the upgraded event");
        own.push(Duration::from_millis(upgraded.u64("duration_ms")));
        std::thread::sleep(opts.gap);
    }
    let (mut reloads, mut reload_windows) = (Vec::new(), Vec::new());
    for _ in 0..opts.reloads {
        let hup = SystemTime::now();
        let start = hup.duration_since(epoch_wall).unwrap_or_default();
        rcluster.signal(libc::SIGHUP);
        let events = rcluster.collect_until("reload complete", |e| e.msg() == "reload complete");
        let took = events.last().expect("reload complete").since(hup);
        reloads.push(took);
        reload_windows.push((start, start + took));
        std::thread::sleep(opts.gap);
    }
    let samples = load.finish();
    rcluster.stop();
    let in_any =
        |s: &Sample, windows: &[(Duration, Duration)]| windows.iter().any(|w| s.overlaps(*w));
    let during = |windows: &[(Duration, Duration)]| {
        latency(samples.samples.iter().filter(|s| in_any(s, windows)))
    };
    UpgradeRow {
        mode,
        workers,
        to_control,
        own,
        reloads,
        served: samples.ok(),
        failed: failures(&samples.samples),
        during_upgrades: during(&upgrade_windows),
        during_reloads: during(&reload_windows),
        outside: latency(
            samples
                .samples
                .iter()
                .filter(|s| !in_any(s, &upgrade_windows) && !in_any(s, &reload_windows)),
        ),
    }
}
