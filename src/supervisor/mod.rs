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
//! ready. With `--probe`, "Ready" also needs a passing probe: until one it
//! answered passes, a worker ready by its rule stays Booting (see
//! [`probe`]). "—" means ignored. Every stop signal is followed by
//! `SIGCONT`, for a worker stopped with `SIGSTOP`. When a worker is gone,
//! what is left of its process group gets the stop signal, and `SIGKILL` after
//! `--stop-timeout` if it lingers (systemd's `KillMode=mixed`); processes
//! it started that left the group come back to the master (a child
//! subreaper) and are stopped the same way, and the master exits only once
//! none is left. A reaped pid that is no worker is such a process, or an
//! orphan the master inherited as PID 1. Every cell has a unit test.

mod answers;
pub mod backoff;
pub mod event;
mod lifecycle;
pub mod policy;
pub mod probe;
mod reconfigure;
pub mod record;
pub mod recycle;
pub mod reload;
mod restart;
mod scale;
mod shutdown;
pub mod slot;
pub mod snapshot;
#[cfg(test)]
mod tests;
pub mod timers;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::vocab::{Generation, Pid, SlotId};
use event::{Action, Event, ManagerState, MasterSignal, Outcome};
use policy::Policy;
use probe::Health;
use record::Record;
use recycle::{Due, RecycleReason, Rng};
use reload::{Progress, ReloadOutcome, ReloadPlan};
use slot::{Slot, SlotView, StopReason, Worker, WorkerState};
use timers::{Timer, Timers};

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
    /// The newest generation: raised by each reload; a reload's
    /// replacements run it.
    target: Generation,
    /// The release that serves: the generation of the last completed
    /// reload (1 at start). Outside a reload every start (a crash's
    /// restart, a scale-up, a recycled worker's successor) runs it, so a
    /// release whose reload failed never comes back by a restart.
    serving: Generation,
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
    /// Under `--ready DELAY`: a worker has said `READY=1`, and whether a
    /// later one ready only by the timer was warned of (once). Not handed
    /// over in a live upgrade: the new master may warn once more.
    heard_ready: bool,
    warned_timer_only: bool,
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
    /// Exited workers whose strays are searched for at `Timer::StraySearch`.
    /// Not handed over in a live upgrade: what they left is found by the
    /// search at shutdown.
    stray_search: Vec<Pid>,
    /// Each worker's probes (`--probe`).
    health: BTreeMap<Pid, Health>,
    /// A worker replaced for its probes had a successor that failed them
    /// too: no more are replaced for them until a probe passes.
    replacing_paused: bool,
    /// Each worker's responses, as its shim counted them.
    answers: BTreeMap<Pid, crate::vocab::Responses>,
    /// A reload's canary whose answers are being compared.
    baseline: Option<answers::Baseline>,
    /// A policy for the next reload (`--config`), and the worker count
    /// it ends with.
    staged: Option<(Policy, Option<usize>)>,
    /// A reload that changes the policy is under way.
    reconfiguring: Option<reconfigure::Reconfiguring>,
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
            serving: 1,
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
            heard_ready: false,
            warned_timer_only: false,
            timers: Timers::default(),
            dirty: BTreeSet::new(),
            groups: BTreeMap::new(),
            strays: BTreeMap::new(),
            sweep: Sweep::NotYet,
            stray_search: Vec::new(),
            health: BTreeMap::new(),
            replacing_paused: false,
            answers: BTreeMap::new(),
            baseline: None,
            staged: None,
            reconfiguring: None,
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
            Event::Probed {
                target,
                by,
                outcome,
            } => self.on_probed(target, by, outcome, now),
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

    /// A worker the supervisor has not seen exit.
    pub fn worker(&self, pid: Pid) -> Option<&Worker> {
        self.workers.get(&pid)
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

    /// Nothing under way: running, no reload, one ready worker per slot
    /// and no other. The master may give back memory then (`trim.rs`).
    pub fn is_settled(&self) -> bool {
        self.is_running()
            && self.reload.is_none()
            && self.all_ready()
            && self.workers.len() == self.slots.len()
    }

    pub fn target_generation(&self) -> Generation {
        self.target
    }

    /// The generation restarts run: see [`Supervisor::serving`].
    pub fn serving_generation(&self) -> Generation {
        self.serving
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
                Timer::StraySearch => self.search_strays(),
                Timer::Probe(pid) => self.probe_due(pid),
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

    // ---- decisions ---------------------------------------------------------

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
                    // Nothing serves in an empty slot: during a reload it
                    // starts the reload's release (which was to replace it
                    // anyway: a crash loop ends with the fixed release);
                    // otherwise the release that serves.
                    let generation = match &self.reload {
                        Some(plan) => plan.target,
                        None => self.serving,
                    };
                    self.spawn(slot, generation);
                }
            }
            self.refresh(slot);
        }
        match &self.phase {
            Phase::Running => {
                self.advance_reload(now);
                if self.reload.is_none() && self.reconfigured(now) {
                    // Slots added by the new count start now.
                    return self.reconcile(now);
                }
                self.announce_ready(now);
                self.start_recycle();
            }
            Phase::Stopping { .. } => self.finish_stop(),
            Phase::Done => {}
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

    fn set_restart(&mut self, slot: SlotId, at: Option<Instant>) {
        let s = &mut self.slots[slot];
        let old = std::mem::replace(&mut s.restart_at, at);
        self.timers.change(Timer::Restart(slot), old, at);
    }

    /// Starts a worker of `generation` for `slot`: a replacement on the
    /// lane its predecessor does not use, so that it gets no connection
    /// until it is proven; a restart on the slot's last lane, where
    /// connections wait.
    fn spawn(&mut self, slot: SlotId, generation: Generation) {
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
            generation,
            lane,
        });
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

    fn ignored(&mut self, signal: &'static str, why: &'static str) {
        self.log(Record::SignalIgnored { signal, why });
    }

    fn log(&mut self, record: Record) {
        self.actions.push(Action::Log(record));
    }
}
