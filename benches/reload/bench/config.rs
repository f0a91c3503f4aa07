//! `config` (not in the default run): what `--config` costs and keeps. A
//! `hello` cluster (4 workers) reloaded under keep-alive load, three ways:
//! from flags (the file's cost is none), from a file read again unchanged,
//! and from a file each reload changes (the command's arguments, a
//! variable, and a second address added, then removed). Each row: the
//! requests that failed, the reload time (HUP to every slot serving the
//! new generation, and to the last old worker's exit), and the master's
//! CPU time per reload.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::Opts;
use super::load::Load;
use super::procfs;
use super::stats::median;
use super::target::{Bins, Rcluster};

pub struct ConfigRow {
    pub how: &'static str,
    pub reloads: usize,
    pub served: u64,
    pub failed: u64,
    pub to_complete: Vec<Duration>,
    pub to_drained: Vec<Duration>,
    /// The master's CPU time over the reloads.
    pub master_cpu: Duration,
}

impl ConfigRow {
    pub fn cpu_per_reload(&self) -> Duration {
        self.master_cpu / self.reloads.max(1) as u32
    }

    pub fn json(&self) -> Value {
        json!({
            "how": self.how,
            "reloads": self.reloads,
            "served": self.served,
            "failed": self.failed,
            "to_complete_ms": self.to_complete.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>(),
            "to_drained_ms": self.to_drained.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>(),
            "master_cpu_us": self.master_cpu.as_micros() as u64,
        })
    }

    pub fn median_complete(&self) -> Duration {
        median(&self.to_complete)
    }

    pub fn median_drained(&self) -> Duration {
        median(&self.to_drained)
    }
}

/// The file for reload `round`: unchanged, or changed every time.
fn file(hello: &str, port: u16, extra: u16, round: usize, changing: bool) -> String {
    let round = if changing { round } else { 0 };
    let listen = match round % 2 {
        1 => format!("\"127.0.0.1:{port}\", \"127.0.0.1:{extra}\""),
        _ => format!("\"127.0.0.1:{port}\""),
    };
    format!(
        "workers = 4\nready = \"notify\"\nmin-ready = \"0s\"\nlisten = [{listen}]\n\
         command = [\"{hello}\", \"--round\", \"{round}\"]\n[env]\nROUND = \"{round}\"\n"
    )
}

pub fn config(opts: &Opts, bins: &Bins) -> Vec<ConfigRow> {
    let hello = bins.hello.to_str().expect("utf-8 path");
    let dir = std::env::temp_dir().join(format!("rcluster-bench-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("app.toml");
    let path_text = path.to_str().expect("utf-8 path").to_string();
    let mut rows = Vec::new();
    for how in ["flags", "file, unchanged", "file, changed"] {
        let (port, extra) = (free_port(), free_port());
        let listen = format!("127.0.0.1:{port}");
        let mut rcluster = match how {
            "flags" => {
                let args = [
                    "-w",
                    "4",
                    "--ready",
                    "notify",
                    "--min-ready",
                    "0",
                    "-l",
                    &listen,
                ];
                Rcluster::start(bins, &args, &[hello, "--round", "0"])
            }
            _ => {
                std::fs::write(&path, file(hello, port, extra, 0, false)).expect("writing");
                Rcluster::start(bins, &["--config", &path_text], &[])
            }
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let epoch = std::time::Instant::now();
        let load = Load::start_at(addr, opts.connections, true, epoch);
        load.wait_for_more(100);
        let before = procfs::read(rcluster.pid);
        let (mut to_complete, mut to_drained) = (Vec::new(), Vec::new());
        for round in 1..=opts.reloads {
            if how != "flags" {
                let changing = how == "file, changed";
                std::fs::write(&path, file(hello, port, extra, round, changing)).expect("writing");
            }
            let target = round as u64 + 1;
            let hup = SystemTime::now();
            rcluster.signal(libc::SIGHUP);
            let (mut complete, mut old_left) = (None, 4);
            let events = rcluster.collect_until("the old workers' exit", |e| {
                if e.msg() == "reload complete" {
                    complete = Some(e.since(hup));
                }
                if e.msg() == "worker exited" && e.u64("generation") == target - 1 {
                    old_left -= 1;
                }
                complete.is_some() && old_left == 0
            });
            to_complete.push(complete.expect("reload complete"));
            to_drained.push(
                events
                    .last()
                    .expect("the last old worker's exit")
                    .since(hup),
            );
            std::thread::sleep(opts.gap);
        }
        let after = procfs::read(rcluster.pid);
        let samples = load.finish();
        rcluster.stop();
        rows.push(ConfigRow {
            how,
            reloads: opts.reloads,
            served: samples.ok(),
            failed: samples.samples.len() as u64 - samples.ok(),
            to_complete,
            to_drained,
            master_cpu: after.cpu.saturating_sub(before.cpu),
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}
