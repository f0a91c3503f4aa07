//! The shell around the `Supervisor`: one thread, one `mio::Poll`. It turns
//! signals, exec pipes, notify datagrams, control requests and deadlines
//! into `Event`s, and carries out the `Action`s that come back. It is the
//! only code that reads the clock.
//!
//! It never sleeps and never ticks: the poll timeout is the supervisor's
//! next deadline (or a control client's), or none, so an idle master wakes
//! up zero times a second. How workers are started is the [`Launch`]er's
//! business; what was set up before the loop is `setup.rs`'s.

mod execute;
mod listeners;
mod observe;
mod probes;
mod requests;
mod resume;
mod steps;
mod upgrade;
mod workers;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};

use crate::control::metrics::{Metrics, MetricsServer};
use crate::control::server::ControlServer;
use crate::control::status::MasterInfo;
use crate::error::Error;
use crate::launch::{Launch, Reaping};
use crate::shell::log::Log;
use crate::shell::output::{Output, Tail};
use crate::shell::reap;
use crate::shell::releases::Releases;
use crate::shell::serving;
use crate::shell::setup::Setup;
use crate::shell::signals::{self, Signals};
use crate::shell::token::Source;
use crate::shell::trim;
use crate::shell::upgrade::Binary;
use crate::sockets::balance::Balancer;
use crate::sockets::listen::Listener;
use crate::sockets::notify::{Manager, NotifySocket};
use crate::supervisor::Supervisor;
use crate::supervisor::event::{Event, MasterSignal};
use crate::supervisor::record::Record;
use crate::vocab::{Generation, Pid, SlotId, errno_name};

use requests::reload_answer;

/// A turn of the loop this long is logged: every call in it is bounded, so
/// it means a call that was not, or a machine that stopped the master.
const SLOW_TURN: Duration = Duration::from_secs(1);

/// A sleep this long or longer, with nothing under way, is worth a trim
/// first (`trim_before`).
const LONG_SLEEP: Duration = Duration::from_secs(1);

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
        releases,
        binary,
        handover,
        own_memory,
        ..
    } = setup;
    let stop = (policy.stop_signal, policy.stop_timeout);
    let probes = probes::Probes::of(&policy, &listeners)?;
    let supervisor = match &handover {
        Some(h) => Supervisor::restore(policy, h.supervisor.clone(), Instant::now()),
        None => Supervisor::new(policy),
    };
    let mut master = Master::new(supervisor, launcher, signals, notify, control, info, log)?;
    master.binary = binary;
    master.probes = probes;
    master.trimmer = own_memory.then(trim::Trimmer::default);
    if own_memory && let Err(e) = trim::keep_code() {
        log.emit(&Record::OsError {
            op: "locking the master's code in memory (mlock2; raise LimitMEMLOCK= or ulimit -l \
                 to allow it): a page of it reclaimed while idle is read from the disk when \
                 next run"
                .into(),
            error: e.to_string(),
        });
    }
    if let Some((source, _)) = releases.as_ref().and_then(|r| r.env.as_ref())
        && let Some((kind, file)) = &source.once
        && handover.is_none()
    {
        log.emit(&Record::EnvFileOnce {
            path: source.path.display().to_string(),
            kind,
            count: file.vars.len(),
        });
    }
    if let Some(releases) = &releases {
        for (generation, kept) in releases.kept() {
            master.launcher.prepare(generation, &kept.release);
        }
    }
    master.releases = releases;
    master.keep_releases();
    if let Some(mut metrics) = metrics {
        metrics
            .endpoint()
            .register(
                master.poll.registry(),
                Source::Metrics.token(),
                Source::metrics_client,
            )
            .map_err(|e| Error::os("registering the metrics socket", e))?;
        master.metrics_server = Some(metrics);
    }
    for listener in &listeners {
        master.ours.add(listener.fd());
    }
    master.listener_fds = listeners.iter().map(Listener::fd).collect();
    let groups: Vec<_> = listeners.iter().map(|l| (l.fd(), l.reuseport)).collect();
    let handed = handover
        .as_ref()
        .map(|h| h.balance.as_slice())
        .unwrap_or_default();
    if !handed.is_empty() {
        // SAFETY: the old image handed these descriptors over to us alone.
        let balancer = unsafe { Balancer::resume(&master.listener_fds, handed) }
            .map_err(|e| Error::os("taking over --balance reuseport after the upgrade", e))?;
        for fd in balancer.fds_of_all_slots() {
            master.ours.add(fd);
        }
        master.balancer = Some(balancer);
    } else if groups.iter().any(|(_, group)| group.is_some()) {
        let balancer = Balancer::new(&groups).map_err(|e| Error::os("--balance reuseport", e))?;
        master.balancer = Some(balancer);
    }
    master.listeners = listeners;
    match handover {
        Some(handover) => master.resume(handover),
        // Children the master had before it started a worker (a `<(...)`
        // subshell its shell left it) are not the workers': left alone.
        None if master.launcher.reaping() == Reaping::All => {
            master.inherited = reap::children().into_iter().collect();
        }
        None => {}
    }
    master.pid_file = pid_file;
    master.keep_undertaker(stop);
    master.run()
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
    /// Each worker's CPU time when last looked at (for `status` and
    /// `/metrics`).
    cpu_samples: HashMap<Pid, observe::CpuSample>,
    /// The binary's releases: what each generation runs, and how a new
    /// one is made (`--chdir`, the command, `--env-file`).
    releases: Option<Releases>,
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
    inherited: BTreeSet<Pid>,
    /// `--balance reuseport`: each slot's own sockets, and the steering.
    balancer: Option<Balancer>,
    /// The notify socket was not drained to the end last turn.
    notify_pending: bool,
    log: &'a Log,
    /// Set by the supervisor's `Exit` action: how the master ends.
    outcome: Option<Result<(), Error>>,
    /// The binary a live upgrade reads again (none for a library's master).
    binary: Option<Binary>,
    upgrades: upgrade::Upgrades,
    upgrading: Option<upgrade::Upgrading>,
    /// A check killed when its upgrade was given up, not yet reaped.
    abandoned_check: Option<Pid>,
    /// Log lines earlier images of the master lost.
    log_lost_before: u64,
    /// `rcluster upgrade --reload`: roll the workers after the first turn.
    reload_at_start: bool,
    /// When to give back memory before a long sleep (`trim.rs`); none
    /// for a library's master.
    trimmer: Option<trim::Trimmer>,
    /// The steps of this turn that took long, for a slow turn's record.
    steps: steps::Steps,
    /// Files of a generation said to be rewritten in place (`spawn`).
    rewritten_said: BTreeSet<(Generation, &'static str)>,
    /// Removed as the master drops, if it still names this master.
    pid_file: Option<crate::shell::pidfile::PidFile>,
    /// Stops the workers if the master dies (`shell/undertaker.rs`).
    undertaker: Option<crate::shell::undertaker::Undertaker>,
    /// `--probe`: where probes go, and those out.
    probes: Option<probes::Probes>,
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
                Source::Signals.token(),
                Interest::READABLE,
            )
            .map_err(|e| Error::os("watching the master's signals", e))?;
        poll.registry()
            .register(notify.source(), Source::Notify.token(), Interest::READABLE)
            .map_err(|e| Error::os("registering the notify socket", e))?;
        if let Some(control) = &mut control {
            control
                .endpoint()
                .register(
                    poll.registry(),
                    Source::Control.token(),
                    Source::control_client,
                )
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
            output: Output::new(Source::output),
            exec_pipes: HashMap::new(),
            pidfds: HashMap::new(),
            notify_dropped: 0,
            ours: serving::Listeners::default(),
            listeners: Vec::new(),
            listener_fds: Vec::new(),
            look_samples: serving::Samples::new(),
            inherited: Default::default(),
            balancer: None,
            releases: None,
            last_words: HashMap::new(),
            cpu_samples: HashMap::new(),
            notify_pending: false,
            log,
            outcome: None,
            binary: None,
            upgrades: Default::default(),
            upgrading: None,
            abandoned_check: None,
            log_lost_before: 0,
            reload_at_start: false,
            trimmer: None,
            steps: steps::Steps::default(),
            rewritten_said: BTreeSet::new(),
            pid_file: None,
            undertaker: None,
            probes: None,
        })
    }

    /// The loop: wait for events or the next deadline, hand each to its
    /// handler, then what is due. It returns when the supervisor says the
    /// master is done.
    fn run(&mut self) -> Result<(), Error> {
        let mut events = Events::with_capacity(256);
        // From here on this image acts for the cluster: a failure no longer
        // sends an upgrade back to the image before it.
        crate::shell::upgrade::fallback::commit();
        self.dispatch(Event::Start, Instant::now());
        self.reload_after_upgrade(Instant::now());
        loop {
            if let Some(outcome) = self.outcome.take() {
                return outcome;
            }
            let timeout = self.timeout();
            let timeout = self.trim_before(timeout);
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(Error::os("waiting for events (epoll_wait)", e));
            }
            let now = Instant::now();
            let sources: Vec<Source> = events
                .iter()
                .filter_map(|e| Source::of(e.token()))
                .collect();
            if let Some(trimmer) = &mut self.trimmer {
                trimmer.woke();
            }
            self.handle(&sources, now);
            let began = Instant::now();
            self.after_events(now);
            self.steps.ended(began, || "after the events".into());
            if self.upgrading.is_some() {
                let began = Instant::now();
                self.advance_upgrade(now);
                self.steps.ended(began, || "the upgrade".into());
            }
            self.check_turn(now, &sources);
        }
    }

    /// Nothing in a turn may block: one that took long says what it
    /// handled, so that a stall seen once can be traced (a VM paused in the
    /// middle of a turn may show here too).
    fn check_turn(&mut self, began: Instant, sources: &[Source]) {
        let took = began.elapsed();
        let steps = self.steps.take();
        if took >= SLOW_TURN {
            let handled = if sources.is_empty() {
                "deadlines".to_string()
            } else {
                format!("{sources:?}")
            };
            self.log.emit(&Record::SlowTurn {
                took,
                handled,
                steps,
            });
        }
    }

    /// Before a long sleep with nothing under way, the memory what woke
    /// the loop brought back is given back: a reload, a `status` or a
    /// scrape leaves most of the binary's code resident otherwise. Not in
    /// the middle of work (a reload's steps, a client's request), which
    /// would fault it all back in at the next step. Returns the timeout,
    /// shortened if a trim waits for its turn.
    fn trim_before(&mut self, timeout: Option<Duration>) -> Option<Duration> {
        if self.trimmer.is_none() {
            return timeout;
        }
        let quiet = timeout.is_none_or(|t| t >= LONG_SLEEP)
            && self.supervisor.is_settled()
            && self
                .control
                .as_ref()
                .and_then(ControlServer::next_deadline)
                .is_none()
            && self
                .metrics_server
                .as_mut()
                .and_then(|m| m.endpoint().next_deadline())
                .is_none()
            && self.upgrading.is_none();
        let now = Instant::now();
        match self.trimmer.as_mut().map(|t| t.decide(quiet, now)) {
            Some(trim::Decision::Now) => {
                trim::heap();
                timeout
            }
            Some(trim::Decision::At(at)) => {
                let wait = at.saturating_duration_since(now);
                Some(timeout.map_or(wait, |t| t.min(wait)))
            }
            _ => timeout,
        }
    }

    /// How long the loop may sleep: until the first deadline (the
    /// supervisor's, a control or metrics client's), or not at all when
    /// output pipes or the notify socket still have something to read.
    /// mio rounds a sub-millisecond timeout up, never down to a busy 0.
    fn timeout(&mut self) -> Option<Duration> {
        // While the log is congested, workers' output waits in their
        // pipes: no turn for it until the log has room.
        let output_waits = self.output.has_pending() && !self.log.congested();
        if output_waits || self.notify_pending {
            return Some(Duration::ZERO);
        }
        let deadline = [
            self.supervisor.next_deadline(),
            self.control.as_ref().and_then(ControlServer::next_deadline),
            self.metrics_server
                .as_mut()
                .and_then(|m| m.endpoint().next_deadline()),
            self.upgrade_deadline(),
            self.probes.as_ref().and_then(probes::Probes::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Hands each source that is ready to its handler. Exec pipes first,
    /// then the notify socket: a worker's exec precedes anything it says,
    /// and what it says precedes its exit (the shim's word that its drain
    /// is done, sent just before the signal it dies of), even when all land
    /// in one wakeup. New clients last: those that hung up free their fds
    /// first.
    fn handle(&mut self, sources: &[Source], now: Instant) {
        for source in sources {
            if let Source::ExecPipe(pid) = source {
                self.on_exec_pipe(*pid, now);
            }
        }
        if self.notify_pending || sources.contains(&Source::Notify) {
            self.on_notify(now);
        }
        for &source in sources {
            let began = Instant::now();
            match source {
                Source::Signals => self.on_signals(now),
                Source::ControlClient(id) => self.on_control_client(id, now),
                Source::MetricsClient(id) => self.on_scraper(id, now),
                Source::Output(id) => self.on_output(id),
                Source::Probe(pid) => self.on_probe(pid, now),
                Source::Log(_) => self.log.flush(),
                Source::Exited(pid) => {
                    let reaped = reap::pid(pid);
                    self.steps.ended(began, || "waitpid".into());
                    if let Some(exit) = reaped {
                        self.on_reaped(pid, exit, now);
                    }
                }
                Source::Control | Source::Metrics | Source::ExecPipe(_) | Source::Notify => {}
            }
            self.steps.ended(began, || format!("{source:?}"));
        }
        if sources.contains(&Source::Control) {
            let began = Instant::now();
            self.on_control_listener(now);
            self.steps
                .ended(began, || "accepting control clients".into());
        }
        if sources.contains(&Source::Metrics)
            && let Some(metrics) = &mut self.metrics_server
        {
            metrics.endpoint().accept(self.poll.registry(), now);
        }
    }

    /// After the events: output that waited, clients past their deadline,
    /// the supervisor's deadlines.
    fn after_events(&mut self, now: Instant) {
        if !self.log.congested() {
            self.output.service_pending(self.poll.registry(), self.log);
        }
        if let Some(control) = &mut self.control {
            control.endpoint().expire(now, self.poll.registry());
        }
        if let Some(metrics) = &mut self.metrics_server {
            metrics.endpoint().expire(now, self.poll.registry());
        }
        self.expire_probes(now);
        if self.supervisor.next_deadline().is_some_and(|d| d <= now) {
            self.dispatch(Event::Timeout, now);
        }
    }

    /// A worker's output pipe has something to read: now, or once the log
    /// has room.
    fn on_output(&mut self, id: usize) {
        if !self.output.knows(id) {
            return;
        }
        if self.log.congested() {
            self.output.postpone(id);
        } else {
            self.output.read(id, self.poll.registry(), self.log);
        }
    }

    fn on_signals(&mut self, now: Instant) {
        for received in self.signals.pending() {
            match (received.signal, signals::classify(received.signal)) {
                (_, Some(MasterSignal::Reload)) => {
                    // A refused reload was logged and answered; a HUP has
                    // nobody else to tell.
                    let _ = self.reload(None, now);
                }
                (_, Some(signal)) => self.dispatch(Event::Signal(signal), now),
                (libc::SIGUSR1, None) => self.reopen_log(),
                // Refused or failed, it was logged; nobody else to tell.
                (libc::SIGUSR2, None) => {
                    let _ = self.upgrade(false, now);
                }
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

    /// Feeds one event to the supervisor and carries out its actions. A
    /// spawn's answer is fed back before the next action runs.
    fn dispatch(&mut self, event: Event, now: Instant) {
        let began = Instant::now();
        let actions = self.supervisor.handle(event, now);
        self.steps.ended(began, || "the supervisor".into());
        for action in actions {
            let (began, kind) = (Instant::now(), action.kind());
            self.execute(action, now);
            self.steps.ended(began, || kind.to_string());
        }
    }
}

/// Watches the log's destinations (pipes, terminals, sockets) for room, so
/// lines waiting for a slow reader go out as soon as it reads.
fn watch_log(poll: &Poll, log: &Log) {
    for (i, fd) in log.watched().into_iter().enumerate() {
        // Unwatched (a destination epoll refuses, such as a regular file),
        // its lines are written as they come: nothing waits for room.
        let _ = poll.registry().register(
            &mut SourceFd(&fd),
            Source::Log(i).token(),
            Interest::WRITABLE,
        );
    }
}

pub(super) fn io_errno(e: &io::Error) -> String {
    e.raw_os_error()
        .map(errno_name)
        .unwrap_or_else(|| e.to_string())
}
