//! What the supervisor decides with, fixed at start-up: the part of the
//! configuration that is policy ([`Policy`]), and when a worker counts as
//! ready ([`ReadyRule`]).

use std::time::Duration;

/// Everything the core needs to know about policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub workers: usize,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub min_uptime: Duration,
    pub max_restarts: Option<u32>,
    pub restart_delay: RestartDelay,
    pub ready: ReadyRule,
    pub ready_timeout: Duration,
    /// How long a reload's first new worker (its canary) must stay ready
    /// before any old worker stops (`--min-ready`); zero: no canary.
    pub min_ready: Duration,
    /// How many slots a reload replaces at a time once its canary proved
    /// itself; `None`: a quarter of the workers (at least one).
    pub reload_batch: Option<usize>,
    pub watchdog: Option<Duration>,
    pub recycle: RecyclePolicy,
    /// `Some` when each slot has a queue of its own (`--balance reuseport`).
    pub balance: Option<Balance>,
    /// `--probe`: HTTP probes judge readiness and liveness.
    pub probe: Option<ProbePolicy>,
}

/// Slots with queues of their own: the shell is told where to steer new
/// connections ([`Action::Steer`](super::event::Action::Steer)) whenever
/// the slots with a proven worker change. Each slot has two queues
/// (lanes): a replacement starts on the one its predecessor does not use,
/// and gets new connections only once it is proven; a worker steered away
/// from (replaced, or its slot scaled away) stops after a grace in which it
/// accepts what its queue still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// How long a worker steered away from goes on accepting (emptying its
    /// queue) before it gets its stop signal.
    pub retire_grace: Duration,
}

/// When a started worker counts as Ready: what a reload waits for before
/// it stops the old worker, and what a crash counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyRule {
    /// `READY=1`, or, for a server that says nothing, once it has stayed
    /// alive for `--min-uptime`: whichever comes first. A release that
    /// crashes at start never replaces a good one (the default).
    Auto,
    /// As soon as exec succeeded: protects only against a command that
    /// cannot run at all.
    Exec,
    /// When the worker sends `READY=1` to `NOTIFY_SOCKET`, however long
    /// it takes (up to `--ready-timeout`).
    Notify,
    /// This long after exec succeeded (or at `READY=1`, if sooner).
    Delay(Duration),
}

/// How long a slot waits before restarting after quick crashes: `first`
/// after the first, doubling with each one in a row, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartDelay {
    pub first: Duration,
    pub max: Duration,
}

impl Default for RestartDelay {
    fn default() -> RestartDelay {
        RestartDelay {
            first: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl RestartDelay {
    /// The delay after `attempt` quick crashes in a row (1 for the first).
    pub fn after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.first
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max)
    }
}

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

/// `--probe` and its settings, named as Kubernetes names a probe's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePolicy {
    /// The request's path (`/healthz`).
    pub path: String,
    /// How often a proven worker is probed (`periodSeconds`).
    pub period: Duration,
    /// How long an answer may take (`timeoutSeconds`).
    pub timeout: Duration,
    /// Failures in a row that fail a worker (`failureThreshold`).
    pub failures: u32,
}
