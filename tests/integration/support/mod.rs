//! The harness: start the real `rcluster` binary, read its JSON log, talk
//! HTTP to its workers, and clean up every process it started.

pub use crate::bench::{http, load};

pub mod installs;
pub mod recipes;
pub mod wrk;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::Value;

/// Generous: a 2-core machine running the suite in parallel is slow.
pub const WAIT: Duration = Duration::from_secs(20);

/// For a test whose subject is not the canary's hold: a hold that still
/// runs the canary's path (held, then proven) without spending the
/// default 2 s on every reload. The hold itself is tested with the
/// default flags (`defaults.rs`, `release.rs`), and so is a reload under
/// load (`defaults::reloads_with_the_default_flags_lose_nothing`).
pub const SHORT_HOLD: &str = "--min-ready=50ms";

/// For a test of a server that never says `READY=1`, whose subject is not
/// when the master first looks at it: the look after 300 ms, not the
/// default `--min-uptime` of 1 s (a booting server is busy, and looked at
/// again; only one idle and not listening fails, so an earlier look is
/// the stricter one).
pub const SHORT_LOOK: &str = "--min-uptime=300ms";

pub fn rcluster_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rcluster"))
}

/// An example binary (`hello`, `test_worker`), built by `cargo test`; built
/// here once if missing (e.g. `cargo test --test integration`).
pub fn example(name: &str) -> String {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = rcluster_bin()
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    if !path.exists() {
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--examples"])
                .status()
                .expect("running cargo build --examples");
            assert!(status.success(), "cargo build --examples failed");
        });
    }
    assert!(
        path.exists(),
        "{} is missing: run cargo build --examples",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// `PATH` with the directory of the rcluster under test first.
pub fn path_with_rcluster() -> std::ffi::OsString {
    let bin = rcluster_bin();
    let dir = bin.parent().expect("the binary's directory");
    let mut path = std::ffi::OsString::from(dir);
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }
    path
}

/// A directory removed when dropped, for Unix sockets and flag files.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir::under(&std::env::temp_dir(), tag)
    }

    /// One in `base`.
    pub fn under(base: &Path, tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = base.join(format!("rcluster-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pids of workers the log reported spawned and not yet exited, with
/// their start times (pids wrap within seconds here: a worker the log never
/// said exited, say after the master was killed, may have left its pid to
/// another test's process), shared with the log thread so `Drop` can kill
/// them even after a panic.
type LivePids = Arc<Mutex<BTreeMap<i32, Option<u64>>>>;

/// A running master. Dropping it kills the master's process group and each
/// worker's (workers lead their own groups), then reaps the master; if the
/// test is failing, it prints the log.
pub struct Master {
    child: Child,
    pub pid: i32,
    records: Receiver<Value>,
    live: LivePids,
    lines: Arc<Mutex<Vec<String>>>,
    /// Set by the log thread when stderr reaches its end.
    log_ended: Arc<std::sync::atomic::AtomicBool>,
    status: Option<ExitStatus>,
    /// Whether `Drop` kills the workers by pid (not when their pids are
    /// from another pid namespace).
    kill_workers: bool,
}

impl Master {
    /// `rcluster --log-format json ARGS`, with stderr captured.
    pub fn start(args: &[&str]) -> Master {
        Master::start_with(args, |_| {})
    }

    pub fn start_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> Master {
        Master::start_via(rcluster_bin(), &[], args, setup)
    }

    /// `PROGRAM PRE_ARGS rcluster --log-format json ARGS`: for a wrapper
    /// that execs rcluster (e.g. to set `LISTEN_PID` to its pid).
    pub fn start_via(
        program: impl AsRef<std::ffi::OsStr>,
        pre_args: &[&str],
        args: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Master {
        let mut cmd = Command::new(program);
        if !pre_args.is_empty() {
            cmd.args(pre_args).arg(rcluster_bin());
        }
        cmd.arg("--log-format").arg("json").args(args);
        Master::spawn_with(cmd, setup)
    }

    /// A program that is its own master (cluster mode), logging JSON.
    pub fn start_program(program: &str, args: &[&str]) -> Master {
        Master::start_program_with(program, args, |_| {})
    }

    pub fn start_program_with(
        program: &str,
        args: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Master {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Master::spawn_with(cmd, setup)
    }

    /// Starts `cmd`; `setup` may change it last (stdout, say).
    fn spawn_with(mut cmd: Command, setup: impl FnOnce(&mut Command)) -> Master {
        // No control socket unless a test asks for one (--control PATH):
        // parallel masters must not compete for the default path.
        cmd.env("RCLUSTER_CONTROL", "none");
        // Workers find `rcluster notify` as they would after an install.
        cmd.env("PATH", path_with_rcluster());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        setup(&mut cmd);
        let mut child = spawn_fresh(&mut cmd).expect("starting rcluster");
        let pid = child.id() as i32;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, records) = crossbeam_channel::unbounded();
        let live = LivePids::default();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (live2, lines2) = (Arc::clone(&live), Arc::clone(&lines));
        let log_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended = Arc::clone(&log_ended);
        std::thread::spawn(move || {
            let _ended = SetOnDrop(ended);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines2.lock().unwrap().push(line.clone());
                // Workers share the master's stderr: only JSON lines are records.
                let Ok(record) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let pid = record["pid"].as_i64().unwrap_or(0) as i32;
                match record["msg"].as_str() {
                    Some("worker spawned") => {
                        live2.lock().unwrap().insert(pid, start_ticks(pid));
                    }
                    Some("worker exited") => {
                        live2.lock().unwrap().remove(&pid);
                    }
                    _ => {}
                }
                if tx.send(record).is_err() {
                    break;
                }
            }
        });
        Master {
            child,
            pid,
            records,
            live,
            lines,
            log_ended,
            status: None,
            kill_workers: true,
        }
    }

    /// The master runs in its own pid namespace: the pids in its log are not
    /// this namespace's, so `Drop` must not kill by them (killing the
    /// master's group ends the namespace, and every worker with it).
    pub fn in_pid_namespace(mut self) -> Master {
        self.kill_workers = false;
        self
    }

    /// Waits for the next record matching `pred`, skipping others.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.expect_within(what, WAIT, pred)
    }

    pub fn expect_within(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            match self.records.recv_deadline(deadline) {
                Ok(record) if pred(&record) => return record,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("rcluster's log ended while waiting for {what}")
                }
            }
        }
    }

    /// Waits for the next record whose `msg` is `msg`.
    pub fn expect_msg(&mut self, msg: &str) -> Value {
        self.expect(msg, |r| r["msg"] == msg)
    }

    /// Collects every record until one matching `until` (inclusive).
    pub fn collect_until(
        &mut self,
        what: &str,
        mut until: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            match self.records.recv_deadline(deadline) {
                Ok(record) => {
                    let done = until(&record);
                    seen.push(record);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("timed out or log ended waiting for {what}"),
            }
        }
    }

    /// The address of the `index`th TCP listener, from its `listening` record.
    pub fn listening(&mut self) -> SocketAddr {
        let record = self.expect_msg("listening");
        record["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("listening record without a TCP addr: {record}"))
    }

    /// Where `--metrics` serves, from its `metrics endpoint` record.
    pub fn metrics_addr(&mut self) -> String {
        let record = self.expect_msg("metrics endpoint");
        record["addr"]
            .as_str()
            .unwrap_or_else(|| panic!("metrics endpoint record without an addr: {record}"))
            .to_string()
    }

    /// Waits until the initial workers are ready; returns (slot, pid) of each.
    pub fn ready_workers(&mut self) -> Vec<(u64, i32)> {
        let records = self.collect_until("workers ready", |r| r["msg"] == "workers ready");
        let mut workers: Vec<(u64, i32)> = records
            .iter()
            .filter(|r| r["msg"] == "worker ready")
            .map(|r| {
                (
                    r["slot"].as_u64().unwrap(),
                    r["pid"].as_i64().unwrap() as i32,
                )
            })
            .collect();
        workers.sort();
        workers
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling the master we started.
        unsafe { libc::kill(self.pid, signal) };
    }

    /// Waits for the master to exit (bounded), returning its status; and
    /// for its last lines to be read (when nothing else holds its stderr).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("waiting for rcluster") {
                self.status = Some(status);
                let ended = &self.log_ended;
                wait_until(Duration::from_secs(2), || {
                    ended.load(std::sync::atomic::Ordering::SeqCst)
                });
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("rcluster did not exit within {WAIT:?}");
    }

    /// TERM; checks that the master exits 0 and that no worker had to be
    /// killed (each drained in time).
    pub fn stop_cleanly(mut self) {
        self.signal(libc::SIGTERM);
        assert_eq!(self.wait_exit().code(), Some(0), "{}", self.log_text());
        assert!(
            !self.log_text().contains("SIGKILL"),
            "a worker had to be killed:\n{}",
            self.log_text()
        );
    }

    /// Every line rcluster and its workers wrote to stderr so far.
    pub fn log_text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let running = self.status.is_none() && matches!(self.child.try_wait(), Ok(None));
        // SAFETY: signalling processes this test started, by pid.
        unsafe {
            if running {
                libc::kill(-self.pid, libc::SIGKILL);
            }
            for (&pid, &ticks) in self
                .live
                .lock()
                .unwrap()
                .iter()
                .filter(|_| self.kill_workers)
            {
                // Its pid now names another process: the worker, and its
                // group (whose number was free to reuse), are gone. With
                // no process at that pid, a group of that number can only
                // be the worker's, kept by what it started.
                match start_ticks(pid) {
                    Some(now) if Some(now) != ticks => continue,
                    Some(_) => {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    None => {}
                }
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
        // RCLUSTER_TEST_LOG=1: every master's log, to see where a passing
        // test spends its time.
        if std::thread::panicking()
            || std::env::var_os("RCLUSTER_TEST_LOG").is_some_and(|v| v == "1")
        {
            eprintln!("---- rcluster log ----\n{}\n----", self.log_text());
        }
    }
}

/// Sets its flag when dropped: when a thread ends, however it ends.
struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The latest ready worker of each slot, from the records seen.
pub fn apply_ready(current: &mut BTreeMap<u64, (i32, u64)>, records: &[Value]) {
    for r in records.iter().filter(|r| r["msg"] == "worker ready") {
        let slot = r["slot"].as_u64().unwrap();
        let pid = r["pid"].as_i64().unwrap() as i32;
        let generation = r["generation"].as_u64().unwrap();
        current.insert(slot, (pid, generation));
    }
}

/// Reloads a master under traffic and checks that each one replaced every
/// worker: the generation of each slot's ready worker, from the log.
pub struct Reloads {
    current: BTreeMap<u64, (i32, u64)>,
    workers: usize,
    exec_workers: bool,
}

impl Reloads {
    /// For a master just started (its `worker ready` records unread).
    pub fn new(master: &mut Master, workers: usize, exec_workers: bool) -> Reloads {
        let current = master
            .ready_workers()
            .into_iter()
            .map(|(slot, pid)| (slot, (pid, 1)))
            .collect();
        Reloads {
            current,
            workers,
            exec_workers,
        }
    }

    /// Sends `count` HUPs, each after the previous reload completed and
    /// `more(n)` saw `n` more requests served, so each one happens under
    /// load; checks that every reload replaced every worker (and, for
    /// exec'd workers, that each one's environment has the new generation).
    pub fn run(&mut self, master: &mut Master, count: u64, more: impl Fn(u64)) {
        more(200);
        for _ in 0..count {
            let target = self.current.values().map(|w| w.1).max().unwrap_or(1) + 1;
            let before: BTreeSet<i32> = self.current.values().map(|w| w.0).collect();
            master.signal(libc::SIGHUP);
            let records =
                master.collect_until("reload complete", |r| r["msg"] == "reload complete");
            let started = records
                .iter()
                .find(|r| r["msg"] == "reload started")
                .expect("reload started");
            assert_eq!(started["generation"], target);
            assert_eq!(started["workers"], self.workers);
            assert_eq!(records.last().unwrap()["generation"], target);
            apply_ready(&mut self.current, &records);
            assert_eq!(self.current.len(), self.workers);
            for (slot, &(pid, generation)) in &self.current {
                assert_eq!(generation, target, "slot {slot} after reload {target}");
                assert!(!before.contains(&pid), "slot {slot} still has pid {pid}");
                // /proc shows the environment a process was exec'd with, so
                // a forked worker's (cluster mode) is its master's.
                if self.exec_workers {
                    assert_eq!(
                        environ(pid, "RCLUSTER_GENERATION"),
                        Some(target.to_string())
                    );
                }
            }
            more(100);
        }
    }
}

/// Sends `reloads` HUPs while 32 connections of the project's client
/// request continuously (see `Reloads::run`), and checks that not one
/// request failed. The master must have just been started (its `listening`
/// record unread).
pub fn reload_under_load(
    master: &mut Master,
    workers: usize,
    keep_alive: bool,
    reloads: u64,
    exec_workers: bool,
) -> load::Samples {
    let addr = master.listening();
    let mut reloading = Reloads::new(master, workers, exec_workers);
    let load = load::Load::start(addr, 32, keep_alive);
    reloading.run(master, reloads, |n| load.wait_for_more(n));
    let stats = load.finish();
    assert_eq!(
        stats.failed(),
        0,
        "failed requests during reloads: {:?} ({} idle connections found closed before reuse)",
        stats.errors,
        stats.idle_closed
    );
    stats
}

/// The same under wrk (`wrk -t2 -c32`, keep-alive or `Connection: close`):
/// zero socket errors and zero non-2xx answers.
pub fn reload_under_wrk(
    master: &mut Master,
    workers: usize,
    keep_alive: bool,
    reloads: u64,
    exec_workers: bool,
) -> wrk::WrkStats {
    let addr = master.listening();
    reload_under_wrk_at(master, addr, workers, keep_alive, reloads, exec_workers)
}

/// The same, with wrk sending to `addr` (a proxy in front of the master).
pub fn reload_under_wrk_at(
    master: &mut Master,
    addr: SocketAddr,
    workers: usize,
    keep_alive: bool,
    reloads: u64,
    exec_workers: bool,
) -> wrk::WrkStats {
    let mut reloading = Reloads::new(master, workers, exec_workers);
    let wrk = wrk::Wrk::start(addr, 32, keep_alive);
    reloading.run(master, reloads, |n| wrk.wait_for_more(n));
    let stats = wrk.finish();
    assert!(stats.requests > 0, "wrk served nothing: {stats:?}");
    assert_eq!(
        stats.failed(),
        0,
        "wrk counted failures during reloads: {stats:?}"
    );
    stats
}

/// The same under both clients at once, 8 connections each: the project's
/// and wrk see every reload, and neither counts a failure. Sixteen
/// connections keep every worker busy; 32 gave a starting worker a
/// smaller share of two cores, and the Python example's reloads took
/// 2-4 s each instead of 0.8-1.2 (the time, not the strictness, grew).
pub fn reload_under_both(
    master: &mut Master,
    workers: usize,
    keep_alive: bool,
    reloads: u64,
    exec_workers: bool,
) -> (load::Samples, wrk::WrkStats) {
    let addr = master.listening();
    let mut reloading = Reloads::new(master, workers, exec_workers);
    // One gate for the two loads: they are one test's traffic.
    let _gate = load::gate();
    let ours = load::Load::start(addr, 8, keep_alive);
    let wrk = wrk::Wrk::start(addr, 8, keep_alive);
    reloading.run(master, reloads, |n| {
        ours.wait_for_more(n / 2);
        wrk.wait_for_more(n / 2);
    });
    let (ours, wrk) = (ours.finish(), wrk.finish());
    assert!(wrk.requests > 0, "wrk served nothing: {wrk:?}");
    assert_eq!(
        (ours.failed(), wrk.failed()),
        (0, 0),
        "failed requests during reloads: ours {:?} ({} idle connections found closed \
         before reuse), wrk {wrk:?}",
        ours.errors,
        ours.idle_closed
    );
    (ours, wrk)
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is gone: no such process, or a zombie nobody reaped yet.
pub fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// Drops the page cache of `path` where it can (written back first;
/// pages a process maps stay), as a host reclaiming cold pages does.
pub fn evict_cache(path: &str) {
    assert!(
        Path::new(path) != rcluster_bin(),
        "evicting the binary every test's master runs from stalls them all (run a private_binary)"
    );
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: advice on a file this function opened.
    let done = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert_eq!(done, 0, "posix_fadvise");
}

/// A copy of rcluster, for a test that evicts its master's binary from the
/// page cache or slows its reads: its pages are its own. Evicting or
/// throttling the binary every test runs made the other tests' masters
/// wait on the disk for code they had not run yet (a reload's master
/// stalled 16.6 s beside the slow-disk test). Beside the real one, on its
/// filesystem: in a tmpfs `/tmp` no page would ever leave memory. The
/// directory goes when the first value is dropped.
pub fn private_binary(tag: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::under(Path::new(env!("CARGO_TARGET_TMPDIR")), tag);
    let copy = dir.path("rcluster");
    std::fs::copy(rcluster_bin(), &copy).expect("copying rcluster");
    (dir, copy)
}

/// A master of `workers` test workers, ready, run from a
/// [`private_binary`] with a control socket: the master, the socket's
/// path, and the directories to keep until the test ends.
pub fn master_of_its_own(tag: &str, workers: &str) -> (Master, String, [TempDir; 2]) {
    let dir = TempDir::new(tag);
    let control = path_str(&dir.path("control.sock")).to_string();
    let worker = example("test_worker");
    let args = [
        "-w",
        workers,
        "--control",
        &control,
        "--",
        &worker,
        "--ready-after",
        "0",
    ];
    let (own, binary) = private_binary(tag);
    let mut master = Master::start_via(&binary, &[], &args, |_| {});
    master.expect_msg("workers ready");
    (master, control, [dir, own])
}

/// Spawns `cmd`, whose program may have just been written by this test:
/// while another test thread forks, its child holds a copy of the
/// writer's fd until it execs, and the kernel refuses to exec a file open
/// for writing (`ETXTBSY`, for microseconds; rust-lang/rust#114554). That
/// one error is tried again, for at most 5 s.
pub fn spawn_fresh(cmd: &mut Command) -> std::io::Result<Child> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            spawned => return spawned,
        }
    }
}

/// A port on 127.0.0.1 that is free now, for a server that binds a port
/// of its own: below the kernel's ephemeral range, so that the clients of
/// other tests (wrk in `Connection: close` mode opens thousands a second)
/// are never given it as their source port before the server binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u32 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(32768);
    let (first, span) = (10000u32, low.saturating_sub(10000).max(1));
    // Spread over the range by process and call: test processes run side
    // by side.
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + (std::process::id().wrapping_mul(7919) + n * 104_729) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port below {low}");
}

/// When `pid` started (`/proc/PID/stat` field 22, clock ticks since
/// boot): with the pid, what names one process, since pids wrap (32768 on
/// the test machine, spent by the suite's threads in minutes).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    // Field 22 overall is the 20th after the command's closing bracket.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that was `pid` and started at `ticks` is gone: its
/// pid free, a zombie, or someone else's by now.
pub fn is_gone_since(pid: i32, ticks: u64) -> bool {
    is_gone(pid) || start_ticks(pid) != Some(ticks)
}

/// A variable from a process's environment.
pub fn environ(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|entry| {
        let entry = String::from_utf8_lossy(entry);
        entry
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_string)
    })
}

/// The fds a process has open, sorted.
pub fn open_fds(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading /proc/<pid>/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    fds
}

pub fn fd_target(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs a program to completion (bounded): exit code, stdout, stderr.
pub fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> (i32, String, String) {
    run_command(Command::new(program.as_ref()), args)
}

/// As [`run`], for a command already set up.
pub fn run_command(mut cmd: Command, args: &[&str]) -> (i32, String, String) {
    let program = cmd.get_program().to_owned();
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("starting the program");
    let pid = child.id() as i32;
    let exited = wait_until(WAIT, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        // SAFETY: killing the process group we started.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let output = child.wait_with_output().expect("collecting the output");
    assert!(exited, "{program:?} {args:?} did not exit");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `rcluster ARGS` to completion: a command, or a master that must refuse
/// its input.
pub fn rcluster(args: &[&str]) -> (i32, String, String) {
    run(rcluster_bin(), args)
}

/// `rcluster ARGS` with its runtime directory (where masters' control
/// sockets are) under `runtime`, so that it sees only this test's masters.
pub fn rcluster_in(runtime: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(rcluster_bin());
    cmd.env("XDG_RUNTIME_DIR", runtime)
        .env_remove("RCLUSTER_CONTROL");
    run_command(cmd, args)
}

/// `sh -c` that runs `bad` instead of hello while `flag` says `bad`: how a
/// test deploys a bad release (einhorn's version-file trick).
pub fn release_switch(flag: &Path, bad: &str) -> String {
    format!(
        "if [ \"$(cat {})\" = bad ]; then {bad}; fi; exec {}",
        path_str(flag),
        example("hello")
    )
}

/// Makes `fd` the child's fd 3, the way systemd passes a socket.
pub fn pass_as_fd_3(cmd: &mut Command, fd: std::os::fd::RawFd) {
    // SAFETY: dup2 and fcntl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2(3, 3) keeps FD_CLOEXEC, so clear it explicitly.
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A test that cannot run on this machine (no root, no `runuser`, no
/// `::1`…) says so and returns; with `RCLUSTER_TESTS_STRICT=1`, which
/// `.ci/run` sets, it fails instead, so that a run that skipped the
/// security tests never looks like one that ran them.
pub fn skip(reason: &str) {
    if std::env::var_os("RCLUSTER_TESTS_STRICT").is_some_and(|v| v == "1") {
        panic!("cannot run here: {reason} (RCLUSTER_TESTS_STRICT=1 makes a skip a failure)");
    }
    eprintln!("skipped: {reason}");
    // `./test.sh` counts these at the end (libtest shows a skipped test as
    // `ok` and keeps its stderr).
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp/skipped-tests");
    let _ = std::fs::create_dir_all(list.parent().unwrap());
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&list)
    {
        let _ = writeln!(file, "{test}: {reason}");
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `rcluster status --json` of the master at `control` (exit 0, or 3: a
/// slot has no ready worker).
pub fn status(control: &str) -> Value {
    let (code, out, err) = rcluster(&["status", "--json", "--control", control]);
    assert!(code == 0 || code == 3, "status: {code} {err}");
    serde_json::from_str(&out).expect("status JSON")
}

/// The pid of each slot's ready worker, from `status --json`, by slot.
pub fn ready_pids(control: &str) -> Vec<(u64, i64)> {
    let status = status(control);
    let mut pids: Vec<(u64, i64)> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "ready")
        .map(|w| (w["slot"].as_u64().unwrap(), w["pid"].as_i64().unwrap()))
        .collect();
    pids.sort();
    pids
}

/// One `GET /` on a new connection, `Connection: close`: the whole answer,
/// or why none came within `deadline`.
pub fn get_once(addr: SocketAddr, deadline: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let start = Instant::now();
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, deadline).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(deadline)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("{e} after {:?}", start.elapsed()))?;
    Ok(answer)
}
