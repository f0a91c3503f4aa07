//! Stopping: a graceful stop (`TERM`, `INT`, `rcluster stop`) signals every
//! worker and waits for them and for what they left behind; a forced one
//! (`QUIT`, a second `INT`) kills. The master exits only when nothing of
//! theirs is left.

use std::time::{Duration, Instant};

use super::event::{Action, ManagerState, Outcome};
use super::record::Record;
use super::reload::ReloadOutcome;
use super::slot::StopReason;
use super::timers::Timer;
use super::{Phase, Supervisor, Sweep};

impl Supervisor {
    pub(super) fn begin_stop(&mut self, graceful: bool, outcome: Outcome, now: Instant) {
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

    /// Once every worker is gone and a last look found nothing they left
    /// behind, the master exits.
    pub(super) fn finish_stop(&mut self) {
        let Phase::Stopping { outcome, .. } = &self.phase else {
            return;
        };
        let gone = self.workers.is_empty() && self.spawns_in_flight == 0;
        // The last thing before exiting: nothing the workers started may
        // outlive the master.
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

    /// The second `TERM`, or `QUIT` during a graceful stop: no more waiting.
    pub(super) fn force_stop(&mut self) {
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
}
