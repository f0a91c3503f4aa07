//! The supervisor: every policy decision rcluster makes, as a pure state
//! machine. It holds the slots, the workers, the reload plan and the
//! shutdown phase; it is fed [`Event`]s with the current instant and answers
//! with [`Action`]s for the shell to carry out.
//!
//! It performs no syscalls and never reads the clock, so every decision is
//! unit-tested with fake instants (see `tests.rs`). The shell that runs it is
//! `crate::shell::master`.
//!
//! After each event the supervisor *reconciles* the slots the event touched:
//! it compares what exists with what should exist (one ready worker of the
//! target generation per slot) and emits the actions that close the gap,
//! within the limits of backoff, the reload batch size and the shutdown
//! phase. Work per event does not grow with the number of workers: deadlines
//! live in [`timers`], and each slot's standing in the reload in
//! [`reload::Progress`].
//!
//! # The worker life cycle
//!
//! One row per [`WorkerState`], one column per event; each cell is the next
//! state and what is done. "Failure" means the slot's restart policy
//! decides (at once, after backoff, or give up: `backoff.rs`), and a
//! reload whose new worker this was is aborted. "Stop" is a reload
//! replacing the worker once its successor is ready, or a scale-down;
//! "shutdown" a graceful stop (`TERM`, `INT`); "force" a second `INT` or
//! `QUIT`.
//!
//! | state \ event | exec ok | exec failed | `READY=1` | `STOPPING=1` | `WATCHDOG=1` | exited | its deadline | stop | shutdown | force |
//! |---|---|---|---|---|---|---|---|---|---|---|
//! | **Spawned** | Ready (rule `exec`) or Booting | errno kept for the exit | Ready | — | — | gone: failure | `--ready-timeout`: SIGKILL group → Killed; failure | stop signal → Draining | stop signal → Draining | SIGKILL group → Killed |
//! | **Booting** | — | errno kept | Ready | — | — | gone: failure | delay over: Ready; `auto`: a look (listening: Ready; a reload's new worker idle and not listening: stop signal → Draining, failure; else looked at again); `--ready-timeout`: SIGKILL → Killed, failure | stop signal → Draining | stop signal → Draining | SIGKILL → Killed |
//! | **Ready** | — | — | — | Leaving (its successor starts) | next ping due later | gone: failure | a canary's hold over: proven (its old worker stops); `--watchdog`: SIGABRT → Draining; failure | stop signal → Draining | stop signal → Draining | SIGKILL → Killed |
//! | **Leaving** | — | — | — | — | — | gone: stopped | `--stop-timeout`: SIGKILL → Killed | — | stop signal → Draining | SIGKILL → Killed |
//! | **Draining** | — | — | — | — | — | gone: stopped | `--stop-timeout`: SIGKILL → Killed | — | — | SIGKILL → Killed |
//! | **Killed** | — | — | — | — | — | gone: stopped | (none) | — | — | — |
//!
//! A reload's new worker that fails stops the reload, before or after its
//! ready. "—" means ignored. Every stop signal is followed by `SIGCONT`, for a
//! worker stopped with `SIGSTOP`. When a worker is gone, what is left of
//! its process group gets the stop signal, and `SIGKILL` after
//! `--stop-timeout` if it lingers (systemd's `KillMode=mixed`); processes
//! it started that left the group come back to the master (a child
//! subreaper) and are stopped the same way, and the master exits only once
//! none is left. A reaped pid that is no worker is such a process, or an
//! orphan the master inherited as PID 1. Every cell has a unit test.

pub mod backoff;
pub mod event;
pub mod policy;
pub mod record;
pub mod recycle;
pub mod reload;
pub mod slot;
#[cfg(test)]
mod tests;
pub mod timers;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::vocab::{Exit, Generation, Pid, SlotId, errno_name, human};
use backoff::{Backoff, Restart};
use event::{Action, Event, ManagerState, MasterSignal, NotifyMsg, Outcome};
use policy::{Policy, ReadyRule};
use record::{Next, Record};
use recycle::{Due, RecycleReason, Rng};
use reload::{Canary, Progress, ReloadOutcome, ReloadPlan};
use slot::{Lane, ReadyBy, Serving, Slot, SlotView, StopReason, Worker, WorkerState};
use timers::{Timer, Timers};

/// How long a worker that missed its watchdog may take to die of `SIGABRT`
/// (and write its core) before its process group gets `SIGKILL`.
pub const WATCHDOG_KILL_GRACE: Duration = Duration::from_secs(5);

/// A booting worker that does not serve yet is looked at again after this,
/// twice as long each time, up to [`LOOK_MAX`]: a few wakeups while a
/// worker boots, none once it serves.
const LOOK_FIRST: Duration = Duration::from_millis(100);
const LOOK_MAX: Duration = Duration::from_secs(1);

/// A worker's changing `STATUS=` is logged at most this often.
const STATUS_LOG_EVERY: Duration = Duration::from_secs(1);

/// At shutdown, once every worker is gone: are processes they left behind
/// still there? The master exits only after a look found none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sweep {
    NotYet,
    /// A look was asked for; its answer has not come.
    Asked,
    /// The last look found nothing.
    Clean,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping { forced: bool, outcome: Outcome },
    Done,
}

/// A worker that failed: exited or was killed without being asked to stop.
struct Failure {
    slot: SlotId,
    generation: Generation,
    pid: Option<Pid>,
    /// How long it had been ready; `None` if it never was. A crash counts
    /// as quick (and backs off) unless this reached `--min-uptime`, however
    /// slowly the worker booted.
    ready_for: Option<Duration>,
    /// How it failed, for the reload-aborted record: "exited with code 1 after 5ms".
    cause: String,
}

#[derive(Debug)]
pub struct Supervisor {
    policy: Policy,
    slots: Vec<Slot>,
    workers: BTreeMap<Pid, Worker>,
    /// The generation every new worker gets; raised by each reload.
    target: Generation,
    reload: Option<ReloadPlan>,
    /// Where every slot stands against `target`.
    progress: Progress,
    last_reload: Option<ReloadOutcome>,
    phase: Phase,
    started: Option<Instant>,
    /// Whether "all workers ready" was announced (once, at start-up).
    announced_ready: bool,
    /// How many slots have a ready worker.
    ready_slots: usize,
    /// The newest generation whose first ready worker was looked at for a
    /// port of its own.
    listeners_checked: Generation,
    /// Serving workers over `--max-memory` or `--max-age`, waiting their
    /// turn; and the one being replaced now (one slot at a time).
    due: BTreeMap<Pid, Due>,
    recycling: Option<(Pid, RecycleReason)>,
    /// When each ready worker reaches its `--max-age`, and that limit.
    age_limits: BTreeMap<Pid, (Instant, Duration)>,
    /// The next look at the workers' memory (`--max-memory` only).
    memory_check_at: Option<Instant>,
    /// Workers steered away from (`--balance reuseport`: their slot was
    /// scaled away, or their successor is proven), still accepting what
    /// their queue holds until this time; then stopped, for this reason.
    retiring: BTreeMap<Pid, (Instant, StopReason)>,
    /// Where some slot's new connections go changed: the shell must steer
    /// anew.
    steering_due: bool,
    /// The `--max-age` jitter.
    rng: Rng,
    /// How many successors of the current recycle failed before it.
    failed_successors: u32,
    /// Spawn actions out whose answer was not seen yet.
    spawns_in_flight: usize,
    /// Some worker's exec succeeded once: from then on an exec failure is
    /// retried, since the command did run (a deploy may be half-copied).
    ever_started: bool,
    /// Under `--ready auto`, a worker has said `READY=1`: the app speaks
    /// the protocol, and from then on a new worker is ready only when it
    /// says so (a release that never gets as far is not ready by a timer).
    speaks_ready: bool,
    timers: Timers,
    /// Slots the current event changed: the ones to reconcile.
    dirty: BTreeSet<SlotId>,
    /// What is left of exited workers' process groups, and when it is
    /// killed.
    groups: BTreeMap<Pid, Instant>,
    /// Processes the workers left behind, now the master's children, and
    /// when they are killed (`None`: they were).
    strays: BTreeMap<Pid, Option<Instant>>,
    /// Where the last look for strays at shutdown stands.
    sweep: Sweep,
    /// The actions of the event being handled.
    actions: Vec<Action>,
}

impl Supervisor {
    pub fn new(policy: Policy) -> Supervisor {
        let rng = Rng::new(policy.recycle.seed);
        Supervisor {
            slots: (0..policy.workers.max(1)).map(|_| Slot::new()).collect(),
            policy,
            workers: BTreeMap::new(),
            target: 1,
            reload: None,
            progress: Progress::default(),
            last_reload: None,
            phase: Phase::Running,
            started: None,
            announced_ready: false,
            ready_slots: 0,
            listeners_checked: 0,
            due: BTreeMap::new(),
            recycling: None,
            age_limits: BTreeMap::new(),
            memory_check_at: None,
            retiring: BTreeMap::new(),
            steering_due: false,
            rng,
            failed_successors: 0,
            spawns_in_flight: 0,
            ever_started: false,
            speaks_ready: false,
            timers: Timers::default(),
            dirty: BTreeSet::new(),
            groups: BTreeMap::new(),
            strays: BTreeMap::new(),
            sweep: Sweep::NotYet,
            actions: Vec::new(),
        }
    }

    /// Handles one event at `now` and returns what the shell must do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if self.phase == Phase::Done {
            return Vec::new();
        }
        match event {
            Event::Start => {
                self.started.get_or_insert(now);
                self.dirty.extend(0..self.slots.len());
                self.schedule_memory_check(now);
            }
            Event::Signal(signal) => self.on_signal(signal, now),
            Event::Spawned {
                slot,
                generation,
                pid,
                confirmed,
            } => {
                self.on_spawned(slot, generation, pid, now);
                // Without exec, the fork itself is the start.
                if confirmed {
                    self.on_exec(pid, Ok(()), now);
                }
            }
            Event::SpawnFailed {
                slot,
                generation,
                error,
            } => self.on_spawn_failed(slot, generation, error, now),
            Event::Exec { pid, result } => self.on_exec(pid, result, now),
            Event::Exited {
                pid,
                exit,
                last_line,
            } => self.on_exited(pid, exit, last_line, now),
            Event::Notify { pid, msg, sender } => self.on_notify(pid, msg, sender, now),
            Event::Serving { pid, serving } => self.on_serving(pid, serving, now),
            Event::ScaleTo(workers) if self.phase == Phase::Running => {
                self.set_workers(workers, now)
            }
            Event::ScaleTo(_) => self.ignored("scale", "the master is stopping"),
            Event::Memory(rss) => self.on_memory(rss),
            Event::ReloadRefused { cause } => {
                self.log(Record::ReloadRefused {
                    cause: cause.clone(),
                    serving: self.target,
                });
                if self.reload.is_none() {
                    self.last_reload = Some(ReloadOutcome::Aborted {
                        generation: self.target + 1,
                        cause,
                    });
                }
            }
            Event::GroupLingers { pgid } => self.on_group_lingers(pgid, now),
            Event::Strays { of, pids } => self.on_strays(of, pids, now),
            Event::Timeout => {}
        }
        self.expire(now);
        self.reconcile(now);
        self.steer();
        std::mem::take(&mut self.actions)
    }

    /// When the supervisor next needs to act if nothing happens; `None` means
    /// it can sleep until the next signal or message.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The slot of a worker the supervisor has not seen exit.
    pub fn slot_of(&self, pid: Pid) -> Option<SlotId> {
        self.workers.get(&pid).map(|w| w.slot)
    }

    /// Whether this pid is one of our workers (the shell uses it to resolve
    /// notify senders).
    pub fn is_worker(&self, pid: Pid) -> bool {
        self.workers.contains_key(&pid)
    }

    pub fn worker_pids(&self) -> Vec<Pid> {
        self.workers.keys().copied().collect()
    }

    /// Whether the master is running (not stopping): reloads and scaling
    /// are possible.
    pub fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Every slot has a ready worker.
    pub fn all_ready(&self) -> bool {
        self.ready_slots == self.slots.len()
    }

    pub fn target_generation(&self) -> Generation {
        self.target
    }

    pub fn reload_in_progress(&self) -> Option<&ReloadPlan> {
        self.reload.as_ref()
    }

    pub fn last_reload(&self) -> Option<&ReloadOutcome> {
        self.last_reload.as_ref()
    }

    // ---- events ------------------------------------------------------------

    fn on_signal(&mut self, signal: MasterSignal, now: Instant) {
        let running = self.phase == Phase::Running;
        match signal {
            MasterSignal::Reload if running => self.start_reload(now),
            MasterSignal::Reload => self.ignored("SIGHUP", "the master is stopping"),
            MasterSignal::Terminate | MasterSignal::Interrupt | MasterSignal::Quit if running => {
                let graceful = signal != MasterSignal::Quit;
                self.begin_stop(graceful, Outcome::Stopped, now)
            }
            // timeout(1), systemd and the kubelet may send TERM twice at once
            // (to the pid and to its group): the stop stays graceful.
            MasterSignal::Terminate => self.ignored(
                "SIGTERM",
                "already stopping (press Ctrl-C again or send QUIT to stop at once)",
            ),
            MasterSignal::Interrupt | MasterSignal::Quit => match self.phase {
                Phase::Stopping { forced: false, .. } => self.force_stop(),
                Phase::Running | Phase::Stopping { forced: true, .. } | Phase::Done => {}
            },
            MasterSignal::ScaleUp if running => self.set_workers(self.slots.len() + 1, now),
            MasterSignal::ScaleDown if running && self.slots.len() > 1 => {
                self.set_workers(self.slots.len() - 1, now)
            }
            MasterSignal::ScaleDown if running => self.ignored("SIGTTOU", "already at one worker"),
            MasterSignal::ScaleUp => self.ignored("SIGTTIN", "the master is stopping"),
            MasterSignal::ScaleDown => self.ignored("SIGTTOU", "the master is stopping"),
        }
    }

    /// Adds slots, or removes the highest ones (their workers drain).
    fn set_workers(&mut self, workers: usize, now: Instant) {
        let workers = workers.max(1);
        while self.slots.len() < workers {
            self.dirty.insert(self.slots.len());
            self.slots.push(Slot::new());
        }
        while self.slots.len() > workers {
            let id = self.slots.len() - 1;
            for pid in self.slots[id].attached.clone() {
                self.retire(pid, StopReason::ScaledDown, now);
            }
            self.set_restart(id, None);
            self.count(id, SlotView::default());
            self.slots.pop();
        }
        self.log(Record::Scaled { workers });
    }

    fn on_spawned(&mut self, slot: SlotId, generation: Generation, pid: Pid, now: Instant) {
        self.spawns_in_flight = self.spawns_in_flight.saturating_sub(1);
        let mut lane = 0;
        if let Some(s) = self.slots.get_mut(slot) {
            lane = s.spawning.take().unwrap_or(0);
            s.attached.push(pid);
        }
        let state = WorkerState::Spawned {
            ready_by: now + self.policy.ready_timeout,
        };
        self.timers
            .change(Timer::Worker(pid), None, state.deadline());
        self.workers.insert(
            pid,
            Worker {
                pid,
                slot,
                generation,
                lane,
                started: now,
                state,
                exec_error: None,
                ready_by: None,
                seen_listening: false,
                status: None,
                status_logged: None,
                status_unlogged: 0,
            },
        );
        self.dirty.insert(slot);
        self.log(Record::WorkerSpawned {
            slot,
            pid,
            generation,
        });
        if self.phase != Phase::Running {
            self.stop(pid, StopReason::Shutdown, now);
        } else if slot >= self.slots.len() {
            self.stop(pid, StopReason::ScaledDown, now);
        }
    }

    fn on_spawn_failed(
        &mut self,
        slot: SlotId,
        generation: Generation,
        error: String,
        now: Instant,
    ) {
        self.spawns_in_flight = self.spawns_in_flight.saturating_sub(1);
        if let Some(s) = self.slots.get_mut(slot) {
            s.spawning = None;
            self.dirty.insert(slot);
        }
        self.log(Record::SpawnFailed {
            slot,
            error: error.clone(),
        });
        self.on_failure(
            Failure {
                slot,
                generation,
                pid: None,
                ready_for: None,
                cause: format!("could not be started: {error}"),
            },
            now,
        );
    }

    fn on_exec(&mut self, pid: Pid, result: Result<(), i32>, now: Instant) {
        let Some(worker) = self.workers.get(&pid) else {
            return;
        };
        let (slot, state) = (worker.slot, worker.state.clone());
        match (result, state) {
            (Ok(()), WorkerState::Spawned { ready_by }) => {
                self.ever_started = true;
                self.log(Record::WorkerStarted { slot, pid });
                let booting = |ready_at, look_at| WorkerState::Booting {
                    ready_by,
                    ready_at,
                    look_at,
                    looks: 0,
                };
                match self.policy.ready {
                    // Looked at once it has lived --min-uptime: a silent
                    // worker is ready if it waits on its listeners, and a
                    // new one that is idle and does not stops a reload.
                    ReadyRule::Auto => {
                        self.set_state(pid, booting(None, Some(now + self.policy.min_uptime)))
                    }
                    ReadyRule::Exec => self.become_ready(pid, ReadyBy::Exec, now),
                    ReadyRule::Notify => self.set_state(pid, booting(None, None)),
                    ReadyRule::Delay(delay) => {
                        self.set_state(pid, booting(Some(now + delay), None))
                    }
                }
            }
            // READY=1 can overtake the exec pipe's EOF; a stopped worker's
            // exec no longer matters.
            (
                Ok(()),
                WorkerState::Booting { .. }
                | WorkerState::Ready { .. }
                | WorkerState::Leaving { .. }
                | WorkerState::Draining { .. }
                | WorkerState::Killed { .. },
            ) => {}
            // The child exits 127 right after; its exit record says why.
            (Err(errno), _) => {
                if let Some(worker) = self.workers.get_mut(&pid) {
                    worker.exec_error = Some(errno);
                }
            }
        }
    }

    fn on_exited(&mut self, pid: Pid, exit: Exit, last_line: Option<String>, now: Instant) {
        let Some(worker) = self.workers.remove(&pid) else {
            if let Some(kill_at) = self.strays.remove(&pid) {
                self.timers.change(Timer::Stray(pid), kill_at, None);
            }
            self.log(Record::OrphanReaped { pid, exit });
            return;
        };
        self.timers
            .change(Timer::Worker(pid), worker.state.deadline(), None);
        self.forget_pending(pid);
        self.detach(&worker);
        if let Some(slot) = self.slots.get_mut(worker.slot) {
            slot.last_exit = Some(exit);
        }
        let uptime = now.saturating_duration_since(worker.started);
        // The exit record comes first; what it decides (an aborted reload,
        // giving up) is logged after it.
        let at = self.actions.len();
        let (next, killed_by_us) = match worker.state {
            WorkerState::Leaving { .. } => (Next::Stopped(StopReason::WorkerStopping), false),
            WorkerState::Draining { why, .. } => (Next::Stopped(why), false),
            WorkerState::Killed { why } => (Next::Stopped(why), true),
            WorkerState::Spawned { .. }
            | WorkerState::Booting { .. }
            | WorkerState::Ready { .. } => {
                if let Some(errno) = worker.exec_error
                    && !self.ever_started
                    && cannot_ever_exec(errno)
                {
                    // The first workers cannot run the command, and never
                    // will: say so and stop, as a shell would.
                    self.begin_stop(true, Outcome::CannotExec { errno }, now);
                    (Next::NotRestarted, false)
                } else {
                    let cause = match worker.exec_error {
                        Some(errno) => {
                            format!("could not exec the command ({})", errno_name(errno))
                        }
                        None => format!("{exit} after {}", human(uptime)),
                    };
                    let failure = Failure {
                        slot: worker.slot,
                        generation: worker.generation,
                        pid: Some(pid),
                        ready_for: worker.state.ready_for(now),
                        cause,
                    };
                    (self.on_failure(failure, now), false)
                }
            }
        };
        let record = Record::WorkerExited {
            slot: worker.slot,
            pid,
            generation: worker.generation,
            exit,
            exec_error: worker.exec_error,
            uptime,
            next,
            killed_by_us,
            last_line,
        };
        self.actions.insert(at, Action::Log(record));
        // Whatever it started goes with it: its process group now, and the
        // processes that left the group and came back to the master.
        self.actions.push(Action::StopGroup {
            pgid: pid,
            signal: self.policy.stop_signal,
        });
        self.actions.push(Action::FindStrays { of: Some(pid) });
    }

    fn on_group_lingers(&mut self, pgid: Pid, now: Instant) {
        // At shutdown, the last look for strays takes care of them.
        if self.phase != Phase::Running {
            return;
        }
        let kill_at = now + self.policy.stop_timeout;
        let old = self.groups.insert(pgid, kill_at);
        self.timers.change(Timer::Group(pgid), old, Some(kill_at));
    }

    fn on_strays(&mut self, of: Option<Pid>, pids: Vec<Pid>, now: Instant) {
        let new: Vec<Pid> = pids
            .into_iter()
            .filter(|pid| !self.workers.contains_key(pid) && !self.strays.contains_key(pid))
            .collect();
        if of.is_none() && self.sweep == Sweep::Asked {
            self.sweep = if new.is_empty() {
                Sweep::Clean
            } else {
                Sweep::NotYet
            };
        }
        if new.is_empty() {
            return;
        }
        let timeout = self.policy.stop_timeout;
        self.log(Record::StraysStopping {
            pids: new.clone(),
            timeout,
        });
        let forced = matches!(self.phase, Phase::Stopping { forced: true, .. });
        for pid in new {
            if forced {
                self.strays.insert(pid, None);
                self.actions.push(Action::KillGroup { pid });
            } else {
                self.strays.insert(pid, Some(now + timeout));
                self.timers
                    .change(Timer::Stray(pid), None, Some(now + timeout));
                self.signal(pid, self.policy.stop_signal);
            }
        }
    }

    fn on_notify(&mut self, pid: Pid, msg: NotifyMsg, sender: Pid, now: Instant) {
        let Some(worker) = self.workers.get(&pid) else {
            return;
        };
        let (slot, state) = (worker.slot, worker.state.clone());
        if msg == NotifyMsg::Ready && self.policy.ready == ReadyRule::Auto && !self.speaks_ready {
            self.speaks_ready = true;
            self.log(Record::ReadinessLearned { slot, pid });
        }
        match (msg, state) {
            (NotifyMsg::Ready, WorkerState::Spawned { .. } | WorkerState::Booting { .. }) => {
                self.become_ready(pid, ReadyBy::Notify { sender }, now)
            }
            (
                NotifyMsg::Ready,
                WorkerState::Ready { .. }
                | WorkerState::Leaving { .. }
                | WorkerState::Draining { .. }
                | WorkerState::Killed { .. },
            ) => {}
            // A worker that decides to stop (e.g. after N requests) says so:
            // its replacement starts now instead of after its exit.
            (NotifyMsg::Stopping, WorkerState::Ready { .. }) => {
                let leaving = WorkerState::Leaving {
                    kill_at: now + self.policy.stop_timeout,
                };
                self.set_state(pid, leaving);
                self.log(Record::WorkerStopping { slot, pid });
            }
            (
                NotifyMsg::Stopping,
                WorkerState::Spawned { .. }
                | WorkerState::Booting { .. }
                | WorkerState::Leaving { .. }
                | WorkerState::Draining { .. }
                | WorkerState::Killed { .. },
            ) => {}
            (
                NotifyMsg::Watchdog,
                WorkerState::Ready {
                    since, hold_until, ..
                },
            ) => {
                let ready = WorkerState::Ready {
                    since,
                    watchdog_by: self.policy.watchdog.map(|d| now + d),
                    hold_until,
                };
                self.set_state(pid, ready);
            }
            (
                NotifyMsg::Watchdog,
                WorkerState::Spawned { .. }
                | WorkerState::Booting { .. }
                | WorkerState::Leaving { .. }
                | WorkerState::Draining { .. }
                | WorkerState::Killed { .. },
            ) => {}
            (NotifyMsg::Status(status), _) => self.on_status(pid, status, now),
        }
    }

    /// `STATUS=` is state, as systemd keeps it: the last one is kept (for
    /// `status`), and a change is logged at most once a second per worker,
    /// so a worker that reports progress in a loop floods nothing.
    fn on_status(&mut self, pid: Pid, status: String, now: Instant) {
        let Some(worker) = self.workers.get_mut(&pid) else {
            return;
        };
        if worker.status.as_ref() == Some(&status) {
            return;
        }
        worker.status = Some(status.clone());
        let due = worker
            .status_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= STATUS_LOG_EVERY);
        if !due {
            worker.status_unlogged += 1;
            return;
        }
        worker.status_logged = Some(now);
        let unlogged = std::mem::take(&mut worker.status_unlogged);
        let slot = worker.slot;
        self.log(Record::WorkerStatus {
            slot,
            pid,
            status,
            unlogged,
        });
    }

    /// What a look at a booting worker found (`--ready auto`).
    fn on_serving(&mut self, pid: Pid, serving: Serving, now: Instant) {
        let Some(worker) = self.workers.get_mut(&pid) else {
            return;
        };
        let WorkerState::Booting {
            ready_by,
            ready_at,
            looks,
            ..
        } = worker.state
        else {
            return;
        };
        if serving == Serving::Yes {
            worker.seen_listening = true;
        }
        let worker = worker.clone();
        // An app that speaks the protocol is ready when it says so; the
        // looks only tell a release that never will from one still booting.
        match serving {
            Serving::Yes if !self.speaks_ready => {
                return self.become_ready(pid, ReadyBy::Listening, now);
            }
            Serving::Unknown if !self.speaks_ready => {
                return self.become_ready(pid, ReadyBy::Uptime, now);
            }
            Serving::Yes | Serving::Unknown => return,
            Serving::No { idle: true } if self.is_new_in_reload(&worker) => {
                self.check_own_ports(pid, worker.generation);
                return self.not_serving(&worker, now);
            }
            Serving::No { .. } => self.check_own_ports(pid, worker.generation),
        }
        let wait = LOOK_FIRST.saturating_mul(1 << looks.min(16)).min(LOOK_MAX);
        let booting = WorkerState::Booting {
            ready_by,
            ready_at,
            look_at: Some(now + wait),
            looks: looks + 1,
        };
        self.set_state(pid, booting);
    }

    // ---- deadlines ---------------------------------------------------------

    fn expire(&mut self, now: Instant) {
        for timer in self.timers.take_due(now) {
            match timer {
                Timer::Worker(pid) => self.worker_deadline(pid, now),
                Timer::Restart(slot) => {
                    if let Some(s) = self.slots.get_mut(slot) {
                        s.restart_at = None;
                        self.dirty.insert(slot);
                    }
                }
                Timer::Group(pgid) => {
                    self.groups.remove(&pgid);
                    // The number may be a new worker's by now: its group is
                    // another, and the old one is gone.
                    if !self.workers.contains_key(&pgid) {
                        self.actions.push(Action::KillRemnants { pgid });
                    }
                }
                Timer::Stray(pid) => {
                    if let Some(kill_at) = self.strays.get_mut(&pid) {
                        *kill_at = None;
                        self.log(Record::StrayKilled { pid });
                        self.actions.push(Action::KillGroup { pid });
                    }
                }
                Timer::Age(pid) => {
                    if let Some((_, limit)) = self.age_limits.remove(&pid) {
                        self.make_due(pid, RecycleReason::Age { limit });
                    }
                }
                Timer::Retiring(pid) => {
                    if let Some((_, why)) = self.retiring.remove(&pid) {
                        self.stop(pid, why, now);
                    }
                }
                Timer::MemoryCheck => {
                    self.memory_check_at = None;
                    if self.phase == Phase::Running {
                        let pids = self
                            .workers
                            .values()
                            .filter(|w| w.state.is_ready())
                            .map(|w| w.pid)
                            .collect();
                        self.actions.push(Action::MeasureMemory { pids });
                        self.schedule_memory_check(now);
                    }
                }
            }
        }
    }

    /// A worker's deadline passed (its timer is already off the list).
    fn worker_deadline(&mut self, pid: Pid, now: Instant) {
        let Some(worker) = self.workers.get(&pid).cloned() else {
            return;
        };
        match worker.state {
            WorkerState::Booting {
                ready_at: Some(at), ..
            } if at <= now => self.become_ready(pid, ReadyBy::Delay, now),
            WorkerState::Booting {
                ready_by,
                ready_at,
                look_at: Some(at),
                looks,
            } if at <= now && ready_by > now => {
                let booting = WorkerState::Booting {
                    ready_by,
                    ready_at,
                    look_at: None,
                    looks,
                };
                self.set_state(pid, booting);
                self.actions.push(Action::LookServing { pid });
            }
            WorkerState::Spawned { .. } | WorkerState::Booting { .. } => {
                self.not_ready(&worker, now)
            }
            WorkerState::Ready {
                since,
                watchdog_by,
                hold_until,
            } => {
                if hold_until.is_some_and(|at| at <= now) {
                    let ready = WorkerState::Ready {
                        since,
                        watchdog_by,
                        hold_until: None,
                    };
                    self.set_state(pid, ready);
                    self.proven(&worker);
                }
                if watchdog_by.is_some_and(|at| at <= now) {
                    self.watchdog_missed(&worker, now);
                }
            }
            WorkerState::Draining { why, .. } => {
                self.log(Record::StopTimeout {
                    slot: worker.slot,
                    pid,
                    timeout: self.policy.stop_timeout,
                });
                self.kill(pid, why);
            }
            WorkerState::Leaving { .. } => {
                self.log(Record::StopTimeout {
                    slot: worker.slot,
                    pid,
                    timeout: self.policy.stop_timeout,
                });
                self.kill(pid, StopReason::WorkerStopping);
            }
            WorkerState::Killed { .. } => {}
        }
    }

    fn not_ready(&mut self, worker: &Worker, now: Instant) {
        let timeout = self.policy.ready_timeout;
        let listening = self.speaks_ready.then_some(worker.seen_listening);
        self.log(Record::NotReady {
            slot: worker.slot,
            pid: worker.pid,
            timeout,
            listening,
        });
        self.kill(worker.pid, StopReason::NotReady { timeout });
        let failure = Failure {
            slot: worker.slot,
            generation: worker.generation,
            pid: Some(worker.pid),
            ready_for: None,
            cause: format!("was not ready within {} (--ready-timeout)", human(timeout)),
        };
        self.on_failure(failure, now);
    }

    /// A new worker of a reload, alive for `--min-uptime` and more, is idle
    /// and waits on none of its listeners: whatever it waits for, it does
    /// not serve, and the reload stops here.
    fn not_serving(&mut self, worker: &Worker, now: Instant) {
        let after = now.saturating_duration_since(worker.started);
        self.log(Record::NotServing {
            slot: worker.slot,
            pid: worker.pid,
            after,
        });
        self.stop(worker.pid, StopReason::NotServing, now);
        let failure = Failure {
            slot: worker.slot,
            generation: worker.generation,
            pid: Some(worker.pid),
            ready_for: None,
            cause: format!(
                "was idle and not listening {} after it started (raise --min-uptime if it \
                 needs longer to listen)",
                human(after)
            ),
        };
        self.on_failure(failure, now);
    }

    /// Whether `worker` is one a reload in progress started.
    fn is_new_in_reload(&self, worker: &Worker) -> bool {
        self.reload
            .as_ref()
            .is_some_and(|plan| worker.generation > plan.from)
    }

    /// A canary's hold is over: the reload may stop old workers now.
    fn proven(&mut self, worker: &Worker) {
        let Some(plan) = &mut self.reload else {
            return;
        };
        if plan.canary != (Canary::Holding { slot: worker.slot }) {
            return;
        }
        plan.canary = Canary::Proven;
        let batch = self.reload_batch();
        self.log(Record::CanaryProven {
            slot: worker.slot,
            pid: worker.pid,
            held: self.policy.min_ready,
            batch,
        });
    }

    /// Slots a reload replaces at a time once its canary is proven.
    fn reload_batch(&self) -> usize {
        self.policy
            .reload_batch
            .unwrap_or(self.slots.len().div_ceil(4))
            .max(1)
    }

    fn watchdog_missed(&mut self, worker: &Worker, now: Instant) {
        let Some(timeout) = self.policy.watchdog else {
            return;
        };
        self.log(Record::WatchdogTimeout {
            slot: worker.slot,
            pid: worker.pid,
            timeout,
        });
        let ready_for = worker.state.ready_for(now);
        self.signal(worker.pid, libc::SIGABRT);
        self.set_state(
            worker.pid,
            WorkerState::Draining {
                kill_at: now + WATCHDOG_KILL_GRACE.min(self.policy.stop_timeout),
                why: StopReason::Watchdog { timeout },
            },
        );
        let failure = Failure {
            slot: worker.slot,
            generation: worker.generation,
            pid: Some(worker.pid),
            ready_for,
            cause: format!("sent no WATCHDOG=1 for {}", human(timeout)),
        };
        self.on_failure(failure, now);
    }

    // ---- decisions ---------------------------------------------------------

    /// Decides what follows a failed worker: abort the reload it belonged
    /// to, restart its slot (now or after backoff), or give up.
    fn on_failure(&mut self, failure: Failure, now: Instant) -> Next {
        if self.phase != Phase::Running || failure.slot >= self.slots.len() {
            return Next::NotRestarted;
        }
        // Any worker started during the reload (a replacement, or a crash
        // restart, which also runs the new release) that fails, before or
        // after its ready, stops the reload: no further old worker stops.
        let is_new = self
            .reload
            .as_ref()
            .is_some_and(|plan| failure.generation > plan.from);
        if is_new {
            self.abort_reload(&failure, now);
        }
        self.recycle_failed(&failure, now);
        if !self.slots[failure.slot].is_empty() {
            return Next::SlotServed;
        }
        let slot = &mut self.slots[failure.slot];
        slot.restarts += 1;
        match slot.backoff.on_crash(failure.ready_for, &self.policy) {
            Restart::Now => Next::Restart {
                delay: Duration::ZERO,
                attempt: 0,
            },
            Restart::After { delay, attempt } => {
                self.set_restart(failure.slot, Some(now + delay));
                Next::Restart { delay, attempt }
            }
            Restart::GiveUp { crashes } => {
                let max_restarts = self.policy.max_restarts.unwrap_or_default();
                self.log(Record::GivingUp {
                    slot: failure.slot,
                    crashes,
                    max_restarts,
                });
                let outcome = Outcome::GaveUp {
                    slot: failure.slot,
                    crashes,
                    max_restarts,
                };
                self.begin_stop(true, outcome, now);
                Next::GiveUp
            }
        }
    }

    fn start_reload(&mut self, now: Instant) {
        self.target += 1;
        let generation = self.target;
        // An operator's reload does not wait out a crash loop's backoff: the
        // slots waiting start the new generation now, with a fresh backoff.
        for slot in 0..self.slots.len() {
            if let Some(at) = self.slots[slot].restart_at {
                self.slots[slot].backoff = Backoff::default();
                self.set_restart(slot, None);
                self.dirty.insert(slot);
                self.log(Record::BackoffCut {
                    slot,
                    was_due_in: at.saturating_duration_since(now),
                    generation,
                });
            }
        }
        self.progress
            .rebuild(self.slots.iter().map(|s| s.view), generation);
        match &mut self.reload {
            Some(plan) => {
                plan.target = generation;
                // A newer release proves itself anew: its first worker is
                // a canary again.
                if plan.canary == Canary::Proven && !self.policy.min_ready.is_zero() {
                    plan.canary = Canary::Due;
                }
                self.log(Record::ReloadRetargeted { generation });
            }
            None => {
                let canary = if self.policy.min_ready.is_zero() {
                    Canary::Proven
                } else {
                    Canary::Due
                };
                self.reload = Some(ReloadPlan {
                    from: generation - 1,
                    target: generation,
                    started: now,
                    canary,
                });
                self.log(Record::ReloadStarted {
                    generation,
                    workers: self.slots.len(),
                });
                self.actions
                    .push(Action::NotifyManager(ManagerState::Reloading));
            }
        }
    }

    /// A new worker failed: stop the reload where it is. Replacements that
    /// are not ready yet, or not proven, are stopped; every old worker
    /// keeps serving.
    fn abort_reload(&mut self, failure: &Failure, now: Instant) {
        let Some(plan) = self.reload.take() else {
            return;
        };
        let unfinished: Vec<Pid> = self
            .progress
            .replacing()
            .flat_map(|slot| self.attached(slot))
            .filter(|w| !w.state.is_proven() && w.generation > plan.from && self.has_older(w))
            .map(|w| w.pid)
            .collect();
        for pid in unfinished {
            self.stop(pid, StopReason::ReloadAborted, now);
        }
        let old_serving = self
            .slots
            .iter()
            .filter(|s| s.view.ready.is_some_and(|g| g < plan.target))
            .count();
        self.log(Record::ReloadAborted {
            generation: plan.target,
            slot: failure.slot,
            pid: failure.pid,
            cause: failure.cause.clone(),
            old_serving,
        });
        self.finish_reload(ReloadOutcome::Aborted {
            generation: plan.target,
            cause: failure.cause.clone(),
        });
    }

    fn finish_reload(&mut self, outcome: ReloadOutcome) {
        let status = match &outcome {
            ReloadOutcome::Complete {
                generation,
                duration,
            } => format!(
                "serving generation {generation} (reloaded in {})",
                human(*duration)
            ),
            ReloadOutcome::Aborted { generation, cause } => format!(
                "serving {}; reload to generation {generation} aborted: a new worker {cause}",
                self.serving_text()
            ),
            ReloadOutcome::Interrupted { .. } => String::new(),
        };
        self.last_reload = Some(outcome.clone());
        self.actions.push(Action::ReloadFinished(outcome));
        self.actions
            .push(Action::NotifyManager(ManagerState::Ready));
        self.actions
            .push(Action::NotifyManager(ManagerState::Status(status)));
    }

    /// The generations the ready workers run, for a sentence.
    fn serving_text(&self) -> String {
        let generations: BTreeSet<Generation> = self
            .workers
            .values()
            .filter(|w| w.state.is_ready() && w.state.is_attached())
            .map(|w| w.generation)
            .collect();
        match generations.len() {
            0 => "no generation".into(),
            1 => format!("generation {}", generations.first().unwrap_or(&0)),
            _ => format!(
                "generations {}",
                generations
                    .iter()
                    .map(Generation::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn begin_stop(&mut self, graceful: bool, outcome: Outcome, now: Instant) {
        self.phase = Phase::Stopping {
            forced: !graceful,
            outcome,
        };
        if let Some(plan) = self.reload.take() {
            self.actions
                .push(Action::ReloadFinished(ReloadOutcome::Interrupted {
                    generation: plan.target,
                }));
        }
        self.log(Record::StopRequested {
            graceful,
            timeout: self.policy.stop_timeout,
        });
        self.actions
            .push(Action::NotifyManager(ManagerState::Stopping));
        self.actions.push(Action::CloseListeners);
        for slot in 0..self.slots.len() {
            self.set_restart(slot, None);
        }
        for (pgid, kill_at) in std::mem::take(&mut self.groups) {
            self.timers.change(Timer::Group(pgid), Some(kill_at), None);
        }
        for pid in self.worker_pids() {
            if graceful {
                self.stop(pid, StopReason::Shutdown, now);
            } else {
                self.kill(pid, StopReason::Shutdown);
            }
        }
    }

    /// The second `TERM`, or `QUIT` during a graceful stop: no more waiting.
    fn force_stop(&mut self) {
        if let Phase::Stopping { forced, .. } = &mut self.phase {
            *forced = true;
        }
        self.log(Record::StopRequested {
            graceful: false,
            timeout: Duration::ZERO,
        });
        for pid in self.worker_pids() {
            self.kill(pid, StopReason::Shutdown);
        }
    }

    // ---- reconciliation ----------------------------------------------------

    fn reconcile(&mut self, now: Instant) {
        let running = self.phase == Phase::Running;
        while let Some(slot) = self.dirty.pop_first() {
            if slot >= self.slots.len() {
                continue;
            }
            if running {
                self.retire_replaced(slot, now);
                let s = &self.slots[slot];
                if s.is_empty() && s.restart_at.is_none() {
                    self.spawn(slot);
                }
            }
            self.refresh(slot);
        }
        match &self.phase {
            Phase::Running => {
                self.advance_reload(now);
                self.announce_ready(now);
                self.start_recycle();
            }
            Phase::Stopping { outcome, .. } => {
                let gone = self.workers.is_empty() && self.spawns_in_flight == 0;
                // The last thing before exiting: nothing the workers
                // started may outlive the master.
                if gone && self.strays.is_empty() && self.sweep == Sweep::NotYet {
                    self.sweep = Sweep::Asked;
                    self.actions.push(Action::FindStrays { of: None });
                    return;
                }
                if gone && self.strays.is_empty() && self.sweep == Sweep::Clean {
                    let outcome = outcome.clone();
                    let code = outcome.exit_code();
                    self.phase = Phase::Done;
                    self.log(Record::Stopped { code });
                    self.actions.push(Action::Exit(outcome));
                }
            }
            Phase::Done => {}
        }
    }

    /// Once a slot's newest worker is ready (and, if it is a canary, has
    /// proven itself), the older ones in that slot drain.
    fn retire_replaced(&mut self, slot: SlotId, now: Instant) {
        let Some(newest) = self
            .attached(slot)
            .filter(|w| w.state.is_ready())
            .max_by_key(|w| (w.generation, w.started))
        else {
            return;
        };
        if !newest.state.is_proven() {
            return;
        }
        let by = newest.generation;
        let key = (newest.generation, newest.started);
        let older: Vec<Pid> = self
            .attached(slot)
            .filter(|w| (w.generation, w.started) < key && !self.retiring.contains_key(&w.pid))
            .map(|w| w.pid)
            .collect();
        for pid in older {
            let why = match self.recycling {
                Some((recycled, reason)) if recycled == pid => {
                    // Its successor serves: the next slot may take its turn.
                    self.recycling = None;
                    StopReason::Recycled(reason)
                }
                _ => StopReason::Replaced { by },
            };
            self.forget_recycling(pid);
            self.retire(pid, why, now);
        }
    }

    /// Starts replacements, `--reload-batch` slots at a time, and notices
    /// when every slot has a ready worker of the target generation.
    fn advance_reload(&mut self, now: Instant) {
        let Some(plan) = self.reload.clone() else {
            return;
        };
        if self.progress.is_complete(self.slots.len()) {
            self.reload = None;
            let duration = now.saturating_duration_since(plan.started);
            self.log(Record::ReloadComplete {
                generation: plan.target,
                duration,
            });
            self.finish_reload(ReloadOutcome::Complete {
                generation: plan.target,
                duration,
            });
            return;
        }
        let batch = match plan.canary {
            Canary::Due => 1,
            // The rest waits for the canary.
            Canary::Holding { .. } => return,
            Canary::Proven => self.reload_batch(),
        };
        while let Some(slot) = self.progress.next_to_replace(batch) {
            if let Some(plan) = &mut self.reload
                && plan.canary == Canary::Due
            {
                plan.canary = Canary::Holding { slot };
            }
            self.spawn(slot);
            self.refresh(slot);
        }
    }

    fn announce_ready(&mut self, now: Instant) {
        if self.announced_ready || !self.all_ready() {
            return;
        }
        self.announced_ready = true;
        let startup = now.saturating_duration_since(self.started.unwrap_or(now));
        self.log(Record::WorkersReady {
            workers: self.slots.len(),
            startup,
        });
        self.actions
            .push(Action::NotifyManager(ManagerState::Ready));
        let status = format!("serving generation {}", self.target);
        self.actions
            .push(Action::NotifyManager(ManagerState::Status(status)));
    }

    // ---- recycling -----------------------------------------------------------

    fn schedule_memory_check(&mut self, now: Instant) {
        if self.policy.recycle.max_memory.is_some() && self.memory_check_at.is_none() {
            let at = now + self.policy.recycle.memory_check;
            self.memory_check_at = Some(at);
            self.timers.change(Timer::MemoryCheck, None, Some(at));
        }
    }

    /// The answer to a memory check: workers over the limit are due.
    fn on_memory(&mut self, rss: Vec<(Pid, u64)>) {
        let Some(limit) = self.policy.recycle.max_memory else {
            return;
        };
        for (pid, rss) in rss {
            if rss > limit {
                self.make_due(pid, RecycleReason::Memory { rss, limit });
            }
        }
    }

    /// Queues a serving worker for recycling (once).
    fn make_due(&mut self, pid: Pid, reason: RecycleReason) {
        let serving = self
            .workers
            .get(&pid)
            .is_some_and(|w| w.state.is_ready() && w.state.is_attached());
        let queued = self.due.contains_key(&pid) || self.recycling.is_some_and(|(p, _)| p == pid);
        if serving && !queued && self.phase == Phase::Running {
            self.due.insert(pid, Due { reason, failed: 0 });
            if let Some(w) = self.workers.get(&pid) {
                self.dirty.insert(w.slot);
            }
        }
    }

    /// Starts the next recycle, if none is under way and no reload is: the
    /// worker's successor starts now, in the same slot; `retire_replaced`
    /// stops the worker once the successor is ready.
    fn start_recycle(&mut self) {
        if self.recycling.is_some() || self.reload.is_some() {
            return;
        }
        let due: Vec<(Pid, Due)> = self.due.iter().map(|(&p, &d)| (p, d)).collect();
        for (pid, entry) in due {
            let Some(worker) = self.workers.get(&pid) else {
                self.due.remove(&pid);
                continue;
            };
            if !(worker.state.is_ready() && worker.state.is_attached()) {
                self.due.remove(&pid);
                continue;
            }
            let slot = worker.slot;
            let s = &self.slots[slot];
            // A slot already replacing, or backing off after a failed
            // successor, waits.
            if s.attached.len() > 1 || s.spawning.is_some() || s.restart_at.is_some() {
                continue;
            }
            self.due.remove(&pid);
            self.recycling = Some((pid, entry.reason));
            self.failed_successors = entry.failed;
            self.log(Record::WorkerRecycled {
                slot,
                pid,
                reason: entry.reason,
            });
            self.spawn(slot);
            self.refresh(slot);
            return;
        }
    }

    /// A worker failed: if it was a recycle's successor, the recycle waits
    /// and is tried again after a delay that grows with each failure; the
    /// worker it was to replace keeps serving.
    fn recycle_failed(&mut self, failure: &Failure, now: Instant) {
        let Some((old, reason)) = self.recycling else {
            return;
        };
        let same_slot = self
            .workers
            .get(&old)
            .is_some_and(|w| w.slot == failure.slot);
        if !same_slot || failure.pid == Some(old) || failure.ready_for.is_some() {
            return;
        }
        self.recycling = None;
        let failed = self.failed_successors + 1;
        self.due.insert(old, Due { reason, failed });
        let delay = self.policy.restart_delay.after(failed);
        self.set_restart(failure.slot, Some(now + delay));
    }

    /// A worker exited: it is no longer due for recycling, nor timed, nor
    /// retiring.
    fn forget_pending(&mut self, pid: Pid) {
        if let Some((at, _)) = self.retiring.remove(&pid) {
            self.timers.change(Timer::Retiring(pid), Some(at), None);
        }
        self.forget_recycling(pid);
    }

    /// A worker is on its way out: it is no longer due for recycling, nor
    /// timed.
    fn forget_recycling(&mut self, pid: Pid) {
        self.due.remove(&pid);
        if let Some((at, _)) = self.age_limits.remove(&pid) {
            self.timers.change(Timer::Age(pid), Some(at), None);
        }
        if self.recycling.is_some_and(|(p, _)| p == pid) {
            self.recycling = None;
        }
    }

    // ---- helpers -----------------------------------------------------------

    /// The workers a slot has: starting or serving, not draining.
    fn attached(&self, slot: SlotId) -> impl Iterator<Item = &Worker> {
        self.slots
            .get(slot)
            .into_iter()
            .flat_map(|s| &s.attached)
            .filter_map(|pid| self.workers.get(pid))
    }

    /// Takes a worker that stopped serving or exited out of its slot's index.
    fn detach(&mut self, worker: &Worker) {
        if let Some(slot) = self.slots.get_mut(worker.slot) {
            slot.attached.retain(|&pid| pid != worker.pid);
            self.dirty.insert(worker.slot);
        }
    }

    /// Whether `worker`'s slot also has an older attached worker (so
    /// `worker` is a replacement).
    fn has_older(&self, worker: &Worker) -> bool {
        self.attached(worker.slot)
            .any(|w| w.generation < worker.generation)
    }

    /// Recounts a slot: what it looks like now, against what it looked like
    /// when last counted.
    fn refresh(&mut self, slot: SlotId) {
        let s = &self.slots[slot];
        // A retiring worker gets no new connection: the slot is done with it.
        let retiring = s
            .attached
            .iter()
            .filter(|pid| self.retiring.contains_key(pid))
            .count();
        let workers = s.attached.len() - retiring + usize::from(s.spawning.is_some());
        let newest = |proven: bool| {
            self.attached(slot)
                .filter(|w| w.state.is_ready() && (w.state.is_proven() || !proven))
                .max_by_key(|w| (w.generation, w.started))
        };
        let view = SlotView {
            workers,
            ready: newest(false).map(|w| w.generation),
            steered: newest(true).map(|w| w.lane),
        };
        if let Some(lane) = view.steered {
            self.slots[slot].lane = lane;
        }
        self.count(slot, view);
    }

    /// Replaces a slot's view in every count it is part of.
    fn count(&mut self, slot: SlotId, view: SlotView) {
        let old = std::mem::replace(&mut self.slots[slot].view, view);
        if old == view {
            return;
        }
        self.progress.update(slot, old, view, self.target);
        self.steering_due |= old.steered != view.steered;
        self.ready_slots =
            self.ready_slots + usize::from(view.ready.is_some()) - usize::from(old.ready.is_some());
    }

    /// With queues per slot, tells the shell where new connections go once
    /// that changed: to each slot's proven worker's queue, or, with none,
    /// to every slot's last queue (which waits for its worker).
    fn steer(&mut self) {
        if !std::mem::take(&mut self.steering_due) || self.policy.balance.is_none() {
            return;
        }
        let mut queues: Vec<(SlotId, Lane)> = (0..self.slots.len())
            .filter_map(|id| Some((id, self.slots[id].view.steered?)))
            .collect();
        if queues.is_empty() {
            queues = (0..self.slots.len())
                .map(|id| (id, self.slots[id].lane))
                .collect();
        }
        self.actions.push(Action::Steer { queues });
    }

    /// Stops a worker; with queues per slot, only after a grace in which
    /// it accepts what its queue still holds (new connections go elsewhere
    /// from now on).
    fn retire(&mut self, pid: Pid, why: StopReason, now: Instant) {
        let Some(grace) = self.policy.balance.map(|b| b.retire_grace) else {
            return self.stop(pid, why, now);
        };
        if let std::collections::btree_map::Entry::Vacant(entry) = self.retiring.entry(pid) {
            entry.insert((now + grace, why));
            self.timers
                .change(Timer::Retiring(pid), None, Some(now + grace));
            if let Some(worker) = self.workers.get(&pid) {
                self.dirty.insert(worker.slot);
            }
        }
    }

    fn set_restart(&mut self, slot: SlotId, at: Option<Instant>) {
        let s = &mut self.slots[slot];
        let old = std::mem::replace(&mut s.restart_at, at);
        self.timers.change(Timer::Restart(slot), old, at);
    }

    /// Starts a worker for `slot`: a replacement on the lane its
    /// predecessor does not use, so that it gets no connection until it is
    /// proven; a restart on the slot's last lane, where connections wait.
    fn spawn(&mut self, slot: SlotId) {
        self.set_restart(slot, None);
        let lane = match self
            .attached(slot)
            .max_by_key(|w| (w.generation, w.started))
        {
            Some(current) if self.policy.balance.is_some() => 1 - current.lane,
            Some(_) | None => self.slots[slot].lane,
        };
        self.slots[slot].spawning = Some(lane);
        self.spawns_in_flight += 1;
        self.actions.push(Action::Spawn {
            slot,
            generation: self.target,
            lane,
        });
    }

    fn become_ready(&mut self, pid: Pid, by: ReadyBy, now: Instant) {
        let Some(worker) = self.workers.get(&pid) else {
            return;
        };
        // A reload's canary holds before the worker it replaces stops.
        let canary = self.reload.as_ref().is_some_and(|plan| {
            plan.canary == (Canary::Holding { slot: worker.slot }) && worker.generation > plan.from
        }) && self.has_older(worker);
        let hold = canary.then_some(self.policy.min_ready);
        let record = Record::WorkerReady {
            slot: worker.slot,
            pid,
            generation: worker.generation,
            startup: now.saturating_duration_since(worker.started),
            by,
            hold,
        };
        let ready = WorkerState::Ready {
            since: now,
            watchdog_by: self.policy.watchdog.map(|d| now + d),
            hold_until: hold.map(|hold| now + hold),
        };
        let (generation, slot, started) = (worker.generation, worker.slot, worker.started);
        if let Some(worker) = self.workers.get_mut(&pid) {
            worker.ready_by = Some(by);
        }
        self.set_state(pid, ready);
        self.log(record);
        if let Some(max_age) = self.policy.recycle.max_age {
            let limit = recycle::lifetime(max_age, slot, self.slots.len(), self.rng.next_f64());
            let at = (started + limit).max(now);
            self.age_limits.insert(pid, (at, limit));
            self.timers.change(Timer::Age(pid), None, Some(at));
        }
        self.check_own_ports(pid, generation);
    }

    /// A server that binds a port of its own serves nobody on ours: looked
    /// for once per generation, in its first worker that is ready or found
    /// not waiting on its listeners.
    fn check_own_ports(&mut self, pid: Pid, generation: Generation) {
        if generation > self.listeners_checked {
            self.listeners_checked = generation;
            self.actions.push(Action::CheckListeners { pid });
        }
    }

    /// Sends the stop signal to a worker that is starting or serving; it
    /// then drains, detached from its slot, until exit or `--stop-timeout`.
    /// A worker that said `STOPPING=1` gets it only at shutdown, and keeps
    /// its deadline.
    fn stop(&mut self, pid: Pid, why: StopReason, now: Instant) {
        let Some(worker) = self.workers.get(&pid) else {
            return;
        };
        if let WorkerState::Leaving { kill_at } = worker.state {
            if why == StopReason::Shutdown {
                self.signal(pid, self.policy.stop_signal);
                self.set_state(
                    pid,
                    WorkerState::Draining {
                        kill_at,
                        why: StopReason::WorkerStopping,
                    },
                );
            }
            return;
        }
        if !worker.state.is_attached() {
            return;
        }
        let slot = worker.slot;
        self.signal(pid, self.policy.stop_signal);
        self.log(Record::WorkerDraining { slot, pid, why });
        self.set_state(
            pid,
            WorkerState::Draining {
                kill_at: now + self.policy.stop_timeout,
                why,
            },
        );
    }

    /// `SIGKILL`s a worker's process group, once.
    fn kill(&mut self, pid: Pid, why: StopReason) {
        let Some(worker) = self.workers.get(&pid) else {
            return;
        };
        if matches!(worker.state, WorkerState::Killed { .. }) {
            return;
        }
        self.actions.push(Action::KillGroup { pid });
        self.set_state(pid, WorkerState::Killed { why });
    }

    /// Every signal goes to a worker still in the map: one the supervisor
    /// has not yet seen exit. (The shell reports each exit right after
    /// reaping it, so such a pid is at worst a zombie, never reused.)
    fn signal(&mut self, pid: Pid, signal: i32) {
        if self.workers.contains_key(&pid) || self.strays.contains_key(&pid) {
            self.actions.push(Action::Signal { pid, signal });
        }
    }

    /// Every change of state goes through here, so that the slot index, the
    /// timers and the slot's counts stay exact.
    fn set_state(&mut self, pid: Pid, state: WorkerState) {
        let Some(worker) = self.workers.get_mut(&pid) else {
            return;
        };
        let old_deadline = worker.state.deadline();
        let detached = worker.state.is_attached() && !state.is_attached();
        worker.state = state;
        let new_deadline = worker.state.deadline();
        let worker = worker.clone();
        self.timers
            .change(Timer::Worker(pid), old_deadline, new_deadline);
        self.dirty.insert(worker.slot);
        if detached {
            self.detach(&worker);
        }
    }

    /// The indexes and counts, recomputed the slow way: for tests.
    #[cfg(test)]
    pub fn check_index(&self) {
        for (id, slot) in self.slots.iter().enumerate() {
            let mut indexed = slot.attached.clone();
            indexed.sort();
            let scanned: Vec<Pid> = self
                .workers
                .values()
                .filter(|w| w.slot == id && w.state.is_attached())
                .map(|w| w.pid)
                .collect();
            assert_eq!(indexed, scanned, "slot {id}'s index");
        }
        let timers = self
            .workers
            .values()
            .filter(|w| w.state.deadline().is_some())
            .count()
            + self.slots.iter().filter(|s| s.restart_at.is_some()).count()
            + self.groups.len()
            + self.strays.values().filter(|at| at.is_some()).count()
            + self.age_limits.len()
            + self.retiring.len()
            + usize::from(self.memory_check_at.is_some());
        assert_eq!(self.timers.len(), timers, "one timer per deadline");
        let ready = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(id, _)| self.attached(id).any(|w| w.state.is_ready()))
            .count();
        assert_eq!(self.ready_slots, ready, "ready slots");
    }

    fn ignored(&mut self, signal: &'static str, why: &'static str) {
        self.log(Record::SignalIgnored { signal, why });
    }

    fn log(&mut self, record: Record) {
        self.actions.push(Action::Log(record));
    }
}

/// An exec error that trying again will not cure: the file is not a
/// program (ENOEXEC), may not be run (EACCES, EPERM), or it or its
/// interpreter is missing (ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG, ELIBBAD).
/// ETXTBSY (a binary being copied), EAGAIN, ENOMEM, EMFILE may pass.
fn cannot_ever_exec(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOEXEC
            | libc::EACCES
            | libc::EPERM
            | libc::ENOENT
            | libc::ENOTDIR
            | libc::ELOOP
            | libc::ENAMETOOLONG
            | libc::ELIBBAD
            | libc::EISDIR
    )
}
