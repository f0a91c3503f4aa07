//! A reload that changes the settings (`--config` read again, or a
//! rollback to another generation's): its policy governs from the reload's
//! start (the canary's `--ready-timeout`, the `--stop-timeout` of the
//! workers it replaces, `--reload-batch`), and its worker count once the
//! reload completes, so that a release not yet proven never runs on more
//! slots than the one before it. A reload to fewer workers replaces only
//! the slots that stay; the others' old workers serve until it completes,
//! then drain (never a new worker started to be drained at once). An
//! aborted reload puts the policy back.

use std::time::Instant;

use super::Supervisor;
use super::policy::Policy;

/// The policy a reload replaced, and the worker count it brings.
#[derive(Debug)]
pub(super) struct Reconfiguring {
    before: Policy,
    workers: Option<usize>,
}

impl Supervisor {
    /// The next reload (or the one under way, retargeted) runs with
    /// `policy`, and ends with `workers` slots if given.
    pub fn stage_policy(&mut self, policy: Policy, workers: Option<usize>) {
        self.staged = Some((policy, workers));
    }

    /// At a reload's start: the staged policy, if any, governs.
    pub(super) fn apply_staged(&mut self, now: Instant) {
        let Some((mut policy, workers)) = self.staged.take() else {
            return;
        };
        // The `--max-age` spread stays the master's.
        policy.recycle.seed = self.policy.recycle.seed;
        let before = std::mem::replace(&mut self.policy, policy);
        match &mut self.reconfiguring {
            // A reload retargeted: the policy to go back to is the one
            // before the first.
            Some(r) => r.workers = workers.or(r.workers),
            None => self.reconfiguring = Some(Reconfiguring { before, workers }),
        }
        self.schedule_memory_check(now);
    }

    /// The reload completed: its worker count applies. Whether the count
    /// changed.
    pub(super) fn reconfigured(&mut self, now: Instant) -> bool {
        match self.reconfiguring.take().and_then(|r| r.workers) {
            Some(workers) if workers != self.slots.len() => {
                self.set_workers(workers, now);
                true
            }
            _ => false,
        }
    }

    /// The slot count a reload under way brings, if fewer than now: the
    /// slots it replaces.
    pub(super) fn fewer_workers(&self) -> Option<usize> {
        let workers = self.reconfiguring.as_ref()?.workers?;
        (workers < self.slots.len()).then_some(workers.max(1))
    }

    /// The reload aborted: the policy before it governs again.
    pub(super) fn not_reconfigured(&mut self) {
        if let Some(r) = self.reconfiguring.take() {
            self.policy = r.before;
        }
    }
}
