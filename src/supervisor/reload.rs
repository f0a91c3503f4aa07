//! The rolling reload: the plan in progress ([`ReloadPlan`]) and its
//! canary, where each slot stands against its target ([`Progress`]), how
//! the last reload ended ([`ReloadOutcome`]), and the supervisor's steps:
//! start, replace a batch, retire what was replaced, abort, finish.
//!
//! `Progress` is updated one slot at a time, as each slot changes, so that
//! choosing the next slots to replace and noticing the end of the reload
//! cost the same with 8 workers as with 1024.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::vocab::{Generation, Pid, SlotId, human};

use super::backoff::Backoff;
use super::event::{Action, ManagerState};
use super::record::Record;
use super::slot::{SlotView, StopReason, Worker};
use super::{Failure, Supervisor};

/// One plan at a time: a `HUP` during a reload raises `target` instead of
/// starting a second plan (einhorn's "bump the version and keep going").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    /// The generation that served when the plan began: workers above it
    /// are new.
    pub from: Generation,
    /// Every worker older than this is replaced.
    pub target: Generation,
    pub started: Instant,
    pub canary: Canary,
}

/// A reload's first replacement runs alone, and the worker it replaces
/// stops only once it has stayed ready for `--min-ready` (Kubernetes'
/// `minReadySeconds`): a release that says `READY=1` and dies soon after
/// is caught before any old worker is touched. The rest of the roll then
/// goes a batch at a time, each worker trusted at its ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canary {
    /// Not started yet.
    Due,
    /// Started in `slot`; not proven yet.
    Holding { slot: SlotId },
    /// Proven (or there is no hold: `--min-ready 0`).
    Proven,
}

pub use super::event::ReloadOutcome;

/// Every slot sorted by where it stands against the target generation.
#[derive(Debug, Default)]
pub struct Progress {
    /// Serving with one ready worker older than the target: to replace.
    stale: BTreeSet<SlotId>,
    /// A replacement is under way: counts against `--reload-batch`.
    replacing: BTreeSet<SlotId>,
    /// How many slots serve with one ready worker at the target or above.
    settled: usize,
    /// Slots from this one on are left out: a reload to fewer workers
    /// does not replace those it will drain once complete (their old
    /// workers serve until then).
    limit: Option<SlotId>,
}

impl Progress {
    /// Moves `slot` from where `old` put it to where `new` puts it.
    pub fn update(&mut self, slot: SlotId, old: SlotView, new: SlotView, target: Generation) {
        if self.limit.is_some_and(|limit| slot >= limit) {
            return;
        }
        self.remove(slot, old, target);
        self.add(slot, new, target);
    }

    /// Sorts every slot below `limit` anew: the target changed.
    pub fn rebuild(
        &mut self,
        views: impl Iterator<Item = SlotView>,
        target: Generation,
        limit: Option<SlotId>,
    ) {
        *self = Progress {
            limit,
            ..Progress::default()
        };
        for (slot, view) in views.take(limit.unwrap_or(usize::MAX)).enumerate() {
            self.add(slot, view, target);
        }
    }

    fn add(&mut self, slot: SlotId, view: SlotView, target: Generation) {
        match view.settled() {
            Some(generation) if generation >= target => self.settled += 1,
            Some(_) => {
                self.stale.insert(slot);
            }
            None => {}
        }
        if view.replacing() {
            self.replacing.insert(slot);
        }
    }

    fn remove(&mut self, slot: SlotId, view: SlotView, target: Generation) {
        match view.settled() {
            Some(generation) if generation >= target => self.settled -= 1,
            Some(_) => {
                self.stale.remove(&slot);
            }
            None => {}
        }
        if view.replacing() {
            self.replacing.remove(&slot);
        }
    }

    /// Every one of `slots` (below the limit) serves at the target.
    pub fn is_complete(&self, slots: usize) -> bool {
        self.settled == slots.min(self.limit.unwrap_or(usize::MAX))
    }

    /// The next slot to replace, lowest first, if the batch has room.
    pub fn next_to_replace(&self, batch: usize) -> Option<SlotId> {
        if self.replacing.len() >= batch {
            return None;
        }
        self.stale.first().copied()
    }

    /// The slots with a replacement under way.
    pub fn replacing(&self) -> impl Iterator<Item = SlotId> + '_ {
        self.replacing.iter().copied()
    }
}

impl Supervisor {
    pub(super) fn start_reload(&mut self, now: Instant) {
        self.apply_staged(now);
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
        let limit = self.fewer_workers();
        self.progress
            .rebuild(self.slots.iter().map(|s| s.view), generation, limit);
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
                    from: self.serving,
                    target: generation,
                    started: now,
                    canary,
                });
                self.log(Record::ReloadStarted {
                    generation,
                    workers: limit.unwrap_or(self.slots.len()),
                });
                self.actions
                    .push(Action::NotifyManager(ManagerState::Reloading));
            }
        }
    }

    /// Starts replacements, `--reload-batch` slots at a time, and notices
    /// when every slot has a ready worker of the target generation.
    pub(super) fn advance_reload(&mut self, now: Instant) {
        let Some(plan) = self.reload.clone() else {
            return;
        };
        if self.progress.is_complete(self.slots.len()) {
            self.reload = None;
            self.serving = plan.target;
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
            self.spawn(slot, plan.target);
            self.refresh(slot);
        }
    }

    /// Once a slot's newest worker is ready (and, if it is a canary, has
    /// proven itself), the older ones in that slot drain.
    pub(super) fn retire_replaced(&mut self, slot: SlotId, now: Instant) {
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

    /// Whether `worker` is one a reload in progress started.
    pub(super) fn is_new_in_reload(&self, worker: &Worker) -> bool {
        self.reload
            .as_ref()
            .is_some_and(|plan| worker.generation > plan.from)
    }

    /// A canary's hold is over: the reload may stop old workers now.
    pub(super) fn proven(&mut self, worker: &Worker) {
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
    pub(super) fn reload_batch(&self) -> usize {
        self.policy
            .reload_batch
            .unwrap_or(self.slots.len().div_ceil(4))
            .max(1)
    }

    /// A new worker failed: stop the reload where it is. Replacements that
    /// are not ready yet, or not proven, are stopped; every old worker
    /// keeps serving.
    pub(super) fn abort_reload(&mut self, failure: &Failure, now: Instant) {
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
        self.not_reconfigured();
    }

    pub(super) fn finish_reload(&mut self, outcome: ReloadOutcome) {
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
    pub(super) fn serving_text(&self) -> String {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(workers: usize, ready: Option<Generation>) -> SlotView {
        SlotView {
            workers,
            ready,
            steered: None,
        }
    }

    #[test]
    fn slots_are_stale_replacing_or_settled() {
        let mut p = Progress::default();
        p.rebuild(
            [view(1, Some(1)), view(1, Some(1)), view(2, Some(1))].into_iter(),
            2,
            None,
        );
        assert_eq!(p.next_to_replace(2), Some(0));
        assert_eq!(p.next_to_replace(1), None, "the batch is full");
        p.update(2, view(2, Some(1)), view(1, Some(2)), 2);
        assert_eq!(p.next_to_replace(1), Some(0));
        assert!(!p.is_complete(3));
        p.update(0, view(1, Some(1)), view(1, Some(2)), 2);
        p.update(1, view(1, Some(1)), view(1, Some(2)), 2);
        assert!(p.is_complete(3));
        assert_eq!(p.next_to_replace(1), None);
    }
}
