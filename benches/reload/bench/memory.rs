//! `memory`: the master's resident memory with the default flags (text
//! log, control socket and pid file in the runtime directory) and 4 `hello`
//! workers, after what a day brings: 3 reloads, a `status`, a metrics
//! scrape (`--metrics`, the one flag added). Read from
//! `/proc/PID/smaps_rollup`: the whole, the master's own anonymous memory,
//! and the file-backed rest (its code and libc's, shared with every other
//! process that maps them); once as soon as the last `status` returns, and
//! once when the master has gone to sleep with nothing to wait for (it
//! gives back what the work brought in before such a sleep).

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::target::Bins;
use super::{http, procfs};

pub struct MemoryRow {
    pub workers: usize,
    /// As soon as the last `status` returned.
    pub awake_kib: u64,
    /// Asleep: in `epoll_wait` with no deadline.
    pub asleep: bool,
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
}

impl MemoryRow {
    pub fn json(&self) -> Value {
        json!({
            "workers": self.workers,
            "awake_rss_kib": self.awake_kib,
            "asleep": self.asleep,
            "rss_kib": self.rss_kib,
            "anonymous_kib": self.anon_kib,
            "file_kib": self.file_kib,
        })
    }
}

pub fn memory(bins: &Bins) -> Option<MemoryRow> {
    let workers = 4;
    let name = format!("bench-memory-{}", std::process::id());
    let metrics = free_port();
    let mut master = Command::new(&bins.rcluster)
        .args([
            "-w",
            &workers.to_string(),
            "-l",
            "127.0.0.1:0",
            "--name",
            &name,
        ])
        .args(["--metrics", &metrics.to_string(), "--ready", "notify", "--"])
        .arg(&bins.hello)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting rcluster");
    let rcluster = |args: &[&str]| {
        Command::new(&bins.rcluster)
            .args(args)
            .args(["--name", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut row = None;
    while Instant::now() < deadline {
        if rcluster(&["status"]) {
            let reloaded = (0..3).all(|_| rcluster(&["reload", "--wait"]));
            let scraped = http::get(metrics, "/metrics").is_ok_and(|r| r.status == 200);
            if reloaded && scraped && rcluster(&["status"]) {
                let pid = master.id() as i32;
                let awake = rollup(pid).0;
                let asleep = procfs::wait_asleep(pid, Instant::now() + Duration::from_secs(5));
                let (rss_kib, anon_kib) = rollup(pid);
                row = Some(MemoryRow {
                    workers,
                    awake_kib: awake,
                    asleep,
                    rss_kib,
                    anon_kib,
                    file_kib: rss_kib.saturating_sub(anon_kib),
                });
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling the master this bench started; it stops its
    // workers.
    unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
    let _ = master.wait();
    if row.is_none() {
        eprintln!("memory: the master did not get through its reloads");
    }
    row
}

/// Resident and anonymous KiB.
fn rollup(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Anonymous:"))
}

fn free_port() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").expect("a port for --metrics");
    probe.local_addr().expect("its address")
}
