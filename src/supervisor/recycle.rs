//! Recycling: a serving worker over `--max-memory`, or older than
//! `--max-age`, is replaced the way a reload replaces one (its successor
//! starts and is ready first, then it drains), one slot at a time. This
//! file holds the rules; `mod.rs` carries them out.

use std::time::Duration;

use crate::vocab::SlotId;

/// What recycling is set to (`--max-memory`, `--max-age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecyclePolicy {
    /// Resident bytes of a worker's process tree.
    pub max_memory: Option<u64>,
    pub max_age: Option<Duration>,
    /// How often memory is looked at, when `max_memory` is set.
    pub memory_check: Duration,
    /// Seeds the age jitter (the shell passes a random one; tests a fixed one).
    pub seed: u64,
}

/// Why a serving worker is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecycleReason {
    Memory { rss: u64, limit: u64 },
    Age { limit: Duration },
}

impl RecycleReason {
    /// Its label in `/metrics` and the JSON log.
    pub fn name(&self) -> &'static str {
        match self {
            RecycleReason::Memory { .. } => "memory",
            RecycleReason::Age { .. } => "age",
        }
    }
}

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

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
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
