//! `probes` (not in the default run): what `--probe` costs. `hello`
//! workers (4 and 16) probed every 100 ms (100 times Kubernetes' default
//! rate), under keep-alive load, in `--balance shared` (the worker that
//! answered each probe found among the workers' sockets) and `reuseport`
//! (each probe steered to its worker), beside the same cluster without
//! probes: the master's CPU time, per second and per probe, and what the
//! load got.

use std::time::Duration;

use serde_json::{Value, json};

use super::Opts;
use super::load::{Load, Outcome};
use super::procfs;
use super::target::{Bins, Rcluster};

/// How often the bench probes each worker.
const PERIOD: Duration = Duration::from_millis(100);

pub struct ProbeRow {
    pub balance: &'static str,
    pub workers: usize,
    pub probed: bool,
    pub seconds: f64,
    /// The master's CPU time over the window.
    pub master_cpu: Duration,
    pub served: u64,
    pub failed: u64,
}

impl ProbeRow {
    /// Probes sent a second: one per worker per period.
    pub fn probes_per_s(&self) -> f64 {
        if self.probed {
            self.workers as f64 / PERIOD.as_secs_f64()
        } else {
            0.0
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "balance": self.balance,
            "workers": self.workers,
            "probe_period_ms": self.probed.then_some(PERIOD.as_millis() as u64),
            "seconds": self.seconds,
            "master_cpu_us": self.master_cpu.as_micros() as u64,
            "served": self.served,
            "failed": self.failed,
        })
    }
}

pub fn probes(opts: &Opts, bins: &Bins) -> Vec<ProbeRow> {
    let mut rows = Vec::new();
    let period = format!("{}ms", PERIOD.as_millis());
    for balance in ["shared", "reuseport"] {
        for workers in [4, 16] {
            for probed in [false, true] {
                let n = workers.to_string();
                let mut args = vec!["-w", &n, "--ready", "notify", "-l", "127.0.0.1:0"];
                args.extend(["--balance", balance]);
                if probed {
                    args.extend(["--probe", "/healthz", "--probe-period", &period]);
                }
                let hello = bins.hello.to_str().expect("utf-8 path");
                let rcluster = Rcluster::start(bins, &args, &[hello]);
                let addr = rcluster.addr.expect("a TCP listener");
                let load = Load::start_at(addr, opts.connections, true, std::time::Instant::now());
                load.wait_for_more(100);
                let before = procfs::read(rcluster.pid);
                std::thread::sleep(opts.steady);
                let after = procfs::read(rcluster.pid);
                let samples = load.finish().samples;
                rcluster.stop();
                rows.push(ProbeRow {
                    balance,
                    workers,
                    probed,
                    seconds: opts.steady.as_secs_f64(),
                    master_cpu: after.cpu.saturating_sub(before.cpu),
                    served: samples.iter().filter(|s| s.outcome == Outcome::Ok).count() as u64,
                    failed: samples.iter().filter(|s| s.outcome != Outcome::Ok).count() as u64,
                });
            }
        }
    }
    rows
}
