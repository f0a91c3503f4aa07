//! HTTP probes (`--probe PATH`): the rules by which a worker's answers to
//! the master's requests make it ready, fail a reload, or get it replaced.
//!
//! The shell sends each probe and says who answered it
//! ([`Event::Probed`](super::event::Event::Probed)); a probe is judged
//! against the worker that answered, which under the shared queue need not
//! be the worker it was sent for. The rules:
//!
//! - A worker that says it is ready (or that its `--ready` rule finds
//!   ready) is ready only once a probe it answered passed; until then it
//!   is probed every [`STARTING_PERIOD`]. `--probe-failures` failures in a
//!   row fail it, as an exit would: a reload's new worker aborts the
//!   reload, a recycle's successor leaves its predecessor serving.
//! - A reload's canary is probed every [`STARTING_PERIOD`] through its
//!   hold (`--min-ready`); failures in a row there fail it the same way.
//! - A proven worker is probed every `--probe-period`; failures in a row
//!   get it replaced, successor first (a recycle, one slot at a time).
//!   If that successor fails its probes too, the fault is not the
//!   worker's (a database every worker needs is down): no more workers are
//!   replaced for their probes until a probe passes again.

use std::time::{Duration, Instant};

use crate::vocab::Pid;

pub use super::policy::ProbePolicy;

use super::Supervisor;
use super::event::{Action, ProbeOutcome};
use super::record::Record;
use super::recycle::RecycleReason;
use super::slot::{ReadyBy, StopReason, WorkerState};
use super::timers::Timer;
use super::{Failure, Phase};

/// How often a worker is probed until it is proven: a starting worker, and
/// a reload's canary through its hold (HAProxy's `fastinter`).
pub const STARTING_PERIOD: Duration = Duration::from_millis(250);

/// A worker's probes so far.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Failures in a row, and the last one's cause.
    pub streak: u32,
    pub last_failure: Option<String>,
    /// A probe it answered has passed.
    pub passed: bool,
    /// It is ready by its own word (or its rule): this is how, once a
    /// probe passes.
    awaiting: Option<ReadyBy>,
    /// When its next probe is sent; none while one is out.
    pub(super) next_at: Option<Instant>,
}

impl Supervisor {
    /// Called as a worker becomes ready by `by`: true if a probe must pass
    /// first. The worker then stays starting (its `--ready-timeout` still
    /// runs) and is probed at once.
    pub(super) fn awaits_probe(&mut self, pid: Pid, by: ReadyBy, now: Instant) -> bool {
        if self.policy.probe.is_none() || self.health.get(&pid).is_some_and(|h| h.passed) {
            return false;
        }
        let Some(worker) = self.workers.get(&pid) else {
            return false;
        };
        let (WorkerState::Spawned { ready_by } | WorkerState::Booting { ready_by, .. }) =
            worker.state
        else {
            return false;
        };
        self.set_state(
            pid,
            WorkerState::Booting {
                ready_by,
                ready_at: None,
                look_at: None,
                looks: 0,
            },
        );
        self.health.entry(pid).or_default().awaiting = Some(by);
        self.schedule_probe(pid, now);
        true
    }

    /// A proven worker's probes go on every `--probe-period`.
    pub(super) fn probe_from(&mut self, pid: Pid, now: Instant) {
        if let Some(probe) = &self.policy.probe {
            let at = now + self.probe_interval(pid, probe.period);
            self.health.entry(pid).or_default().passed = true;
            self.schedule_probe(pid, at);
        }
    }

    fn probe_interval(&self, pid: Pid, period: Duration) -> Duration {
        let proven = self.workers.get(&pid).is_some_and(|w| w.state.is_proven());
        if proven {
            period
        } else {
            STARTING_PERIOD.min(period)
        }
    }

    fn schedule_probe(&mut self, pid: Pid, at: Instant) {
        let health = self.health.entry(pid).or_default();
        let old = health.next_at.replace(at);
        self.timers.change(Timer::Probe(pid), old, Some(at));
    }

    /// A worker's probe is due: sent, unless it is on its way out.
    pub(super) fn probe_due(&mut self, pid: Pid) {
        let Some(health) = self.health.get_mut(&pid) else {
            return;
        };
        health.next_at = None;
        let Some(worker) = self.workers.get(&pid) else {
            return;
        };
        if self.phase == Phase::Running && worker.state.is_attached() {
            self.actions.push(Action::Probe {
                pid,
                slot: worker.slot,
                lane: worker.lane,
            });
        }
    }

    /// The answer to the probe sent for `target`, answered by `by` (none:
    /// who answered could not be told, and it counts for nobody).
    pub(super) fn on_probed(
        &mut self,
        target: Pid,
        by: Option<Pid>,
        outcome: ProbeOutcome,
        now: Instant,
    ) {
        if let Some(by) = by {
            self.judge(by, outcome, now);
        }
        let Some(probe) = &self.policy.probe else {
            return;
        };
        let attached = self
            .workers
            .get(&target)
            .is_some_and(|w| w.state.is_attached());
        if attached
            && self
                .health
                .get(&target)
                .is_some_and(|h| h.next_at.is_none())
        {
            let at = now + self.probe_interval(target, probe.period);
            self.schedule_probe(target, at);
        }
    }

    fn judge(&mut self, pid: Pid, outcome: ProbeOutcome, now: Instant) {
        let Some(worker) = self.workers.get(&pid).cloned() else {
            return;
        };
        let Some(failures) = self.policy.probe.as_ref().map(|p| p.failures) else {
            return;
        };
        if !worker.state.is_attached() {
            return;
        }
        let health = self.health.entry(pid).or_default();
        let cause = match outcome {
            ProbeOutcome::Passed { .. } => {
                let after = std::mem::take(&mut health.streak);
                health.last_failure = None;
                health.passed = true;
                let awaiting = health.awaiting.take();
                if after > 0 {
                    self.log(Record::ProbePassing {
                        slot: worker.slot,
                        pid,
                        after,
                    });
                }
                self.replacing_paused = false;
                if self
                    .due
                    .get(&pid)
                    .is_some_and(|d| matches!(d.reason, RecycleReason::Unhealthy { .. }))
                {
                    self.due.remove(&pid);
                }
                if let Some(by) = awaiting {
                    self.become_ready(pid, by, now);
                }
                return;
            }
            ProbeOutcome::Failed { cause } => cause,
        };
        health.streak += 1;
        health.last_failure = Some(cause.clone());
        let streak = health.streak;
        self.log(Record::ProbeFailed {
            slot: worker.slot,
            pid,
            cause: cause.clone(),
            streak,
            failures,
        });
        if streak < failures {
            return;
        }
        if worker.state.is_proven() {
            if !self.replacing_paused {
                self.make_due(pid, RecycleReason::Unhealthy { failures: streak });
            }
            return;
        }
        // Starting, or a canary holding: it fails as an exit would.
        self.stop(pid, StopReason::ProbeFailed, now);
        let failure = Failure {
            slot: worker.slot,
            generation: worker.generation,
            pid: Some(pid),
            ready_for: worker.state.ready_for(now),
            cause: format!("{cause}, {streak} times in a row"),
        };
        self.on_failure(failure, now);
    }

    /// A worker replaced for failing its probes has a successor that
    /// failed them too: the cause is shared, and replacing more workers
    /// would only restart the cluster in a loop.
    pub(super) fn pause_replacing(&mut self, slot: usize, pid: Pid) {
        if self.replacing_paused {
            return;
        }
        self.replacing_paused = true;
        // Those queued wait for a probe to pass, and fail again after it.
        self.due
            .retain(|_, due| !matches!(due.reason, RecycleReason::Unhealthy { .. }));
        let failing = self.health.values().filter(|h| h.streak > 0).count();
        self.log(Record::ProbeReplacingPaused {
            slot,
            pid,
            failing,
            workers: self.slots.len(),
        });
    }

    /// A worker exited: its probes end with it.
    pub(super) fn forget_health(&mut self, pid: Pid) {
        if let Some(health) = self.health.remove(&pid) {
            self.timers.change(Timer::Probe(pid), health.next_at, None);
        }
    }

    /// A worker's probes, for `status`.
    pub fn health(&self, pid: Pid) -> Option<&Health> {
        self.health.get(&pid)
    }

    /// `--probe`, if on.
    pub fn probe_policy(&self) -> Option<&ProbePolicy> {
        self.policy.probe.as_ref()
    }

    /// Replacing workers for failed probes is paused (a shared outage).
    pub fn replacing_paused(&self) -> bool {
        self.replacing_paused
    }
}
