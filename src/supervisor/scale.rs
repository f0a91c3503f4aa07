//! Scaling (`TTIN`, `TTOU`, `rcluster scale`) and, with a queue per slot
//! (`--balance reuseport`), where new connections go: each slot's proven
//! worker's lane, and a worker steered away from stops after a grace in
//! which it empties its queue.

use std::time::Instant;

use crate::vocab::{Lane, Pid, SlotId};

use super::Supervisor;
use super::event::Action;
use super::record::Record;
use super::slot::{Slot, SlotView, StopReason};
use super::timers::Timer;

impl Supervisor {
    /// Adds slots, or removes the highest ones (their workers drain).
    pub(super) fn set_workers(&mut self, workers: usize, now: Instant) {
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

    /// Stops a worker; with queues per slot, only after a grace in which
    /// it accepts what its queue still holds (new connections go elsewhere
    /// from now on).
    pub(super) fn retire(&mut self, pid: Pid, why: StopReason, now: Instant) {
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

    /// With queues per slot, tells the shell where new connections go once
    /// that changed: to each slot's proven worker's queue, or, with none,
    /// to every slot's last queue (which waits for its worker).
    pub(super) fn steer(&mut self) {
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
}
