//! wrk, a load generator nobody here wrote, as a second opinion on every
//! "no request lost": it reuses connections as HTTP/1.1 allows and counts
//! every read error, reset and non-2xx answer. Its script
//! (`support/wrk.lua`) reports progress through a file, so a test waits on
//! traffic rather than sleeping, and prints its counts in one line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, WAIT, wait_until};

/// wrk's own limit; a test stops it long before.
const MAX_RUN: &str = "300s";

/// What wrk counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct WrkStats {
    pub requests: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Answers other than 2xx and 3xx.
    pub status: u64,
    pub timeout: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// The longest a request waited.
    pub max_us: u64,
}

impl WrkStats {
    /// Socket errors and non-2xx answers: every request a client saw fail.
    pub fn failed(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }

    fn parse(line: &str) -> Option<WrkStats> {
        let mut stats = WrkStats::default();
        for field in line.strip_prefix("wrk-result ")?.split_whitespace() {
            let (name, value) = field.split_once('=')?;
            let value = value.parse().ok()?;
            match name {
                "requests" => stats.requests = value,
                "connect" => stats.connect = value,
                "read" => stats.read = value,
                "write" => stats.write = value,
                "status" => stats.status = value,
                "timeout" => stats.timeout = value,
                "p50" => stats.p50_us = value,
                "p99" => stats.p99_us = value,
                "max" => stats.max_us = value,
                _ => {}
            }
        }
        Some(stats)
    }
}

/// A running wrk; killed by pid when dropped.
pub struct Wrk {
    child: Child,
    progress: PathBuf,
    _dir: TempDir,
    _gate: super::load::Gate,
}

impl Wrk {
    /// `wrk -t2 -c{connections}` against `http://addr/`, with
    /// `Connection: close` on every request unless `keep_alive`.
    pub fn start(addr: SocketAddr, connections: usize, keep_alive: bool) -> Wrk {
        let gate = super::load::gate();
        let dir = TempDir::new("wrk");
        let progress = dir.path("progress");
        std::fs::write(&progress, "").unwrap();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/support/wrk.lua");
        let mut cmd = Command::new("wrk");
        cmd.args(["-t2", "-c", &connections.to_string(), "-d", MAX_RUN])
            .args(["--timeout", "10s", "-s"])
            .arg(&script)
            .env("WRK_PROGRESS", &progress)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !keep_alive {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(format!("http://{addr}/"));
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run wrk ({e}): install it (Debian: apt install wrk; ./test.sh does)")
        });
        let wrk = Wrk {
            child,
            progress,
            _dir: dir,
            _gate: gate,
        };
        // Started means sending: wrk dies of a SIGINT that comes before it
        // set its handler, and says nothing.
        wrk.wait_for_more(1);
        wrk
    }

    /// Responses so far, in hundreds per wrk thread.
    fn progress(&self) -> u64 {
        std::fs::metadata(&self.progress).map_or(0, |m| m.len())
    }

    /// Waits (bounded) until about `n` more responses have arrived.
    pub fn wait_for_more(&self, n: u64) {
        let target = self.progress() + n.div_ceil(100);
        assert!(
            wait_until(WAIT, || self.progress() >= target),
            "wrk made no progress"
        );
    }

    /// Stops wrk (SIGINT: it stops and reports) and returns its counts.
    pub fn finish(mut self) -> WrkStats {
        // SAFETY: signalling the wrk this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "wrk did not stop");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        let mut err = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out).unwrap();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err).unwrap();
        out.lines().find_map(WrkStats::parse).unwrap_or_else(|| {
            panic!("no wrk-result line from wrk ({status}):\n{out}\nstderr:\n{err}")
        })
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
