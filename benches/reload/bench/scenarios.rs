//! The scenarios: what each one does to the server and what it measures.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::Opts;
use super::load::{Load, Outcome, Sample, Samples};
use super::procfs;
use super::stats::{self, Latency, failures, latency, median};
use super::target::{Bins, Event, External, Rcluster};

/// How clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    Close,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "close",
        }
    }
}

/// What the bench drives: rcluster, or another manager via commands.
pub enum Server<'a> {
    Rcluster(&'a Bins),
    External {
        start: &'a str,
        reload: &'a str,
        addr: SocketAddr,
    },
}

/// rcluster with `hello` workers that say READY=1; reloads roll without
/// the canary's hold (the `defaults` scenario measures that).
pub fn hello_cluster(opts: &Opts, bins: &Bins, workers: usize, extra: &[&str]) -> Rcluster {
    let n = workers.to_string();
    let mut args = vec![
        "-w",
        &n,
        "--ready",
        "notify",
        "--min-ready",
        "0",
        "-l",
        "127.0.0.1:0",
    ];
    args.extend(["--balance", opts.balance]);
    args.extend_from_slice(extra);
    Rcluster::start(bins, &args, &[bins.hello.to_str().expect("utf-8 path")])
}

// ---- steady -----------------------------------------------------------------

pub struct Steady {
    pub mode: Mode,
    pub workers: usize,
    pub seconds: f64,
    pub served: u64,
    pub failed: Vec<(Outcome, u64)>,
    pub latency: Latency,
}

impl Steady {
    pub fn rps(&self) -> f64 {
        self.served as f64 / self.seconds
    }

    pub fn json(&self) -> Value {
        json!({
            "mode": self.mode.name(),
            "workers": self.workers,
            "seconds": self.seconds,
            "served": self.served,
            "requests_per_second": self.rps(),
            "failed": stats::failures_json(&self.failed),
            "latency": self.latency.json(),
        })
    }
}

pub fn steady(opts: &Opts, server: &Server, workers: usize, mode: Mode) -> Steady {
    let (_running, addr) = start(opts, server, workers);
    let epoch = Instant::now();
    let load = Load::start_at(addr, opts.connections, mode == Mode::KeepAlive, epoch);
    // Measured after a warm-up: the first requests pay for connecting.
    load.wait_for_more(100);
    let from = epoch.elapsed();
    std::thread::sleep(opts.steady);
    let to = epoch.elapsed();
    let samples = load.finish();
    let measured: Vec<Sample> = samples
        .samples
        .iter()
        .filter(|s| s.start >= from && s.end() <= to)
        .copied()
        .collect();
    Steady {
        mode,
        workers,
        seconds: (to - from).as_secs_f64(),
        served: measured.iter().filter(|s| s.outcome == Outcome::Ok).count() as u64,
        failed: failures(&measured),
        latency: latency(&measured),
    }
}

/// What keeps the server alive for a scenario, and where it listens.
enum Running {
    Rcluster(Rcluster),
    External(External),
}

fn start(opts: &Opts, server: &Server, workers: usize) -> (Running, SocketAddr) {
    match server {
        Server::Rcluster(bins) => {
            let rcluster = hello_cluster(opts, bins, workers, &[]);
            let addr = rcluster.addr.expect("a TCP listener");
            (Running::Rcluster(rcluster), addr)
        }
        Server::External {
            start,
            reload,
            addr,
        } => (
            Running::External(External::start(start, reload, *addr)),
            *addr,
        ),
    }
}

// ---- reload -----------------------------------------------------------------

pub struct ReloadTiming {
    /// HUP to the first new worker ready.
    pub to_first_ready: Option<Duration>,
    /// HUP to `reload complete` (or the reload command's return).
    pub to_complete: Duration,
    /// HUP to the last replaced worker's exit: the window in which
    /// requests count as during the reload.
    pub to_drained: Option<Duration>,
    /// The new workers' own time from fork to ready, summed.
    pub workers_own: Option<Duration>,
}

pub struct Reload {
    pub mode: Mode,
    pub workers: usize,
    pub timings: Vec<ReloadTiming>,
    pub served: u64,
    pub failed: Vec<(Outcome, u64)>,
    /// Requests that ran during a reload, and those that did not.
    pub during: Latency,
    pub outside: Latency,
    /// Those during a reload on a connection that was already open: what
    /// the reload costs a request that does not have to reconnect.
    pub during_reused: Latency,
    pub samples: Samples,
    pub windows: Vec<(Duration, Duration)>,
}

impl Reload {
    /// (reload duration − the new workers' own start-up time) / workers.
    pub fn overhead_per_worker(&self) -> Option<Duration> {
        let each: Option<Vec<Duration>> = self
            .timings
            .iter()
            .map(|t| Some(t.to_complete.saturating_sub(t.workers_own?) / self.workers as u32))
            .collect();
        each.map(|v| median(&v))
    }

    pub fn json(&self) -> Value {
        let ms = |d: Duration| stats::ms(d);
        json!({
            "mode": self.mode.name(),
            "workers": self.workers,
            "reloads": self.timings.iter().map(|t| json!({
                "to_first_ready_ms": t.to_first_ready.map(ms),
                "to_complete_ms": ms(t.to_complete),
                "to_drained_ms": t.to_drained.map(ms),
                "workers_own_ms": t.workers_own.map(ms),
            })).collect::<Vec<_>>(),
            "served": self.served,
            "failed": stats::failures_json(&self.failed),
            "idle_closed_before_reuse": self.samples.idle_closed,
            "latency_during_reloads": self.during.json(),
            "latency_outside_reloads": self.outside.json(),
            "latency_during_reloads_reused_connections": self.during_reused.json(),
            "overhead_per_worker_ms": self.overhead_per_worker().map(ms),
            "windows_ms": self.windows.iter().map(|(a, b)| [ms(*a), ms(*b)]).collect::<Vec<_>>(),
            "series": stats::buckets_json(&stats::buckets(&self.samples.samples, Duration::from_millis(25))),
        })
    }
}

pub fn reload(opts: &Opts, server: &Server, workers: usize, mode: Mode) -> Reload {
    let (mut running, addr) = start(opts, server, workers);
    let (epoch, epoch_wall) = (Instant::now(), SystemTime::now());
    let load = Load::start_at(addr, opts.connections, mode == Mode::KeepAlive, epoch);
    load.wait_for_more(100);
    std::thread::sleep(opts.gap);
    let mut timings = Vec::new();
    let mut windows = Vec::new();
    for round in 0..opts.reloads {
        let hup = SystemTime::now();
        let timing = match &mut running {
            Running::Rcluster(rcluster) => {
                let target = round as u64 + 2;
                rcluster.signal(libc::SIGHUP);
                // Until the last worker it replaced has exited: its clients
                // reconnect while it drains, after `reload complete`.
                let mut complete = false;
                let mut old_left = workers;
                let events = rcluster.collect_until("the old workers' exit", |e| {
                    complete |= e.msg() == "reload complete";
                    if e.msg() == "worker exited" && e.u64("generation") == target - 1 {
                        old_left -= 1;
                    }
                    complete && old_left == 0
                });
                let new_ready: Vec<_> = events
                    .iter()
                    .filter(|e| e.msg() == "worker ready" && e.u64("generation") == target)
                    .collect();
                let complete = events.iter().find(|e| e.msg() == "reload complete");
                let drained = events.last().expect("the last old worker's exit");
                ReloadTiming {
                    to_first_ready: new_ready.first().map(|e| e.since(hup)),
                    to_complete: complete.expect("the complete event").since(hup),
                    to_drained: Some(drained.since(hup)),
                    workers_own: Some(own_startup(&events, target)),
                }
            }
            Running::External(external) => ReloadTiming {
                to_first_ready: None,
                to_complete: external.reload(),
                to_drained: None,
                workers_own: None,
            },
        };
        let start = hup.duration_since(epoch_wall).unwrap_or_default();
        let window = timing.to_drained.unwrap_or(timing.to_complete);
        windows.push((start, start + window.max(opts.window_at_least)));
        timings.push(timing);
        std::thread::sleep(opts.gap);
    }
    let samples = load.finish();
    let (during, outside): (Vec<Sample>, Vec<Sample>) = samples
        .samples
        .iter()
        .partition(|s| windows.iter().any(|w| s.overlaps(*w)));
    Reload {
        mode,
        workers,
        timings,
        served: samples.ok(),
        failed: failures(&samples.samples),
        during: latency(&during),
        outside: latency(&outside),
        during_reused: latency(during.iter().filter(|s| !s.fresh)),
        samples,
        windows,
    }
}

/// The new workers' own start-up time, spawned to ready, summed: the part
/// of a reload that is the workers' and not the master's.
fn own_startup(events: &[Event], generation: u64) -> Duration {
    let of_target = |msg: &'static str| {
        events
            .iter()
            .filter(move |e| e.msg() == msg && e.u64("generation") == generation)
    };
    of_target("worker ready")
        .filter_map(|ready| {
            let spawned = of_target("worker spawned").find(|s| s.pid() == ready.pid())?;
            ready.at.duration_since(spawned.at).ok()
        })
        .sum()
}

// ---- crash ------------------------------------------------------------------

pub struct KillTiming {
    pub to_exec: Duration,
    pub to_ready: Duration,
}

pub struct Crash {
    pub mode: Mode,
    pub every: Duration,
    pub kills: Vec<KillTiming>,
    pub kill_times: Vec<Duration>,
    pub served: u64,
    pub failed: Vec<(Outcome, u64)>,
    pub longest_gap: Duration,
    pub samples: Samples,
}

impl Crash {
    pub fn json(&self) -> Value {
        let ms = |d: Duration| stats::ms(d);
        json!({
            "mode": self.mode.name(),
            "kill_every_ms": ms(self.every),
            "kills": self.kills.iter().map(|k| json!({
                "to_exec_ms": ms(k.to_exec),
                "to_ready_ms": ms(k.to_ready),
            })).collect::<Vec<_>>(),
            "median_to_exec_ms": ms(median(&self.kills.iter().map(|k| k.to_exec).collect::<Vec<_>>())),
            "median_to_ready_ms": ms(median(&self.kills.iter().map(|k| k.to_ready).collect::<Vec<_>>())),
            "served": self.served,
            "failed": stats::failures_json(&self.failed),
            "longest_gap_ms": ms(self.longest_gap),
            "kill_times_ms": self.kill_times.iter().map(|t| ms(*t)).collect::<Vec<_>>(),
            "series": stats::buckets_json(&stats::buckets(&self.samples.samples, Duration::from_millis(25))),
        })
    }
}

/// A small xorshift: which worker to kill need not be cryptographic.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

pub fn crash(opts: &Opts, bins: &Bins, workers: usize, mode: Mode) -> Crash {
    // Workers killed every `every` live longer than --min-uptime here, so
    // each is restarted at once; quicker crashes back off by design.
    let mut rcluster = hello_cluster(opts, bins, workers, &["--min-uptime", "100ms"]);
    let addr = rcluster.addr.expect("a TCP listener");
    let (epoch, epoch_wall) = (Instant::now(), SystemTime::now());
    let load = Load::start_at(addr, opts.connections, mode == Mode::KeepAlive, epoch);
    load.wait_for_more(100);
    let mut seed = epoch.elapsed().as_nanos() as u64 | 1;
    let mut kills = Vec::new();
    let mut kill_times = Vec::new();
    let until = Instant::now() + opts.crash;
    while Instant::now() < until {
        std::thread::sleep(opts.crash_every);
        let live = rcluster.live_workers();
        if live.is_empty() {
            continue;
        }
        let victim = live[next_random(&mut seed) as usize % live.len()];
        let killed = SystemTime::now();
        // SAFETY: killing a worker of the rcluster this bench started.
        unsafe { libc::kill(victim, libc::SIGKILL) };
        kill_times.push(killed.duration_since(epoch_wall).unwrap_or_default());
        let mut slot = None;
        let mut exec = None;
        let events = rcluster.collect_until("the replacement ready", |e| {
            if e.msg() == "worker exited" && e.pid() == victim {
                slot = Some(e.u64("slot"));
            }
            let replacement = slot.is_some() && Some(e.u64("slot")) == slot;
            if replacement && e.msg() == "worker started" {
                exec = Some(e.since(killed));
            }
            replacement && e.msg() == "worker ready"
        });
        let ready = events.last().expect("the ready event").since(killed);
        kills.push(KillTiming {
            to_exec: exec.expect("a worker started record (debug level)"),
            to_ready: ready,
        });
    }
    let samples = load.finish();
    rcluster.stop();
    Crash {
        mode,
        every: opts.crash_every,
        kills,
        kill_times,
        served: samples.ok(),
        failed: failures(&samples.samples),
        longest_gap: stats::longest_gap(&samples.samples),
        samples,
    }
}

// ---- scale ------------------------------------------------------------------

pub struct ScaleRow {
    pub workers: usize,
    pub startup: Duration,
    pub reload: Duration,
    pub overhead_per_worker: Duration,
    pub cpu_per_reload: Duration,
    pub rss_kib: u64,
    /// Kill to the replacement ready, and to its exec.
    pub restart: Duration,
    pub restart_exec: Duration,
    /// The restart step by step, each from the kill (medians).
    pub restart_steps: RestartSteps,
}

/// When the master logged each step of a restart, from the kill: the exit
/// seen (the pidfd woke it, the worker was reaped), the replacement
/// spawned (`clone` returned: with `CLONE_VFORK`, after its `execve` took
/// over), its exec confirmed (the exec pipe's EOF), ready (`READY=1`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RestartSteps {
    pub exited: Duration,
    pub spawned: Duration,
    pub exec: Duration,
    pub ready: Duration,
}

impl ScaleRow {
    pub fn per_worker(&self) -> Duration {
        self.reload / self.workers as u32
    }

    pub fn json(&self) -> Value {
        let ms = |d: Duration| stats::ms(d);
        json!({
            "workers": self.workers,
            "startup_ms": ms(self.startup),
            "reload_ms": ms(self.reload),
            "reload_per_worker_ms": ms(self.per_worker()),
            "overhead_per_worker_ms": ms(self.overhead_per_worker),
            "master_cpu_per_reload_ms": ms(self.cpu_per_reload),
            "master_rss_kib": self.rss_kib,
            "restart_ms": ms(self.restart),
            "restart_exec_ms": ms(self.restart_exec),
            "restart_steps_ms": {
                "exit_seen": ms(self.restart_steps.exited),
                "spawned": ms(self.restart_steps.spawned),
                "exec": ms(self.restart_steps.exec),
                "ready": ms(self.restart_steps.ready),
            },
        })
    }
}

/// Reload and restart cost as the worker count grows, with a tiny worker
/// that only says READY=1 (so the master's own cost shows).
pub fn scale(opts: &Opts, bins: &Bins, workers: usize) -> ScaleRow {
    let started = Instant::now();
    let worker = [
        bins.test_worker.to_str().expect("utf-8 path"),
        "--ready-after",
        "0",
    ];
    let n = workers.to_string();
    // --min-uptime 0s: the restart measured below is immediate, not backoff;
    // one at a time, no canary: the master's cost per worker shows.
    let mut rcluster = Rcluster::start(
        bins,
        &[
            "-w",
            &n,
            "--ready",
            "notify",
            "--min-uptime",
            "0s",
            "--min-ready",
            "0",
            "--reload-batch",
            "1",
        ],
        &worker,
    );
    let startup = started.elapsed();
    let mut reloads = Vec::new();
    let mut overheads = Vec::new();
    let mut cpus = Vec::new();
    // A reload of 8 workers costs the master about 2 ms of CPU, of the
    // order of one sample's noise here: fewer workers, more reloads (8× as
    // many at 8 as at 256 and above), so every count's median rests on
    // comparable work.
    let rounds = opts.scale_reloads * (256 / workers).clamp(1, 8);
    for round in 0..rounds {
        let target = round as u64 + 2;
        let before = procfs::read(rcluster.pid);
        let hup = SystemTime::now();
        rcluster.signal(libc::SIGHUP);
        let mut events =
            rcluster.collect_until("reload complete", |e| e.msg() == "reload complete");
        let took = events.last().expect("complete").since(hup);
        // The master's work for this reload ends with the last old
        // worker's exit, which may come after `reload complete`.
        let old_exited = |events: &[Event]| {
            events
                .iter()
                .filter(|e| e.msg() == "worker exited" && e.u64("generation") < target)
                .count()
        };
        while old_exited(&events) < workers {
            events.extend(
                rcluster.collect_until("an old worker's exit", |e| e.msg() == "worker exited"),
            );
        }
        let own = own_startup(&events, target);
        cpus.push(procfs::read(rcluster.pid).cpu.saturating_sub(before.cpu));
        reloads.push(took);
        overheads.push(took.saturating_sub(own) / workers as u32);
    }
    let rss_kib = procfs::read(rcluster.pid).rss_kib;
    let steps: Vec<RestartSteps> = (0..RESTARTS).map(|_| restart(&mut rcluster)).collect();
    let step =
        |of: fn(&RestartSteps) -> Duration| median(&steps.iter().map(of).collect::<Vec<_>>());
    let restart_steps = RestartSteps {
        exited: step(|s| s.exited),
        spawned: step(|s| s.spawned),
        exec: step(|s| s.exec),
        ready: step(|s| s.ready),
    };
    rcluster.stop();
    ScaleRow {
        workers,
        startup,
        reload: median(&reloads),
        overhead_per_worker: median(&overheads),
        cpu_per_reload: median(&cpus),
        rss_kib,
        restart: restart_steps.ready,
        restart_exec: restart_steps.exec,
        restart_steps,
    }
}

/// Kills measured per worker count: the restart figures are their medians.
const RESTARTS: usize = 5;

/// One worker killed while the master sleeps with nothing to do (what
/// "idle" means: the memory its last work used given back), and when each
/// step of its restart was logged.
fn restart(rcluster: &mut Rcluster) -> RestartSteps {
    if !procfs::wait_asleep(rcluster.pid, Instant::now() + Duration::from_secs(5)) {
        eprintln!("scale: the master did not go to sleep before a kill");
    }
    let victim = rcluster.live_workers()[0];
    let killed = SystemTime::now();
    // SAFETY: killing a worker of the rcluster this bench started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let mut slot = None;
    let events = rcluster.collect_until("the replacement ready", |e| {
        if e.msg() == "worker exited" && e.pid() == victim {
            slot = Some(e.u64("slot"));
        }
        slot.is_some() && e.msg() == "worker ready" && Some(e.u64("slot")) == slot
    });
    let ready = events.last().expect("ready").since(killed);
    let after_exit: Vec<&Event> = events
        .iter()
        .skip_while(|e| !(e.msg() == "worker exited" && e.pid() == victim))
        .collect();
    let at = |msg: &str| {
        after_exit
            .iter()
            .find(|e| e.msg() == msg && Some(e.u64("slot")) == slot)
            .map_or(ready, |e| e.since(killed))
    };
    RestartSteps {
        exited: after_exit.first().map_or(ready, |e| e.since(killed)),
        spawned: at("worker spawned"),
        exec: at("worker started"),
        ready,
    }
}

// ---- defaults ---------------------------------------------------------------

pub struct DefaultsRow {
    pub workers: usize,
    /// A worker that says nothing (ready when the master sees it listen).
    pub silent: bool,
    pub reload: Duration,
}

impl DefaultsRow {
    pub fn worker(&self) -> &'static str {
        if self.silent {
            "silent (listens)"
        } else {
            "hello (READY=1)"
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "workers": self.workers,
            "worker": self.worker(),
            "reload_ms": stats::ms(self.reload),
        })
    }
}

/// Reload time with no flag but the worker count: the canary's hold, then
/// the automatic batch. The silent worker holds its listener in an epoll
/// set, as an event-loop server does, and says nothing.
pub fn defaults(opts: &Opts, bins: &Bins, workers: usize, silent: bool) -> DefaultsRow {
    let n = workers.to_string();
    let worker = if silent {
        bins.test_worker.to_str()
    } else {
        bins.hello.to_str()
    };
    let worker = [worker.expect("utf-8 path")];
    let mut rcluster = Rcluster::start(bins, &["-w", &n, "-l", "127.0.0.1:0"], &worker);
    let mut reloads = Vec::new();
    for _ in 0..opts.defaults_reloads {
        let hup = SystemTime::now();
        rcluster.signal(libc::SIGHUP);
        let events = rcluster.collect_until("reload complete", |e| e.msg() == "reload complete");
        reloads.push(events.last().expect("complete").since(hup));
    }
    rcluster.stop();
    DefaultsRow {
        workers,
        silent,
        reload: median(&reloads),
    }
}

// ---- idle -------------------------------------------------------------------

pub struct Idle {
    pub seconds: f64,
    pub workers: usize,
    pub ticks: u64,
    pub cpu: Duration,
    pub wakeups: u64,
    pub rss_kib: u64,
}

impl Idle {
    pub fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "workers": self.workers,
            "cpu_ticks": self.ticks,
            "cpu_us": self.cpu.as_micros() as u64,
            "wakeups": self.wakeups,
            "master_rss_kib": self.rss_kib,
        })
    }
}

/// The master with nothing to do: it should not wake up at all.
pub fn idle(bins: &Bins, period: Duration) -> Idle {
    let workers = 2;
    let worker = [bins.test_worker.to_str().expect("utf-8 path")];
    let rcluster = Rcluster::start(bins, &["-w", &workers.to_string()], &worker);
    // Idle: nothing left to do and no deadline (the master's last turn
    // after start-up may still be due: the memory it gives back, within a
    // second of its last work).
    if !procfs::wait_asleep(rcluster.pid, Instant::now() + Duration::from_secs(5)) {
        eprintln!("idle: the master did not go to sleep without a deadline");
    }
    let before = procfs::read(rcluster.pid);
    std::thread::sleep(period);
    let after = procfs::read(rcluster.pid);
    rcluster.stop();
    Idle {
        seconds: period.as_secs_f64(),
        workers,
        ticks: after.ticks - before.ticks,
        cpu: after.cpu.saturating_sub(before.cpu),
        wakeups: after.voluntary_switches - before.voluntary_switches,
        rss_kib: after.rss_kib,
    }
}

/// A worker that writes 100-byte lines to stderr at `argv[1]` bytes a
/// second (0: as fast as it can). Each write is 40 whole lines, under
/// PIPE_BUF, so that with `--worker-stderr direct` the master's own log
/// lines, written to the same pipe, never land inside one.
const STDERR_WRITER: &str = r#"
import os, sys, time
rate = int(sys.argv[1])
chunk = (b"x" * 99 + b"\n") * 40
start, sent = time.monotonic(), 0
while True:
    os.write(2, chunk)
    sent += len(chunk)
    if rate:
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
"#;

/// One row of `stderr`: a worker writing to stderr, through the master or
/// straight to its destination (a pipe, as under systemd or Docker).
pub struct StderrRow {
    pub route: &'static str,
    /// Bytes a second the worker tries to write; None: as fast as it can.
    pub offered: Option<u64>,
    /// Bytes a second that reached the destination.
    pub delivered: f64,
    /// The master's CPU time over the window, as a share of one core.
    pub master_cpu: f64,
}

impl StderrRow {
    pub fn json(&self) -> Value {
        json!({
            "route": self.route,
            "offered_bytes_per_s": self.offered,
            "delivered_bytes_per_s": self.delivered,
            "master_cpu_share": self.master_cpu,
        })
    }
}

/// `stderr`: one worker writing 100 MB/s, then as fast as it can, with
/// `--worker-stderr master` (the default) and `direct`.
pub fn stderr(bins: &Bins, window: Duration) -> Vec<StderrRow> {
    let mut rows = Vec::new();
    for offered in [Some(100_000_000), None] {
        for route in ["master", "direct"] {
            let rate = offered.unwrap_or(0).to_string();
            let worker = ["python3", "-c", STDERR_WRITER, &rate];
            let args = ["-w", "1", "--worker-stderr", route];
            let rcluster = Rcluster::start(bins, &args, &worker);
            let bytes = || {
                rcluster
                    .stderr_bytes
                    .load(std::sync::atomic::Ordering::Relaxed)
            };
            let (before, sent_before) = (procfs::read(rcluster.pid), bytes());
            let started = Instant::now();
            std::thread::sleep(window);
            let (after, sent_after) = (procfs::read(rcluster.pid), bytes());
            let seconds = started.elapsed().as_secs_f64();
            rcluster.stop();
            rows.push(StderrRow {
                route,
                offered,
                delivered: (sent_after - sent_before) as f64 / seconds,
                master_cpu: after.cpu.saturating_sub(before.cpu).as_secs_f64() / seconds,
            });
        }
    }
    rows
}

// ---- balance ----------------------------------------------------------------

/// CPU each request of the balance scenario costs its worker.
const BURN: &str = "/burn/2";

/// One row of `balance`: a server, a `--balance` mode, a load.
pub struct BalanceRow {
    pub server: &'static str,
    pub balance: &'static str,
    /// Share of the measured capacity offered.
    pub load: f64,
    pub rate: f64,
    /// Requests served by each worker, most first (a worker that served
    /// none is a 0).
    pub shares: Vec<u64>,
    pub failed: u64,
    pub latency: Latency,
}

impl BalanceRow {
    /// Most served / least served.
    pub fn spread(&self) -> f64 {
        let most = self.shares.first().copied().unwrap_or(0) as f64;
        let least = self.shares.last().copied().unwrap_or(0) as f64;
        most / least
    }

    pub fn json(&self) -> Value {
        json!({
            "server": self.server,
            "balance": self.balance,
            "load": self.load,
            "requests_per_second": self.rate,
            "per_worker": self.shares,
            "failed": self.failed,
            "latency": self.latency.json(),
        })
    }
}

/// `balance`: 4 workers of hello, the Node example and the Python one, each
/// request burning 2 ms of CPU, in `--balance shared` and `reuseport`. The
/// capacity is measured first (8 clients back to back); then new
/// connections arrive at 30%, 60% and 90% of it, on a fixed schedule (an
/// open loop: latency counts from when a request was due, so a queue
/// shows), and the bench counts who served each.
pub fn balance(opts: &Opts, bins: &Bins) -> Vec<BalanceRow> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let node = root.join("node/server.js");
    let python = root.join("python/server.py");
    let hello = bins.hello.to_str().expect("utf-8 path").to_string();
    let servers: [(&str, Vec<String>); 3] = [
        ("hello", vec![hello]),
        ("node", vec!["node".into(), node.display().to_string()]),
        (
            "python",
            vec!["python3".into(), python.display().to_string()],
        ),
    ];
    let window = opts.steady.min(Duration::from_secs(3));
    let mut rows = Vec::new();
    for (server, command) in &servers {
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        for balance in ["shared", "reuseport"] {
            let args = ["-w", "4", "-l", "127.0.0.1:0", "--balance", balance];
            let rcluster = Rcluster::start(bins, &args, &command);
            let addr = rcluster.addr.expect("a TCP listener");
            let capacity = capacity(addr, window);
            for load in [0.3, 0.6, 0.9] {
                let rate = capacity * load;
                let (samples, pids) = open_loop(addr, rate, window);
                let mut shares: Vec<u64> = pids.values().copied().collect();
                shares.resize(shares.len().max(4), 0);
                shares.sort_unstable_by(|a, b| b.cmp(a));
                rows.push(BalanceRow {
                    server,
                    balance,
                    load,
                    rate,
                    shares,
                    failed: samples.iter().filter(|s| s.outcome != Outcome::Ok).count() as u64,
                    latency: latency(&samples),
                });
            }
            rcluster.stop();
        }
    }
    rows
}

/// Requests a second that 8 clients back to back get answered.
fn capacity(addr: SocketAddr, window: Duration) -> f64 {
    let until = Instant::now() + window;
    let served: u64 = std::thread::scope(|s| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while Instant::now() < until {
                        n += u64::from(super::http::get(addr, BURN).is_ok());
                    }
                    n
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap_or(0)).sum()
    });
    served as f64 / window.as_secs_f64()
}

/// New connections at `rate` a second for `window`, from 16 client
/// threads taking turns; each request's latency counts from when it was
/// due. Returns the samples and how many each worker pid served.
fn open_loop(
    addr: SocketAddr,
    rate: f64,
    window: Duration,
) -> (Vec<Sample>, std::collections::BTreeMap<i32, u64>) {
    const CLIENTS: usize = 16;
    let count = (rate * window.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let epoch = Instant::now();
    let results: Vec<(Sample, Option<i32>)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in (c..count).step_by(CLIENTS) {
                        let due = epoch + interval * i as u32;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let result = super::http::get(addr, BURN);
                        let sample = Sample {
                            start: due - epoch,
                            latency: due.elapsed(),
                            outcome: Outcome::of(&result),
                            fresh: true,
                        };
                        out.push((sample, result.ok().and_then(|r| r.pid())));
                    }
                    out
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap_or_default())
            .collect()
    });
    let mut pids = std::collections::BTreeMap::new();
    for pid in results.iter().filter_map(|(_, pid)| *pid) {
        *pids.entry(pid).or_insert(0) += 1;
    }
    (results.into_iter().map(|(s, _)| s).collect(), pids)
}
