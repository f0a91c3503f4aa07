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
    pub ready: ReadyRule,
    pub ready_timeout: Duration,
    pub reload_batch: usize,
    pub watchdog: Option<Duration>,
}

/// When a started worker counts as Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyRule {
    /// As soon as exec succeeded.
    Exec,
    /// When the worker sends `READY=1` to `NOTIFY_SOCKET`.
    Notify,
    /// This long after exec succeeded (or at `READY=1`, if sooner).
    Delay(Duration),
}
