//! The rolling reload: the plan in progress ([`ReloadPlan`]), where each
//! slot stands against its target ([`Progress`]), and how the last reload
//! ended ([`ReloadOutcome`]).
//!
//! `Progress` is updated one slot at a time, as each slot changes, so that
//! choosing the next slots to replace and noticing the end of the reload
//! cost the same with 8 workers as with 1024.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::vocab::{Generation, SlotId};

use super::slot::SlotView;

/// One plan at a time: a `HUP` during a reload raises `target` instead of
/// starting a second plan (einhorn's "bump the version and keep going").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    /// The generation before the plan began: workers above it are new.
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

/// How a reload ended, for `rcluster status` and `reload --wait`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Complete {
        generation: Generation,
        duration: Duration,
    },
    /// A new worker failed; `cause` says how ("exited with code 1 after
    /// 5ms").
    Aborted {
        generation: Generation,
        cause: String,
    },
    /// The master began to stop before the reload was done.
    Interrupted { generation: Generation },
}

/// Every slot sorted by where it stands against the target generation.
#[derive(Debug, Default)]
pub struct Progress {
    /// Serving with one ready worker older than the target: to replace.
    stale: BTreeSet<SlotId>,
    /// A replacement is under way: counts against `--reload-batch`.
    replacing: BTreeSet<SlotId>,
    /// How many slots serve with one ready worker at the target or above.
    settled: usize,
}

impl Progress {
    /// Moves `slot` from where `old` put it to where `new` puts it.
    pub fn update(&mut self, slot: SlotId, old: SlotView, new: SlotView, target: Generation) {
        self.remove(slot, old, target);
        self.add(slot, new, target);
    }

    /// Sorts every slot anew: the target changed.
    pub fn rebuild(&mut self, views: impl Iterator<Item = SlotView>, target: Generation) {
        *self = Progress::default();
        for (slot, view) in views.enumerate() {
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

    /// Every one of `slots` serves at the target.
    pub fn is_complete(&self, slots: usize) -> bool {
        self.settled == slots
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
