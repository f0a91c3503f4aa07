//! The shell around the `Supervisor`: one thread, one `mio::Poll`. It turns
//! signals, exec pipes, notify datagrams, control requests and deadlines
//! into `Event`s, and carries out the `Action`s that come back. It is the
//! only code that reads the clock.
//!
//! It never sleeps and never ticks: the poll timeout is the supervisor's
//! next deadline (or a control client's), or none, so an idle master wakes
//! up zero times a second. How workers are started is the [`Launch`]er's
//! business; what was set up before the loop is `setup.rs`'s.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde_json::{Value, json};

use crate::control::metrics::{Metrics, MetricsServer};
use crate::control::server::{self as control, ControlServer, Request};
use crate::control::status::{self, Counts, MasterInfo, Observed};
use crate::control::usage;
use crate::error::Error;
use crate::launch::{Launch, Launched, OutputPipe, Reaping};
use crate::shell::log::{Log, render};
use crate::shell::output::{Output, Tail};
use crate::shell::reap;
use crate::shell::serving;
use crate::shell::setup::Setup;
use crate::shell::signals::{self, Signals};
use crate::sockets::balance::Balancer;
use crate::sockets::listen::Listener;
use crate::sockets::notify::{self, Datagram, Manager, NotifySocket};
use crate::sockets::portcheck;
use crate::start::envfile::{Changes, EnvSource};
use crate::supervisor::Supervisor;
use crate::supervisor::event::{Action, Event, MasterSignal, Outcome};
use crate::supervisor::record::Record;
use crate::supervisor::reload::ReloadOutcome;
use crate::vocab::Lane;
use crate::vocab::{Generation, Pid, SlotId, errno_name};

const SIGNALS: Token = Token(0);
const NOTIFY: Token = Token(1);
const CONTROL: Token = Token(2);
const METRICS: Token = Token(5);
/// The log's destinations, when they have room again (3 and 4).
const LOG_BASE: usize = 3;
/// Exec pipes are registered as `EXEC_BASE + pid` (a live child's pid is
/// unique and below 2^22, so no table of tokens is needed); control clients
/// and output pipes as their base plus a number of their own.
const EXEC_BASE: usize = 1 << 24;
const CONTROL_BASE: usize = 2 << 24;
const OUTPUT_BASE: usize = 3 << 24;
/// Each worker's pidfd, as `PIDFD_BASE + pid`.
const PIDFD_BASE: usize = 4 << 24;
/// `/metrics` clients.
const METRICS_BASE: usize = 5 << 24;

/// A worker's CPU share is measured over at least this long.
const CPU_SAMPLE: Duration = Duration::from_secs(1);

/// Runs the master until it stops: starts the workers with `launcher` and
/// supervises them. The listeners and the pid file live until it returns.
pub fn serve(setup: Setup, launcher: impl Launch, log: &Log) -> Result<(), Error> {
    let Setup {
        signals,
        listeners,
        pid_file,
        notify,
        control,
        metrics,
        info,
        policy,
        env,
        ..
    } = setup;
    let supervisor = Supervisor::new(policy);
    let mut master = Master::new(supervisor, launcher, signals, notify, control, info, log)?;
    if let Some((source, _)) = &env
        && let Some((kind, file)) = &source.once
    {
        log.emit(&Record::EnvFileOnce {
            path: source.path.display().to_string(),
            kind,
            count: file.vars.len(),
        });
    }
    master.env = env;
    if let Some(mut metrics) = metrics {
        metrics
            .endpoint()
            .register(master.poll.registry(), METRICS, METRICS_BASE)
            .map_err(|e| Error::os("registering the metrics socket", e))?;
        master.metrics_server = Some(metrics);
    }
    for listener in &listeners {
        master.ours.add(listener.fd());
    }
    master.listener_fds = listeners.iter().map(Listener::fd).collect();
    let groups: Vec<_> = listeners.iter().map(|l| (l.fd(), l.reuseport)).collect();
    if groups.iter().any(|(_, group)| group.is_some()) {
        let balancer = Balancer::new(&groups).map_err(|e| Error::os("--balance reuseport", e))?;
        master.balancer = Some(balancer);
    }
    master.listeners = listeners;
    // Children the master had before it started a worker (a `<(...)`
    // subshell its shell left it) are not the workers': left alone.
    if master.launcher.reaping() == Reaping::All {
        master.inherited = reap::children().into_iter().collect();
    }
    let outcome = master.run();
    drop(master);
    drop(pid_file);
    outcome
}

struct Master<'a, L: Launch> {
    poll: Poll,
    signals: Signals,
    supervisor: Supervisor,
    launcher: L,
    notify: NotifySocket,
    /// systemd, when rcluster runs under it with `Type=notify`.
    manager: Option<Manager>,
    control: Option<ControlServer>,
    /// `--metrics`, and what the master counts for it.
    metrics_server: Option<MetricsServer>,
    metrics: Metrics,
    info: MasterInfo,
    /// Control clients waiting for the reload to end, or the master to stop.
    reload_waiters: Vec<usize>,
    stop_waiters: Vec<usize>,
    /// The workers' output pipes, with `--log-prefix`.
    output: Output,
    /// Read ends of the exec pipes of workers whose exec is not confirmed.
    exec_pipes: HashMap<Pid, OwnedFd>,
    /// Each worker's pidfd, readable once it has exited.
    pidfds: HashMap<Pid, OwnedFd>,
    /// Notify datagrams dropped: not from a worker, or not its user.
    notify_dropped: u64,
    /// The last lines on stderr of each slot's last exited worker.
    last_words: HashMap<SlotId, (Pid, Tail)>,
    /// Each worker's CPU time when last looked at, and the share of a CPU
    /// it used up to then (for `status` and `/metrics`).
    cpu_samples: HashMap<Pid, (Instant, u64, f64)>,
    /// `--env-file`: how to read it at a reload, and the variables the
    /// last generation got.
    env: Option<(EnvSource, Vec<(String, String)>)>,
    /// The listeners' socket inodes and addresses: what a worker serves
    /// on; its other listening sockets are ports of its own.
    ours: serving::Listeners,
    /// The master's copies of the listeners, until a stop begins.
    listeners: Vec<Listener>,
    /// What every worker gets at fd 3, 4, …
    listener_fds: Vec<RawFd>,
    /// What the last look at each booting worker saw (`serving.rs`).
    look_samples: serving::Samples,
    /// Children the master had before its first worker: not strays.
    inherited: std::collections::BTreeSet<Pid>,
    /// `--balance reuseport`: each slot's own sockets, and the steering.
    balancer: Option<Balancer>,
    /// The notify socket was not drained to the end last turn.
    notify_pending: bool,
    log: &'a Log,
    /// Set by the supervisor's `Exit` action: how the master ends.
    outcome: Option<Result<(), Error>>,
}

impl<'a, L: Launch> Master<'a, L> {
    fn new(
        supervisor: Supervisor,
        launcher: L,
        signals: Signals,
        mut notify: NotifySocket,
        mut control: Option<ControlServer>,
        info: MasterInfo,
        log: &'a Log,
    ) -> Result<Master<'a, L>, Error> {
        let poll = Poll::new().map_err(|e| Error::os("creating the event loop", e))?;
        poll.registry()
            .register(
                &mut SourceFd(&signals.as_raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )
            .map_err(|e| Error::os("watching the master's signals", e))?;
        poll.registry()
            .register(notify.source(), NOTIFY, Interest::READABLE)
            .map_err(|e| Error::os("registering the notify socket", e))?;
        if let Some(control) = &mut control {
            control
                .endpoint()
                .register(poll.registry(), CONTROL, CONTROL_BASE)
                .map_err(|e| Error::os("registering the control socket", e))?;
        }
        watch_log(&poll, log);
        Ok(Master {
            poll,
            signals,
            supervisor,
            launcher,
            notify,
            manager: Manager::from_env(),
            control,
            metrics_server: None,
            metrics: Metrics::default(),
            info,
            reload_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            output: Output::new(OUTPUT_BASE),
            exec_pipes: HashMap::new(),
            pidfds: HashMap::new(),
            notify_dropped: 0,
            ours: serving::Listeners::default(),
            listeners: Vec::new(),
            listener_fds: Vec::new(),
            look_samples: serving::Samples::new(),
            inherited: Default::default(),
            balancer: None,
            env: None,
            last_words: HashMap::new(),
            cpu_samples: HashMap::new(),
            notify_pending: false,
            log,
            outcome: None,
        })
    }

    fn run(&mut self) -> Result<(), Error> {
        let mut events = Events::with_capacity(256);
        self.dispatch(Event::Start, Instant::now());
        loop {
            if let Some(outcome) = self.outcome.take() {
                return outcome;
            }
            // mio rounds a sub-millisecond timeout up, never down to a busy
            // 0. Output pipes with more to read get their turn at once.
            let deadline = [
                self.supervisor.next_deadline(),
                self.control.as_ref().and_then(ControlServer::next_deadline),
                self.metrics_server
                    .as_mut()
                    .and_then(|m| m.endpoint().next_deadline()),
            ]
            .into_iter()
            .flatten()
            .min();
            // While the log is congested, workers' output waits in their
            // pipes: no turn for it until the log has room.
            let congested = self.log.congested();
            let timeout = if (self.output.has_pending() && !congested) || self.notify_pending {
                Some(Duration::ZERO)
            } else {
                deadline.map(|d| d.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(Error::os("waiting for events (epoll_wait)", e));
            }
            let now = Instant::now();
            // Exec pipes first: a worker's exec precedes anything it says,
            // even when both land in one wakeup.
            for event in events.iter() {
                if let Token(t @ EXEC_BASE..CONTROL_BASE) = event.token() {
                    self.on_exec_pipe(Pid::from_raw((t - EXEC_BASE) as i32), now);
                }
            }
            if self.notify_pending {
                self.on_notify(now);
            }
            let mut new_clients = false;
            let mut new_scrapers = false;
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(now),
                    NOTIFY => self.on_notify(now),
                    // After the clients' events: those that hung up free
                    // their fds before new ones are accepted.
                    CONTROL => new_clients = true,
                    METRICS => new_scrapers = true,
                    token @ Token(CONTROL_BASE..OUTPUT_BASE) => self.on_control_client(token, now),
                    token @ Token(OUTPUT_BASE..PIDFD_BASE) => {
                        if let Some(id) = self.output.owns(token) {
                            if self.log.congested() {
                                self.output.postpone(id);
                            } else {
                                self.output.read(id, self.poll.registry(), self.log);
                            }
                        }
                    }
                    Token(t) if (LOG_BASE..LOG_BASE + 2).contains(&t) => self.log.flush(),
                    token @ Token(METRICS_BASE..) => self.on_scraper(token, now),
                    Token(t @ PIDFD_BASE..METRICS_BASE) => {
                        let pid = Pid::from_raw((t - PIDFD_BASE) as i32);
                        if let Some(exit) = reap::pid(pid) {
                            self.on_reaped(pid, exit, now);
                        }
                    }
                    Token(_) => {}
                }
            }
            if new_clients {
                self.on_control_listener(now);
            }
            if new_scrapers && let Some(metrics) = &mut self.metrics_server {
                metrics.endpoint().accept(self.poll.registry(), now);
            }
            if !self.log.congested() {
                self.output.service_pending(self.poll.registry(), self.log);
            }
            if let Some(control) = &mut self.control {
                control.endpoint().expire(now, self.poll.registry());
            }
            if let Some(metrics) = &mut self.metrics_server {
                metrics.endpoint().expire(now, self.poll.registry());
            }
            if self.supervisor.next_deadline().is_some_and(|d| d <= now) {
                self.dispatch(Event::Timeout, now);
            }
        }
    }

    fn on_signals(&mut self, now: Instant) {
        for received in self.signals.pending() {
            match (received.signal, signals::classify(received.signal)) {
                (_, Some(MasterSignal::Reload)) => {
                    let _ = self.reload(now);
                }
                (_, Some(signal)) => self.dispatch(Event::Signal(signal), now),
                (libc::SIGUSR1, None) => self.reopen_log(),
                (libc::SIGCHLD, None) => self.on_child(received.sender, now),
                (_, None) => {}
            }
        }
    }

    /// `SIGUSR1`: logrotate moved the log file; write to a fresh one.
    fn reopen_log(&mut self) {
        match self.log.reopen() {
            Ok(Some(path)) => {
                watch_log(&self.poll, self.log);
                self.log.emit(&Record::LogReopened {
                    path: path.display().to_string(),
                })
            }
            Ok(None) => self.log.emit(&Record::SignalIgnored {
                signal: "SIGUSR1",
                why: "there is no --log-file to reopen",
            }),
            Err(e) => self.log.emit(&Record::OsError {
                op: "reopening the log file".into(),
                error: e.to_string(),
            }),
        }
    }

    fn on_control_listener(&mut self, now: Instant) {
        if let Some(control) = &mut self.control {
            control.endpoint().accept(self.poll.registry(), now);
        }
    }

    /// A `/metrics` client's event; a whole `GET /metrics` is answered with
    /// the figures as they are now.
    fn on_scraper(&mut self, token: Token, now: Instant) {
        let Some(server) = &mut self.metrics_server else {
            return;
        };
        let Some(id) = server.endpoint().owns(token) else {
            return;
        };
        if !server.on_event(id, self.poll.registry()) {
            return;
        }
        let observed = self.observe(now, None);
        let exposition =
            self.metrics
                .render(&self.supervisor, &self.info, &observed, self.counts(), now);
        if let Some(server) = &mut self.metrics_server {
            server.reply(id, &exposition, self.poll.registry());
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            log_lines_lost: self.log.lines_lost(),
            notify_dropped: self.notify_dropped,
        }
    }

    fn on_control_client(&mut self, token: Token, now: Instant) {
        let Some(control) = &mut self.control else {
            return;
        };
        let Some(id) = control.endpoint().owns(token) else {
            return;
        };
        if let Some(request) = control.on_event(id, self.poll.registry()) {
            self.on_request(id, request, now);
        }
    }

    /// Carries out a control request: the same events a signal makes. A
    /// client that waits is registered before the event is handled, since
    /// the event may finish what it waits for.
    fn on_request(&mut self, id: usize, request: Request, now: Instant) {
        let running = self.supervisor.is_running();
        let response = match request {
            Request::Status { slot } => {
                let counts = self.counts();
                let observed = self.observe(now, slot);
                Some(status::to_json(
                    &self.supervisor,
                    &self.info,
                    counts,
                    &observed,
                    slot,
                    now,
                ))
            }
            Request::Reload { .. } | Request::Scale { .. } if !running => {
                Some(control::error("the master is stopping"))
            }
            Request::Reload { wait } => {
                if wait {
                    self.hold(id);
                    self.reload_waiters.push(id);
                }
                match self.reload(now) {
                    Err(cause) => {
                        self.reload_waiters.retain(|&w| w != id);
                        Some(
                            json!({"ok": false, "result": "aborted", "cause": cause, "error": format!("reload aborted: {cause}")}),
                        )
                    }
                    Ok(()) if wait => None,
                    Ok(()) => {
                        Some(json!({"ok": true, "generation": self.supervisor.target_generation()}))
                    }
                }
            }
            Request::Scale { workers } => {
                self.dispatch(Event::ScaleTo(workers), now);
                Some(json!({"ok": true, "workers": workers}))
            }
            Request::Stop { wait } => {
                if wait {
                    self.hold(id);
                    self.stop_waiters.push(id);
                }
                if running {
                    self.dispatch(Event::Signal(MasterSignal::Terminate), now);
                }
                (!wait).then(|| json!({"ok": true}))
            }
        };
        if let Some(response) = response {
            self.answer(vec![id], &response);
        }
    }

    /// A reload (HUP or `rcluster reload`): the env file is read first
    /// (without blocking: `envfile.rs`), and one that cannot be read or
    /// parsed stops the reload before it starts.
    fn reload(&mut self, now: Instant) -> Result<(), String> {
        if let Some((source, vars)) = &mut self.env {
            match source.reread() {
                Ok(file) => {
                    let changes = Changes::between(vars, &file.vars);
                    self.log.emit(&Record::EnvFileRead {
                        path: source.path.display().to_string(),
                        added: changes.added,
                        removed: changes.removed,
                        changed: changes.changed,
                        emptied: !vars.is_empty() && file.vars.is_empty(),
                    });
                    vars.clone_from(&file.vars);
                    self.launcher.set_env_file(&file.vars);
                    self.dispatch(Event::Signal(MasterSignal::Reload), now);
                    let generation = self.supervisor.target_generation();
                    // Only the versions some worker still runs are kept.
                    let oldest = self.supervisor.workers().map(|w| w.generation).min();
                    let oldest = oldest.unwrap_or(generation);
                    self.info.env_versions.retain(|g, _| *g >= oldest);
                    self.info.env_versions.insert(generation, file.version);
                }
                Err(e) => {
                    let cause = e.message;
                    self.dispatch(
                        Event::ReloadRefused {
                            cause: cause.clone(),
                        },
                        now,
                    );
                    return Err(cause);
                }
            }
        } else {
            self.dispatch(Event::Signal(MasterSignal::Reload), now);
        }
        Ok(())
    }

    /// What the workers use and said, read now (never polled): memory and
    /// CPU from `/proc`, CPU as a share of one CPU since the last look at
    /// least a second ago, else over the worker's life; and, for `slot`
    /// (`status --slot N`), the last lines on stderr its workers kept.
    fn observe(&mut self, now: Instant, slot: Option<SlotId>) -> Observed {
        let ticks_per_second = usage::ticks_per_second() as f64;
        let mut observed = Observed {
            master_rss: usage::of_process(Pid::from_raw(std::process::id() as i32))
                .map(|u| u.rss_bytes),
            ..Observed::default()
        };
        for worker in self.supervisor.workers() {
            let Some(used) = usage::of_tree(worker.pid) else {
                continue;
            };
            let percent = match self.cpu_samples.get(&worker.pid) {
                // Under a second since the last look: too short to measure.
                Some(&(at, _, percent)) if now.saturating_duration_since(at) < CPU_SAMPLE => {
                    percent
                }
                last => {
                    let (since, ticks) =
                        last.map_or((worker.started, 0), |&(at, ticks, _)| (at, ticks));
                    let seconds = now.saturating_duration_since(since).as_secs_f64();
                    let used_seconds =
                        used.cpu_ticks.saturating_sub(ticks) as f64 / ticks_per_second;
                    let percent = if seconds > 0.0 {
                        100.0 * used_seconds / seconds
                    } else {
                        0.0
                    };
                    self.cpu_samples
                        .insert(worker.pid, (now, used.cpu_ticks, percent));
                    percent
                }
            };
            observed.usage.insert(worker.pid, (used, percent));
        }
        for (&id, (_, tail)) in &self.last_words {
            if let Some(line) = tail.cause() {
                observed.last_lines.insert(id, line);
            }
        }
        let Some(slot) = slot else {
            return observed;
        };
        for (pid, tail) in self.output.tails() {
            if self.supervisor.slot_of(pid) == Some(slot) {
                observed
                    .tails
                    .insert(pid, tail.lines().map(str::to_string).collect());
            }
        }
        observed.previous = self
            .last_words
            .get(&slot)
            .map(|(pid, tail)| (*pid, tail.lines().map(str::to_string).collect()));
        observed
    }

    fn hold(&mut self, id: usize) {
        if let Some(control) = &mut self.control {
            control.endpoint().hold(id);
        }
    }

    /// Answers every client in `waiters`.
    fn answer(&mut self, waiters: Vec<usize>, response: &Value) {
        if let Some(control) = &mut self.control {
            for id in waiters {
                control.reply(id, response, self.poll.registry());
            }
        }
    }

    /// Drains the notify socket: edge-triggered, so until it would block;
    /// a failed read skips that datagram, and a turn that reads many leaves
    /// the rest for the next turn, which comes at once: a worker flooding
    /// the socket delays no respawn, reload step or `status` answer by more
    /// than a turn's worth.
    fn on_notify(&mut self, now: Instant) {
        const PER_TURN: usize = 256;
        self.notify_pending = false;
        let mut error = None;
        for _ in 0..PER_TURN {
            match self.notify.recv() {
                Ok(Some(datagram)) => self.on_datagram(datagram, now),
                Ok(None) => {
                    if let Some(e) = error {
                        self.log.emit(&Record::OsError {
                            op: "reading the notify socket".into(),
                            error: e,
                        });
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => error = Some(e.to_string()),
            }
        }
        self.notify_pending = true;
    }

    fn on_datagram(&mut self, datagram: Datagram, now: Instant) {
        // Most datagrams come from a worker itself: no need to walk /proc.
        let ancestry = match datagram.sender {
            Some(sender) if self.supervisor.is_worker(sender) => vec![sender],
            Some(sender) => notify::ancestry(sender),
            None => Vec::new(),
        };
        let supervisor = &self.supervisor;
        let speaker = notify::speaker(
            &datagram,
            &ancestry,
            |pid| supervisor.is_worker(pid),
            self.launcher.uid(),
        );
        match speaker {
            Ok(worker) => {
                let sender = datagram.sender.unwrap_or(worker);
                for msg in datagram.messages {
                    self.dispatch(
                        Event::Notify {
                            pid: worker,
                            msg,
                            sender,
                        },
                        now,
                    );
                }
            }
            Err(why) => {
                self.notify_dropped += 1;
                self.log.emit(&Record::NotifyIgnored {
                    pid: datagram.sender.unwrap_or(Pid::from_raw(0)),
                    why: why.to_string(),
                });
            }
        }
    }

    /// A SIGCHLD from `sender`. A worker with a pidfd is reaped when its
    /// pidfd says so. Anything else is reaped by pid; an orphan's exit then
    /// sweeps for the others, since one SIGCHLD can stand for several exits
    /// (an orphan hidden behind a worker's waits for the next sweep).
    fn on_child(&mut self, sender: Pid, now: Instant) {
        if self.pidfds.contains_key(&sender) {
            return;
        }
        let worker = self.supervisor.is_worker(sender);
        if !worker && self.launcher.reaping() == Reaping::Workers {
            // A child of the program that runs the cluster: not ours to reap.
            return;
        }
        if let Some(exit) = reap::pid(sender) {
            self.on_reaped(sender, exit, now);
            if !worker {
                self.reap(now);
            }
        } else if worker {
            // A worker without a pidfd whose SIGCHLD merged with another's.
            self.reap(now);
        }
    }

    /// Reaps every exited child, handling each exit before the next
    /// `waitpid`: until then the pid is a zombie, not free for reuse, so
    /// whatever the supervisor decides about the others is still safe.
    /// A SIGCHLD that stands for several exits may name a worker with a
    /// pidfd and hide an orphan: that orphan is reaped with the next sweep.
    fn reap(&mut self, now: Instant) {
        match self.launcher.reaping() {
            Reaping::All => {
                while let Some((pid, exit)) = reap::any() {
                    self.on_reaped(pid, exit, now);
                }
            }
            // Workers without a pidfd (an old kernel), by pid.
            Reaping::Workers => {
                for pid in self.supervisor.worker_pids() {
                    if !self.pidfds.contains_key(&pid)
                        && let Some(exit) = reap::pid(pid)
                    {
                        self.on_reaped(pid, exit, now);
                    }
                }
            }
        }
    }

    fn on_reaped(&mut self, pid: Pid, exit: crate::vocab::Exit, now: Instant) {
        if let Some(pidfd) = self.pidfds.remove(&pid) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pidfd.as_raw_fd()));
        }
        // The exec pipe of a child that died young still holds its errno:
        // report the exec before the exit, so the log says "could not exec
        // (ENOENT)", not "exited with code 127".
        if self.exec_pipes.contains_key(&pid) {
            self.on_exec_pipe(pid, now);
        }
        // Its last words first: what it wrote just before it died may still
        // be in its pipe.
        let tail = self.output.last_words(pid, self.poll.registry(), self.log);
        let last_line = tail.cause();
        self.cpu_samples.remove(&pid);
        self.look_samples.remove(&pid);
        self.inherited.remove(&pid);
        if let Some(slot) = self.supervisor.slot_of(pid) {
            self.last_words.insert(slot, (pid, tail));
        }
        self.dispatch(
            Event::Exited {
                pid,
                exit,
                last_line,
            },
            now,
        );
    }

    fn on_exec_pipe(&mut self, pid: Pid, now: Instant) {
        let Some(pipe) = self.exec_pipes.get(&pid) else {
            return;
        };
        let mut buf = [0u8; 4];
        let result = loop {
            break match nix::unistd::read(pipe.as_fd(), &mut buf) {
                Ok(0) => Ok(()),
                Ok(_) => Err(i32::from_ne_bytes(buf)),
                Err(nix::errno::Errno::EAGAIN) => return,
                // A signal while reading says nothing about the exec.
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => Err(e as i32),
            };
        };
        if let Some(pipe) = self.exec_pipes.remove(&pid) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pipe.as_raw_fd()));
        }
        self.dispatch(Event::Exec { pid, result }, now);
    }

    /// Feeds one event to the supervisor and carries out its actions. A
    /// spawn's answer is fed back before the next action runs.
    fn dispatch(&mut self, event: Event, now: Instant) {
        for action in self.supervisor.handle(event, now) {
            self.execute(action, now);
        }
    }

    /// The listeners a worker of `slot` on `lane` gets.
    fn listeners_for(&mut self, slot: SlotId, lane: Lane) -> io::Result<Vec<RawFd>> {
        let Some(balancer) = &mut self.balancer else {
            return Ok(self.listener_fds.clone());
        };
        let fds = balancer.fds(slot, lane)?;
        // The slot's sockets are the worker's own, not ports of its own.
        for &fd in &fds {
            if !self.ours.knows(fd) {
                self.ours.add(fd);
            }
        }
        Ok(fds)
    }

    fn execute(&mut self, action: Action, now: Instant) {
        match action {
            Action::Spawn {
                slot,
                generation,
                lane,
            } => self.spawn(slot, generation, lane, now),
            Action::Signal { pid, signal } => {
                // SAFETY: plain syscalls. The supervisor signals only pids it
                // has not seen exit, and exits are reported as they are
                // reaped, so this is our child or our zombie. A process
                // stopped with SIGSTOP would hold the signal: SIGCONT after
                // it, as systemd does.
                unsafe {
                    libc::kill(pid.as_raw(), signal);
                    libc::kill(pid.as_raw(), libc::SIGCONT);
                }
            }
            Action::KillRemnants { pgid } => {
                // SAFETY: a group, never a pid: the number of a worker that
                // left members behind is not reused while any is alive.
                unsafe { libc::kill(-pgid.as_raw(), libc::SIGKILL) };
            }
            Action::StopGroup { pgid, signal } => {
                // SAFETY: the group of a worker just reaped: its number is
                // not free for reuse while anything is in it, and nothing
                // is hit if it is empty.
                let lingers = unsafe { libc::kill(-pgid.as_raw(), signal) } == 0;
                if lingers {
                    // SAFETY: as above.
                    unsafe { libc::kill(-pgid.as_raw(), libc::SIGCONT) };
                    self.dispatch(Event::GroupLingers { pgid }, now);
                }
            }
            Action::FindStrays { of } => {
                let pids = self.find_strays(of);
                self.dispatch(Event::Strays { of, pids }, now);
            }
            Action::KillGroup { pid } => {
                // SAFETY: plain syscalls on our own child's group.
                unsafe {
                    if libc::kill(-pid.as_raw(), libc::SIGKILL) != 0 {
                        libc::kill(pid.as_raw(), libc::SIGKILL);
                    }
                }
            }
            Action::MeasureMemory { pids } => {
                let rss = pids
                    .into_iter()
                    .filter_map(|pid| Some((pid, usage::of_tree(pid)?.rss_bytes)))
                    .collect();
                self.dispatch(Event::Memory(rss), now);
            }
            Action::CheckListeners { pid } => {
                let Some(pidfd) = self.pidfds.get(&pid) else {
                    return;
                };
                let ports = portcheck::own_ports(pidfd.as_fd(), &self.ours.inodes);
                if !ports.is_empty() {
                    self.log.emit(&Record::OwnPorts {
                        pid,
                        ports,
                        ours: self
                            .info
                            .listeners
                            .iter()
                            .map(|(_, addr)| addr.clone())
                            .collect(),
                    });
                }
            }
            Action::LookServing { pid } => {
                let serving = serving::look(pid, &self.ours, &mut self.look_samples);
                self.dispatch(Event::Serving { pid, serving }, now);
            }
            Action::CloseListeners => {
                // Workers hold their own copies while they drain; once the
                // last is closed, a new connection is refused at once.
                self.listeners.clear();
                self.listener_fds.clear();
                if let Some(balancer) = &mut self.balancer {
                    balancer.close();
                }
            }
            Action::Steer { queues } => {
                let steered = self.balancer.as_mut().map(|b| b.steer(&queues));
                if let Some(Err(e)) = steered {
                    self.log.emit(&Record::OsError {
                        op: "steering new connections (SO_ATTACH_REUSEPORT_CBPF)".into(),
                        error: e.to_string(),
                    });
                }
            }
            Action::Log(record) => {
                self.metrics.observe(&record);
                self.log.emit(&record)
            }
            Action::NotifyManager(state) => {
                if let Some(manager) = &self.manager
                    && let Err(e) = manager.tell(&state)
                {
                    self.log.emit(&Record::OsError {
                        op: "notifying systemd (NOTIFY_SOCKET)".into(),
                        error: e.to_string(),
                    });
                }
            }
            Action::ReloadFinished(outcome) => {
                self.metrics.reload_finished(&outcome);
                let waiters = std::mem::take(&mut self.reload_waiters);
                self.answer(waiters, &reload_answer(&outcome));
            }
            Action::Exit(outcome) => {
                let waiters = std::mem::take(&mut self.reload_waiters);
                self.answer(waiters, &control::error("the master stopped"));
                let code = outcome.exit_code();
                let waiters = std::mem::take(&mut self.stop_waiters);
                self.answer(
                    waiters,
                    &json!({"ok": code == 0, "result": "stopped", "code": code}),
                );
                self.outcome = Some(match outcome {
                    Outcome::Stopped => Ok(()),
                    Outcome::GaveUp {
                        slot,
                        crashes,
                        max_restarts,
                    } => Err(Error::GaveUp(render::sentence(&Record::GivingUp {
                        slot,
                        crashes,
                        max_restarts,
                    }))),
                    Outcome::CannotExec { errno } => {
                        Err(Error::cannot_exec(&self.launcher.describe(), errno))
                    }
                });
            }
        }
    }

    /// The master's children that are no workers: every one, or those the
    /// worker `of` started. Each is watched through a pidfd, as workers
    /// are, so its exit is seen even when its SIGCHLD merges with another's
    /// (the master waits for it at shutdown); one already gone is left out.
    /// Cluster mode adopts nothing: a library does not touch its host's
    /// children.
    fn find_strays(&mut self, of: Option<Pid>) -> Vec<Pid> {
        if self.launcher.reaping() != Reaping::All {
            return Vec::new();
        }
        let found: Vec<Pid> = reap::children()
            .into_iter()
            .filter(|&pid| !self.supervisor.is_worker(pid) && !self.pidfds.contains_key(&pid))
            .filter(|pid| !self.inherited.contains(pid))
            .filter(|&pid| of.is_none_or(|worker| reap::started_by(pid, worker)))
            .collect();
        found
            .into_iter()
            .filter(|&pid| self.watch_exit(pid))
            .collect()
    }

    fn spawn(&mut self, slot: SlotId, generation: Generation, lane: Lane, now: Instant) {
        let listeners = match self.listeners_for(slot, lane) {
            Ok(fds) => fds,
            Err(e) => {
                let error = format!("binding slot {slot}'s sockets failed: {}", io_errno(&e));
                let failed = Event::SpawnFailed {
                    slot,
                    generation,
                    error,
                };
                return self.dispatch(failed, now);
            }
        };
        match self.launcher.launch(slot, generation, &listeners) {
            Ok(Launched {
                pid,
                exec_pipe,
                output,
            }) => {
                self.watch_output(slot, pid, output);
                let confirmed = exec_pipe.is_none();
                if let Some(pipe) = exec_pipe {
                    self.watch_exec_pipe(pid, pipe);
                }
                self.watch_exit(pid);
                let spawned = Event::Spawned {
                    slot,
                    generation,
                    pid,
                    confirmed,
                };
                self.dispatch(spawned, now);
            }
            Err(e) => self.dispatch(
                Event::SpawnFailed {
                    slot,
                    generation,
                    error: e.to_string(),
                },
                now,
            ),
        }
    }

    fn watch_output(&mut self, slot: SlotId, pid: Pid, pipes: Vec<OutputPipe>) {
        for OutputPipe {
            stream,
            prefixed,
            fd,
        } in pipes
        {
            if let Err(e) = self
                .output
                .watch(self.poll.registry(), slot, pid, stream, prefixed, fd)
            {
                self.log.emit(&Record::OsError {
                    op: format!("watching the {} of pid {pid}", stream.name()),
                    error: e.to_string(),
                });
            }
        }
    }

    /// Watches a child's pidfd; false if there is none (an old kernel,
    /// or it is already reaped): then SIGCHLD tells of its exit.
    fn watch_exit(&mut self, pid: Pid) -> bool {
        let Some(pidfd) = reap::open(pid) else {
            return false;
        };
        let token = Token(PIDFD_BASE + pid.as_raw() as usize);
        let registered = self.poll.registry().register(
            &mut SourceFd(&pidfd.as_raw_fd()),
            token,
            Interest::READABLE,
        );
        if registered.is_ok() {
            self.pidfds.insert(pid, pidfd);
        }
        registered.is_ok()
    }

    fn watch_exec_pipe(&mut self, pid: Pid, pipe: OwnedFd) {
        let token = Token(EXEC_BASE + pid.as_raw() as usize);
        let registered = self.poll.registry().register(
            &mut SourceFd(&pipe.as_raw_fd()),
            token,
            Interest::READABLE,
        );
        match registered {
            Ok(()) => {
                self.exec_pipes.insert(pid, pipe);
            }
            // Without the pipe the exec is confirmed by nothing; the worker
            // still runs and its exit is still reaped.
            Err(e) => self.log.emit(&Record::OsError {
                op: format!("watching the exec pipe of pid {pid}"),
                error: e.to_string(),
            }),
        }
    }
}

/// Watches the log's destinations (pipes, terminals, sockets) for room, so
/// lines waiting for a slow reader go out as soon as it reads.
fn watch_log(poll: &Poll, log: &Log) {
    for (i, fd) in log.watched().into_iter().enumerate() {
        let _ =
            poll.registry()
                .register(&mut SourceFd(&fd), Token(LOG_BASE + i), Interest::WRITABLE);
    }
}

/// What `reload --wait` is told when the reload ends.
fn reload_answer(outcome: &ReloadOutcome) -> Value {
    match outcome {
        ReloadOutcome::Complete {
            generation,
            duration,
        } => json!({
            "ok": true,
            "result": "complete",
            "generation": generation,
            "duration_ms": duration.as_millis() as u64,
        }),
        ReloadOutcome::Aborted { generation, cause } => json!({
            "ok": false,
            "result": "aborted",
            "generation": generation,
            "cause": cause,
            "error": format!(
                "reload aborted: a new worker of generation {generation} {cause}; \
                 the old workers keep serving"
            ),
        }),
        ReloadOutcome::Interrupted { generation } => json!({
            "ok": false,
            "result": "interrupted",
            "generation": generation,
            "error": "the master began to stop before the reload was done",
        }),
    }
}

fn io_errno(e: &io::Error) -> String {
    e.raw_os_error()
        .map(errno_name)
        .unwrap_or_else(|| e.to_string())
}
