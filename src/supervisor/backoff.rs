//! The restart policy for one slot: at once after a worker that stayed up,
//! exponential backoff after quick crashes, and `--max-restarts` accounting.

use std::time::Duration;

/// The first delay after a quick crash; each further quick crash doubles it.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// No delay grows past this, however long a slot crash-loops.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// What to do about a worker that ended without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Now,
    /// `attempt` counts the quick crashes in a row, starting at 1.
    After {
        delay: Duration,
        attempt: u32,
    },
    /// `--max-restarts` is used up: `crashes` quick crashes in a row.
    GiveUp {
        crashes: u32,
    },
}

/// Quick crashes in a row for one slot. A worker that lived `--min-uptime`
/// resets it: a service that crashes once a day is restarted at once, every
/// time, forever (the `forever` bug is giving up on it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    quick_crashes: u32,
}

impl Backoff {
    pub fn on_crash(
        &mut self,
        uptime: Duration,
        min_uptime: Duration,
        max_restarts: Option<u32>,
    ) -> Restart {
        if uptime >= min_uptime {
            self.quick_crashes = 0;
            return Restart::Now;
        }
        self.quick_crashes = self.quick_crashes.saturating_add(1);
        if max_restarts.is_some_and(|max| self.quick_crashes > max) {
            return Restart::GiveUp {
                crashes: self.quick_crashes,
            };
        }
        Restart::After {
            delay: delay_for(self.quick_crashes),
            attempt: self.quick_crashes,
        }
    }
}

/// 100 ms, 200 ms, 400 ms, … capped at 10 s.
fn delay_for(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN_UPTIME: Duration = Duration::from_secs(1);

    fn quick(b: &mut Backoff, max: Option<u32>) -> Restart {
        b.on_crash(Duration::from_millis(5), MIN_UPTIME, max)
    }

    #[test]
    fn delays_double_from_100ms_and_cap_at_10s() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..10)
            .map(|_| match quick(&mut b, None) {
                Restart::After { delay, .. } => delay.as_millis() as u64,
                other => panic!("expected a delay, got {other:?}"),
            })
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
    }

    #[test]
    fn a_worker_that_stayed_up_resets_the_count() {
        let mut b = Backoff::default();
        quick(&mut b, None);
        quick(&mut b, None);
        assert_eq!(b.on_crash(MIN_UPTIME, MIN_UPTIME, None), Restart::Now);
        assert_eq!(
            quick(&mut b, None),
            Restart::After {
                delay: FIRST_DELAY,
                attempt: 1
            }
        );
    }

    #[test]
    fn max_restarts_allows_that_many_restarts_then_gives_up() {
        let mut b = Backoff::default();
        for attempt in 1..=3 {
            assert!(
                matches!(quick(&mut b, Some(3)), Restart::After { attempt: a, .. } if a == attempt)
            );
        }
        assert_eq!(quick(&mut b, Some(3)), Restart::GiveUp { crashes: 4 });
    }

    #[test]
    fn never_gives_up_without_max_restarts() {
        let mut b = Backoff::default();
        for _ in 0..10_000 {
            assert!(matches!(quick(&mut b, None), Restart::After { .. }));
        }
    }
}
