//! A rolling reload in progress, and how the last one ended.

use std::time::{Duration, Instant};

use super::event::Generation;

/// One plan at a time: a `HUP` during a reload raises `target` instead of
/// starting a second plan (einhorn's "bump the version and keep going").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    /// The generation before the plan began: workers above it are new.
    pub from: Generation,
    /// Every worker older than this is replaced.
    pub target: Generation,
    pub started: Instant,
}

/// How the most recent reload ended, for `rcluster status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Complete {
        generation: Generation,
        duration: Duration,
    },
    Aborted {
        generation: Generation,
        cause: String,
    },
}
