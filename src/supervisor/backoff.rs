//! The restart policy for one slot: at once after a worker that stayed up,
//! exponential backoff after quick crashes (`--restart-delay`, 100 ms
//! doubling up to 10 s), and `--max-restarts` accounting.

use std::time::Duration;

use super::policy::Policy;

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

/// Quick crashes in a row for one slot. A worker that had been ready for
/// `--min-uptime` resets it: a service that crashes once a day is restarted
/// at once, every time, forever (the `forever` bug is giving up on it).
/// The time counts from Ready, not from start: an app that boots for a
/// minute and then dies at once is a crash loop all the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    quick_crashes: u32,
}

impl Backoff {
    /// A slot's count as another image of the master left it.
    pub fn resume(quick_crashes: u32) -> Backoff {
        Backoff { quick_crashes }
    }

    pub fn quick_crashes(&self) -> u32 {
        self.quick_crashes
    }

    /// `ready_for`: how long the worker had been ready (`None`: never).
    pub fn on_crash(&mut self, ready_for: Option<Duration>, policy: &Policy) -> Restart {
        if ready_for.is_some_and(|ready| ready >= policy.min_uptime) {
            self.quick_crashes = 0;
            return Restart::Now;
        }
        self.quick_crashes = self.quick_crashes.saturating_add(1);
        if policy
            .max_restarts
            .is_some_and(|max| self.quick_crashes > max)
        {
            return Restart::GiveUp {
                crashes: self.quick_crashes,
            };
        }
        Restart::After {
            delay: policy.restart_delay.after(self.quick_crashes),
            attempt: self.quick_crashes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::policy::{ReadyRule, RestartDelay};

    const MIN_UPTIME: Duration = Duration::from_secs(1);

    fn policy(max_restarts: Option<u32>) -> Policy {
        Policy {
            workers: 1,
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(30),
            min_uptime: MIN_UPTIME,
            max_restarts,
            restart_delay: RestartDelay::default(),
            ready: ReadyRule::Auto,
            ready_timeout: Duration::from_secs(60),
            min_ready: Duration::ZERO,
            reload_batch: Some(1),
            watchdog: None,
            recycle: Default::default(),
            balance: None,
            probe: None,
        }
    }

    fn quick(b: &mut Backoff, max: Option<u32>) -> Restart {
        b.on_crash(Some(Duration::from_millis(5)), &policy(max))
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
    fn restart_delay_sets_the_first_delay_and_the_cap() {
        let delay = RestartDelay {
            first: Duration::from_secs(1),
            max: Duration::from_secs(5),
        };
        let secs: Vec<u64> = (1..=5).map(|a| delay.after(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 5, 5]);
        assert_eq!(delay.after(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn a_worker_that_stayed_up_resets_the_count() {
        let mut b = Backoff::default();
        quick(&mut b, None);
        quick(&mut b, None);
        assert_eq!(b.on_crash(Some(MIN_UPTIME), &policy(None)), Restart::Now);
        assert_eq!(
            quick(&mut b, None),
            Restart::After {
                delay: Duration::from_millis(100),
                attempt: 1
            }
        );
    }

    #[test]
    fn a_worker_that_was_never_ready_crashed_quickly_however_long_it_ran() {
        let mut b = Backoff::default();
        assert!(matches!(
            b.on_crash(None, &policy(None)),
            Restart::After { attempt: 1, .. }
        ));
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
