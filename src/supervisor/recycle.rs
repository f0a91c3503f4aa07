//! Recycling: a serving worker over `--max-memory`, or older than
//! `--max-age`, is replaced the way a reload replaces one (its successor
//! starts and is ready first, then it drains), one slot at a time: the
//! rules, and the supervisor's steps.

use std::time::{Duration, Instant};

use crate::vocab::{Pid, SlotId};

use super::record::Record;
use super::timers::Timer;
use super::{Failure, Phase, Supervisor};

pub use super::policy::RecyclePolicy;
pub use super::slot::RecycleReason;

/// A worker due for recycling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub reason: RecycleReason,
    /// Successors that failed to become ready so far.
    pub failed: u32,
}

/// How long slot `slot` of `slots` lives under `--max-age limit`: between
/// half the limit and the whole of it, slot by slot, each at random within
/// its own share, so that workers started together are recycled one by one
/// over half the limit, and none lives longer than the limit.
pub fn lifetime(limit: Duration, slot: SlotId, slots: usize, random: f64) -> Duration {
    let slots = slots.max(1) as f64;
    let share = (slot as f64).min(slots - 1.0) + random.clamp(0.0, 0.999_999);
    limit.mul_f64(1.0 - share / (2.0 * slots))
}

/// A small, fast generator (xorshift64*): the jitter needs spread, not
/// secrecy, and the supervisor stays deterministic under test.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Where the sequence stands, for a live upgrade to go on from.
    pub fn state(&self) -> u64 {
        self.0
    }

    pub fn resume(state: u64) -> Rng {
        Rng(state | 1)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Supervisor {
    pub(super) fn schedule_memory_check(&mut self, now: Instant) {
        if self.policy.recycle.max_memory.is_some() && self.memory_check_at.is_none() {
            let at = now + self.policy.recycle.memory_check;
            self.memory_check_at = Some(at);
            self.timers.change(Timer::MemoryCheck, None, Some(at));
        }
    }

    /// The answer to a memory check: workers over the limit are due.
    pub(super) fn on_memory(&mut self, rss: Vec<(Pid, u64)>) {
        let Some(limit) = self.policy.recycle.max_memory else {
            return;
        };
        for (pid, rss) in rss {
            if rss > limit {
                self.make_due(pid, RecycleReason::Memory { rss, limit });
            }
        }
    }

    /// Queues a serving worker for recycling (once).
    pub(super) fn make_due(&mut self, pid: Pid, reason: RecycleReason) {
        let serving = self
            .workers
            .get(&pid)
            .is_some_and(|w| w.state.is_ready() && w.state.is_attached());
        let queued = self.due.contains_key(&pid) || self.recycling.is_some_and(|(p, _)| p == pid);
        if serving && !queued && self.phase == Phase::Running {
            self.due.insert(pid, Due { reason, failed: 0 });
            if let Some(w) = self.workers.get(&pid) {
                self.dirty.insert(w.slot);
            }
        }
    }

    /// Starts the next recycle, if none is under way and no reload is: the
    /// worker's successor starts now, in the same slot; `retire_replaced`
    /// stops the worker once the successor is ready.
    pub(super) fn start_recycle(&mut self) {
        if self.recycling.is_some() || self.reload.is_some() {
            return;
        }
        let due: Vec<(Pid, Due)> = self.due.iter().map(|(&p, &d)| (p, d)).collect();
        for (pid, entry) in due {
            if self.replacing_paused && matches!(entry.reason, RecycleReason::Unhealthy { .. }) {
                continue;
            }
            let Some(worker) = self.workers.get(&pid) else {
                self.due.remove(&pid);
                continue;
            };
            if !(worker.state.is_ready() && worker.state.is_attached()) {
                self.due.remove(&pid);
                continue;
            }
            let slot = worker.slot;
            let s = &self.slots[slot];
            // A slot already replacing, or backing off after a failed
            // successor, waits.
            if s.attached.len() > 1 || s.spawning.is_some() || s.restart_at.is_some() {
                continue;
            }
            self.due.remove(&pid);
            self.recycling = Some((pid, entry.reason));
            self.failed_successors = entry.failed;
            self.log(Record::WorkerRecycled {
                slot,
                pid,
                reason: entry.reason,
            });
            self.spawn(slot, self.serving);
            self.refresh(slot);
            return;
        }
    }

    /// A worker failed: if it was a recycle's successor, the recycle waits
    /// and is tried again after a delay that grows with each failure; the
    /// worker it was to replace keeps serving.
    pub(super) fn recycle_failed(&mut self, failure: &Failure, now: Instant) {
        let Some((old, reason)) = self.recycling else {
            return;
        };
        let same_slot = self
            .workers
            .get(&old)
            .is_some_and(|w| w.slot == failure.slot);
        if !same_slot || failure.pid == Some(old) || failure.ready_for.is_some() {
            return;
        }
        self.recycling = None;
        let failed = self.failed_successors + 1;
        if matches!(reason, RecycleReason::Unhealthy { .. }) {
            // Another successor would fail the same way (`probe.rs`).
            self.pause_replacing(failure.slot, old);
        } else {
            self.due.insert(old, Due { reason, failed });
        }
        let delay = self.policy.restart_delay.after(failed);
        self.set_restart(failure.slot, Some(now + delay));
    }

    /// A worker exited: it is no longer due for recycling, nor timed, nor
    /// retiring.
    pub(super) fn forget_pending(&mut self, pid: Pid) {
        self.forget_health(pid);
        self.answers.remove(&pid);
        if let Some((at, _)) = self.retiring.remove(&pid) {
            self.timers.change(Timer::Retiring(pid), Some(at), None);
        }
        self.forget_recycling(pid);
    }

    /// A worker is on its way out: it is no longer due for recycling, nor
    /// timed.
    pub(super) fn forget_recycling(&mut self, pid: Pid) {
        self.due.remove(&pid);
        if let Some((at, _)) = self.age_limits.remove(&pid) {
            self.timers.change(Timer::Age(pid), Some(at), None);
        }
        if self.recycling.is_some_and(|(p, _)| p == pid) {
            self.recycling = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_spread_over_the_second_half_of_the_limit_slot_by_slot() {
        let limit = Duration::from_secs(3);
        let lives: Vec<Duration> = (0..4).map(|s| lifetime(limit, s, 4, 0.5)).collect();
        assert!(lives.iter().all(|l| *l <= limit && *l >= limit / 2));
        assert!(lives.windows(2).all(|w| w[0] > w[1]), "{lives:?}");
        // Whatever the random draw, slot 0 and slot 3 are 0.75 s apart at
        // least (3 s / (2 × 4) × 2 shares).
        let first = lifetime(limit, 0, 4, 0.0);
        let last = lifetime(limit, 3, 4, 0.999);
        assert!(
            first - last >= Duration::from_millis(749),
            "{first:?} {last:?}"
        );
    }

    #[test]
    fn the_generator_is_uniform_enough() {
        let mut rng = Rng::new(42);
        let draws: Vec<f64> = (0..10_000).map(|_| rng.next_f64()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
