//! The responses the shim counts in each worker (`--http-drain`,
//! `--adopt-bind`: `X_RCLUSTER_RESPONSES`), and the rule by which a
//! reload's canary that answers clearly more errors than the workers it is
//! to replace fails its hold, as Argo Rollouts and Flagger judge a canary.
//!
//! From its start until it is proven (its hold, `--min-ready`, over), the
//! canary's 5xx share is compared with the serving workers' over the same
//! time (from the first report after the canary started; before the
//! serving workers answered any since, their share over their lives). It fails when it answered at
//! least [`MIN_ERRORS`] 5xx, and its share exceeds theirs by more than
//! [`MARGIN`] and by more than three standard errors of their share at the
//! canary's count: a few unlucky errors do not fail it, and neither does a
//! share the serving workers have too (an endpoint that fails in every
//! release).

use std::collections::BTreeMap;
use std::time::Instant;

use crate::vocab::{Pid, Responses};

use super::Failure;
use super::Supervisor;
use super::reload::Canary;
use super::slot::{StopReason, Worker};

/// The fewest 5xx answers that can fail a canary.
pub const MIN_ERRORS: u64 = 5;

/// By how much (a share, 0-1) the canary's 5xx share must exceed the
/// serving workers' at least.
pub const MARGIN: f64 = 0.05;

/// The canary being judged, and each serving worker's counts at the first
/// report after it started.
#[derive(Debug, Clone)]
pub struct Baseline {
    canary: Pid,
    serving: BTreeMap<Pid, Responses>,
}

/// (5xx answers, all answers).
fn errors(r: &Responses) -> (u64, u64) {
    (r[4], r.iter().sum())
}

/// The rule: whether `canary` (5xx, all) is clearly worse than `serving`.
pub fn clearly_worse(canary: (u64, u64), serving: (u64, u64)) -> bool {
    let ((errors, total), (base_errors, base_total)) = (canary, serving);
    if errors < MIN_ERRORS || total == 0 {
        return false;
    }
    let share = errors as f64 / total as f64;
    let base = if base_total == 0 {
        0.0
    } else {
        base_errors as f64 / base_total as f64
    };
    let standard_error = (base * (1.0 - base) / total as f64).sqrt();
    share > base + MARGIN.max(3.0 * standard_error)
}

fn percent(errors: u64, total: u64) -> String {
    format!(
        "{errors} of {total} ({:.0}%)",
        100.0 * errors as f64 / total.max(1) as f64
    )
}

impl Supervisor {
    /// A worker's shim reported its counts (totals since it started).
    pub(super) fn on_responses(&mut self, pid: Pid, counts: Responses, now: Instant) {
        if self.workers.contains_key(&pid) {
            self.answers.insert(pid, counts);
            self.judge_canary(pid, now);
        }
    }

    /// The reload's canary, from its start until it is proven.
    fn canary(&self) -> Option<&Worker> {
        let plan = self.reload.as_ref()?;
        let Canary::Holding { slot } = plan.canary else {
            return None;
        };
        self.attached(slot)
            .find(|w| w.generation > plan.from && !w.state.is_proven())
    }

    /// Compares the canary's answers with the serving workers' since the
    /// first report of the reload (theirs over their lives until they have
    /// answered any since), when the canary reports: a report of another
    /// worker only counts, so a reload under load costs no more than the
    /// canary's reports.
    fn judge_canary(&mut self, reporter: Pid, now: Instant) {
        let Some(worker) = self.canary().cloned() else {
            self.baseline = None;
            return;
        };
        let canary = worker.pid;
        if self.baseline.as_ref().is_none_or(|b| b.canary != canary) {
            let serving = self
                .workers
                .values()
                .filter(|w| w.generation < worker.generation && w.state.is_ready())
                .map(|w| (w.pid, self.answers.get(&w.pid).copied().unwrap_or_default()))
                .collect();
            self.baseline = Some(Baseline { canary, serving });
        }
        let Some(baseline) = self.baseline.as_ref().filter(|_| reporter == canary) else {
            return;
        };
        let (mut meanwhile, mut lifetime) = ((0, 0), (0, 0));
        for (pid, before) in &baseline.serving {
            let (e0, n0) = errors(before);
            let (e1, n1) = errors(&self.answers.get(pid).copied().unwrap_or_default());
            meanwhile.0 += e1.saturating_sub(e0);
            meanwhile.1 += n1.saturating_sub(n0);
            lifetime.0 += e1;
            lifetime.1 += n1;
        }
        let serving = if meanwhile.1 > 0 { meanwhile } else { lifetime };
        let ours = errors(&self.answers.get(&canary).copied().unwrap_or_default());
        if !clearly_worse(ours, serving) {
            return;
        }
        self.baseline = None;
        self.stop(canary, StopReason::ErrorRate, now);
        let cause = format!(
            "answered 5xx to {} of its requests, against {} for the serving workers",
            percent(ours.0, ours.1),
            percent(serving.0, serving.1)
        );
        let failure = Failure {
            slot: worker.slot,
            generation: worker.generation,
            pid: Some(canary),
            ready_for: worker.state.ready_for(now),
            cause,
        };
        self.on_failure(failure, now);
    }

    /// A worker's counts, for `status` and `/metrics`.
    pub fn responses(&self, pid: Pid) -> Option<&Responses> {
        self.answers.get(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_is_clearly_worse_only_with_enough_errors_beyond_the_serving_share() {
        // Every answer an error, but too few to tell.
        assert!(!clearly_worse((4, 4), (0, 1000)));
        assert!(clearly_worse((5, 5), (0, 1000)));
        // Nothing to compare with: judged against none.
        assert!(clearly_worse((5, 10), (0, 0)));
        // The serving workers fail as much: not the release's fault.
        assert!(!clearly_worse((30, 100), (300, 1000)));
        // A little worse, within the margin.
        assert!(!clearly_worse((8, 100), (40, 1000)));
        // Clearly worse, with many requests.
        assert!(clearly_worse((200, 1000), (100, 10_000)));
        // With few, the standard error widens the margin: 5 of 20 (25%)
        // against 10% is within 3 standard errors (20 points).
        assert!(!clearly_worse((5, 20), (100, 1000)));
        assert!(clearly_worse((10, 20), (100, 1000)));
    }
}
