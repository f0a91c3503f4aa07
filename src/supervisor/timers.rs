//! The supervisor's deadlines, kept in order: a worker's next change of
//! state by itself (ready after a delay, not ready in time, watchdog missed,
//! stop timeout) and a slot's restart after backoff.
//!
//! The next deadline is the first entry, and the due ones come off the
//! front, so neither the poll timeout nor a wakeup looks at every worker.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::vocab::{Pid, SlotId};

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// The worker's state has a deadline (see `WorkerState::deadline`).
    Worker(Pid),
    /// The slot may start its next worker (`Slot::restart_at`).
    Restart(SlotId),
    /// What is left of an exited worker's process group is killed.
    Group(Pid),
    /// A process a worker left behind is killed.
    Stray(Pid),
    /// The exited workers not yet searched for are searched for what they
    /// left behind (`Supervisor::stray_search`).
    StraySearch,
    /// A ready worker reaches its `--max-age`.
    Age(Pid),
    /// The worker's next probe is sent (`--probe`).
    Probe(Pid),
    /// The workers' memory is looked at (`--max-memory`).
    MemoryCheck,
    /// A worker steered away from (its slot scaled away, or its successor
    /// proven) stops (`Balance::retire_grace`).
    Retiring(Pid),
}

#[derive(Debug, Default)]
pub struct Timers {
    set: BTreeSet<(Instant, Timer)>,
}

impl Timers {
    /// Moves `timer` from its `old` deadline to its `new` one (either may be
    /// none). The caller passes the deadline it had set before, which keeps
    /// this one lookup instead of a search for the timer.
    pub fn change(&mut self, timer: Timer, old: Option<Instant>, new: Option<Instant>) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            self.set.remove(&(old, timer));
        }
        if let Some(new) = new {
            self.set.insert((new, timer));
        }
    }

    pub fn next(&self) -> Option<Instant> {
        self.set.first().map(|&(at, _)| at)
    }

    /// Removes and returns every timer due at `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        let mut due = Vec::new();
        while let Some(&(at, timer)) = self.set.first() {
            if at > now {
                break;
            }
            self.set.pop_first();
            due.push(timer);
        }
        due
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.set.len()
    }
}
