//! The servers under test: rcluster, started here and watched through its
//! JSON log, or another process manager, started and reloaded by commands.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Receiver;
use serde_json::Value;

/// How long anything the bench waits for may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// The binaries a run uses.
#[derive(Debug, Clone)]
pub struct Bins {
    pub rcluster: PathBuf,
    pub hello: PathBuf,
    pub test_worker: PathBuf,
}

impl Bins {
    /// Release builds, built now (`cargo build --release`), so the numbers
    /// are the optimized code's.
    pub fn release() -> Result<Bins, String> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new(cargo)
            .current_dir(manifest)
            .args([
                "build",
                "--release",
                "--bin",
                "rcluster",
                "--example",
                "hello",
                "--example",
                "test_worker",
            ])
            .status()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if !status.success() {
            return Err("cargo build --release failed".into());
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest.join("target"));
        Ok(Bins::in_dir(&target.join("release")))
    }

    /// `dir/rcluster` and `dir/examples/{hello,test_worker}`.
    pub fn in_dir(dir: &Path) -> Bins {
        Bins {
            rcluster: dir.join("rcluster"),
            hello: dir.join("examples").join("hello"),
            test_worker: dir.join("examples").join("test_worker"),
        }
    }
}

/// A record of rcluster's log, timed by its own timestamp (when the master
/// wrote it, not when the bench got round to reading it).
#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    pub record: Value,
}

impl Event {
    /// How long after `from` this was logged.
    pub fn since(&self, from: SystemTime) -> Duration {
        self.at.duration_since(from).unwrap_or_default()
    }

    pub fn msg(&self) -> &str {
        self.record["msg"].as_str().unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.record["pid"].as_i64().unwrap_or(0) as i32
    }

    pub fn u64(&self, key: &str) -> u64 {
        self.record[key].as_u64().unwrap_or(0)
    }
}

/// A running rcluster. Dropping it kills it and its workers.
pub struct Rcluster {
    child: Child,
    pub pid: i32,
    pub addr: Option<SocketAddr>,
    events: Receiver<Event>,
    live: Arc<Mutex<BTreeSet<i32>>>,
    /// Bytes read so far from the master's stderr: its log, and the
    /// workers' stderr (which goes through the master, or straight there).
    pub stderr_bytes: Arc<AtomicU64>,
}

impl Rcluster {
    /// `rcluster --log-format json --log-level debug ARGS -- WORKER...`;
    /// returns once every worker is ready.
    /// No control socket unless `args` asks for one.
    pub fn start(bins: &Bins, args: &[&str], worker: &[&str]) -> Rcluster {
        let control = match args.contains(&"--control") {
            true => &[][..],
            false => &["--control", "none"][..],
        };
        let mut child = Command::new(&bins.rcluster)
            .args(["--log-format", "json", "--log-level", "debug"])
            .args(control)
            .args(args)
            .arg("--")
            .args(worker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("starting rcluster");
        let pid = child.id() as i32;
        let stderr = child.stderr.take().expect("piped");
        let (tx, events) = crossbeam_channel::unbounded();
        let live = Arc::new(Mutex::new(BTreeSet::new()));
        let live2 = Arc::clone(&live);
        let stderr_bytes = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&stderr_bytes);
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(1 << 16, stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => counted.fetch_add(n as u64, Ordering::Relaxed),
                };
                // Workers' own lines (their stderr goes through the master)
                // are counted, not parsed.
                if line.first() != Some(&b'{') {
                    continue;
                }
                let Ok(record) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let at = record["ts"]
                    .as_str()
                    .and_then(|ts| humantime::parse_rfc3339(ts).ok())
                    .unwrap_or_else(SystemTime::now);
                let event = Event { at, record };
                match event.msg() {
                    "worker spawned" => {
                        live2.lock().unwrap().insert(event.pid());
                    }
                    "worker exited" | "worker draining" => {
                        live2.lock().unwrap().remove(&event.pid());
                    }
                    _ => {}
                }
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        let mut rcluster = Rcluster {
            child,
            pid,
            addr: None,
            events,
            live,
            stderr_bytes,
        };
        let mut addr = None;
        rcluster.collect_until("workers ready", |e| {
            if e.msg() == "listening" {
                addr = e.record["addr"].as_str().and_then(|a| a.parse().ok());
            }
            e.msg() == "workers ready"
        });
        rcluster.addr = addr;
        rcluster
    }

    /// Every event up to and including the first that matches `until`.
    pub fn collect_until(
        &mut self,
        what: &str,
        mut until: impl FnMut(&Event) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let event = self
                .events
                .recv_deadline(deadline)
                .unwrap_or_else(|_| panic!("rcluster: no {what} within {WAIT:?}"));
            let done = until(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling the process this bench started.
        unsafe { libc::kill(self.pid, signal) };
    }

    /// Workers serving or starting (not draining), as the log says.
    pub fn live_workers(&self) -> Vec<i32> {
        self.live.lock().unwrap().iter().copied().collect()
    }

    /// Graceful stop; bounded, then killed.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Rcluster {
    fn drop(&mut self) {
        // SAFETY: killing processes this bench started, by pid.
        unsafe {
            if let Ok(None) = self.child.try_wait() {
                libc::kill(-self.pid, libc::SIGKILL);
            }
            for &pid in self.live.lock().unwrap().iter() {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// Another process manager, driven by shell commands, so the same load and
/// report can be produced for it.
pub struct External {
    child: Child,
    pub addr: SocketAddr,
    reload: String,
}

impl External {
    /// Runs `start` (in its own process group) and waits until `addr` answers.
    pub fn start(start: &str, reload: &str, addr: SocketAddr) -> External {
        let child = Command::new("sh")
            .args(["-c", start])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("running the start command");
        let external = External {
            child,
            addr,
            reload: reload.to_string(),
        };
        let deadline = Instant::now() + WAIT;
        while !matches!(super::http::get(addr, "/"), Ok(r) if r.status == 200) {
            assert!(
                Instant::now() < deadline,
                "nothing answers on {addr} after the start command"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        external
    }

    /// Runs the reload command to completion; returns how long it took.
    pub fn reload(&self) -> Duration {
        let started = Instant::now();
        let status = Command::new("sh").args(["-c", &self.reload]).status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "the reload command failed: {status:?}"
        );
        started.elapsed()
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: ending the process group this bench started.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
