//! A worker's life as the supervisor follows it: spawned, exec'd, looked
//! at (`--ready auto`) or told `READY=1`, ready (a canary holds), and the
//! deadlines of each state; the stop signal and `SIGKILL`. The table of
//! states and events is in the supervisor's docs (`mod.rs`).

use std::time::{Duration, Instant};

use crate::vocab::{Generation, Pid, SlotId, human};

use super::event::{Action, NotifyMsg};
use super::policy::ReadyRule;
use super::record::Record;
use super::reload::Canary;
use super::slot::{ReadyBy, Serving, StopReason, Worker, WorkerState};
use super::timers::Timer;
use super::{Failure, Phase, Supervisor, recycle};

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

impl Supervisor {
    pub(super) fn on_spawned(
        &mut self,
        slot: SlotId,
        generation: Generation,
        pid: Pid,
        now: Instant,
    ) {
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
                drained: false,
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

    pub(super) fn on_spawn_failed(
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

    pub(super) fn on_exec(&mut self, pid: Pid, result: Result<(), i32>, now: Instant) {
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

    pub(super) fn on_notify(&mut self, pid: Pid, msg: NotifyMsg, sender: Pid, now: Instant) {
        let Some(worker) = self.workers.get(&pid) else {
            return;
        };
        let (slot, state) = (worker.slot, worker.state.clone());
        if msg == NotifyMsg::Ready && self.policy.ready == ReadyRule::Auto && !self.speaks_ready {
            self.speaks_ready = true;
            self.log(Record::ReadinessLearned { slot, pid });
        }
        self.heard_ready |= msg == NotifyMsg::Ready;
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
            (NotifyMsg::Responses(counts), _) => self.on_responses(pid, counts, now),
            (NotifyMsg::Drained, WorkerState::Draining { .. }) => {
                if let Some(worker) = self.workers.get_mut(&pid) {
                    worker.drained = true;
                }
            }
            (
                NotifyMsg::Drained,
                WorkerState::Spawned { .. }
                | WorkerState::Booting { .. }
                | WorkerState::Ready { .. }
                | WorkerState::Leaving { .. }
                | WorkerState::Killed { .. },
            ) => {}
        }
    }

    /// `STATUS=` is state, as systemd keeps it: the last one is kept (for
    /// `status`), and a change is logged at most once a second per worker,
    /// so a worker that reports progress in a loop floods nothing.
    pub(super) fn on_status(&mut self, pid: Pid, status: String, now: Instant) {
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
    pub(super) fn on_serving(&mut self, pid: Pid, serving: Serving, now: Instant) {
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

    /// A worker's deadline passed (its timer is already off the list).
    pub(super) fn worker_deadline(&mut self, pid: Pid, now: Instant) {
        let Some(worker) = self.workers.get(&pid).cloned() else {
            return;
        };
        match worker.state {
            WorkerState::Booting {
                ready_at: Some(at), ..
            } if at <= now => {
                // Its workers said READY=1 before: a worker that does not is
                // likely one whose notify call failed (a helper not on its
                // PATH fails silently in Node), and every start now waits
                // out the timer.
                if let ReadyRule::Delay(after) = self.policy.ready
                    && self.heard_ready
                    && !self.warned_timer_only
                {
                    self.warned_timer_only = true;
                    self.log(Record::ReadyByTimerOnly {
                        slot: worker.slot,
                        pid,
                        after,
                    });
                }
                self.become_ready(pid, ReadyBy::Delay, now)
            }
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

    pub(super) fn not_ready(&mut self, worker: &Worker, now: Instant) {
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
    pub(super) fn not_serving(&mut self, worker: &Worker, now: Instant) {
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

    pub(super) fn watchdog_missed(&mut self, worker: &Worker, now: Instant) {
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

    pub(super) fn become_ready(&mut self, pid: Pid, by: ReadyBy, now: Instant) {
        if self.awaits_probe(pid, by, now) {
            return;
        }
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
        self.probe_from(pid, now);
        self.check_own_ports(pid, generation);
    }

    /// A server that binds a port of its own serves nobody on ours: looked
    /// for once per generation, in its first worker that is ready or found
    /// not waiting on its listeners.
    pub(super) fn check_own_ports(&mut self, pid: Pid, generation: Generation) {
        if generation > self.listeners_checked {
            self.listeners_checked = generation;
            self.actions.push(Action::CheckListeners { pid });
        }
    }

    /// Sends the stop signal to a worker that is starting or serving; it
    /// then drains, detached from its slot, until exit or `--stop-timeout`.
    /// A worker that said `STOPPING=1` gets it only at shutdown, and keeps
    /// its deadline.
    pub(super) fn stop(&mut self, pid: Pid, why: StopReason, now: Instant) {
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
    pub(super) fn kill(&mut self, pid: Pid, why: StopReason) {
        let Some(worker) = self.workers.get(&pid) else {
            return;
        };
        if matches!(worker.state, WorkerState::Killed { .. }) {
            return;
        }
        self.actions.push(Action::KillGroup { pid });
        self.set_state(pid, WorkerState::Killed { why });
    }
}
