//! The master's record of its workers: [`Slot`] (a stable position with its
//! restart backoff) and [`Worker`] (one process, in one [`WorkerState`]).
//!
//! Not to be confused with [`crate::worker`], the library that runs *inside*
//! a worker process.

use std::time::{Duration, Instant};

use crate::vocab::{Exit, Generation, Pid, SlotId};

use super::backoff::Backoff;
use super::recycle::RecycleReason;

/// A stable position `0..workers`. Its worker may come and go; the slot
/// remembers how often it crashed and when it may start the next one.
#[derive(Debug, Clone)]
pub struct Slot {
    pub backoff: Backoff,
    /// No worker is started for this slot before this instant (backoff).
    pub restart_at: Option<Instant>,
    /// A `Spawn` action is out and its `Spawned` answer not yet seen.
    pub spawning: bool,
    /// Its attached workers (at most two: during a replacement, the old and
    /// the new). An index into the supervisor's workers, so that a decision
    /// about one slot never scans every worker.
    pub attached: Vec<Pid>,
    /// How many of its workers failed (each one restarted or given up on).
    pub restarts: u32,
    /// How its last worker ended.
    pub last_exit: Option<Exit>,
    /// What the slot looked like when the supervisor last counted it (see
    /// [`SlotView`]).
    pub view: SlotView,
}

impl Slot {
    pub fn new() -> Slot {
        Slot {
            backoff: Backoff::default(),
            restart_at: None,
            spawning: false,
            attached: Vec::new(),
            restarts: 0,
            last_exit: None,
            view: SlotView::default(),
        }
    }

    /// No worker, and none on its way: a restart (now or after backoff) is due.
    pub fn is_empty(&self) -> bool {
        self.attached.is_empty() && !self.spawning
    }
}

/// A slot reduced to what the reload and the readiness count depend on.
/// The supervisor keeps one per slot and updates its counts when it
/// changes, so no decision has to look at every slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotView {
    /// Attached workers, plus one if a spawn is in flight.
    pub workers: usize,
    /// The generation of its newest ready worker, if one is ready.
    pub ready: Option<Generation>,
}

impl SlotView {
    /// The generation it serves with exactly one ready worker: a slot that
    /// is neither starting nor being replaced.
    pub fn settled(&self) -> Option<Generation> {
        if self.workers == 1 { self.ready } else { None }
    }

    /// A replacement is under way (an old worker and a new one).
    pub fn replacing(&self) -> bool {
        self.workers > 1
    }
}

/// One worker process as the master sees it.
#[derive(Debug, Clone)]
pub struct Worker {
    pub pid: Pid,
    pub slot: SlotId,
    pub generation: Generation,
    pub started: Instant,
    pub state: WorkerState,
    /// The errno the exec pipe carried, so the exit can say why.
    pub exec_error: Option<i32>,
}

/// Where a worker is in its life. A worker leaves the map when it is reaped,
/// from whichever state it was in. The table of states and events is in the
/// [supervisor's docs](super).
///
/// `Spawned`, `Booting` and `Ready` workers are *attached* to their slot:
/// they are what the slot has. `Leaving`, `Draining` and `Killed` workers
/// are detached (nginx's "exiting"), so the slot's replacement can start
/// and serve while they finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Forked; exec not yet confirmed.
    Spawned { ready_by: Instant },
    /// Exec succeeded; waiting for `READY=1` or for `ready_at` (delay rule).
    Booting {
        ready_by: Instant,
        ready_at: Option<Instant>,
    },
    /// Serving. `watchdog_by` is when the next `WATCHDOG=1` is due.
    Ready {
        since: Instant,
        watchdog_by: Option<Instant>,
    },
    /// Said `STOPPING=1` on its own: detached, not sent a signal yet (a
    /// shutdown sends it one); `SIGKILL` at `kill_at` if still running.
    Leaving { kill_at: Instant },
    /// Sent its stop signal; `SIGKILL` at `kill_at` if still running.
    Draining { kill_at: Instant, why: StopReason },
    /// Its process group was sent `SIGKILL`; waiting to reap it.
    Killed { why: StopReason },
}

impl WorkerState {
    pub fn is_attached(&self) -> bool {
        match self {
            WorkerState::Spawned { .. }
            | WorkerState::Booting { .. }
            | WorkerState::Ready { .. } => true,
            WorkerState::Leaving { .. }
            | WorkerState::Draining { .. }
            | WorkerState::Killed { .. } => false,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, WorkerState::Ready { .. })
    }

    /// What `rcluster status` calls this state.
    pub fn name(&self) -> &'static str {
        match self {
            WorkerState::Spawned { .. } | WorkerState::Booting { .. } => "starting",
            WorkerState::Ready { .. } => "ready",
            WorkerState::Leaving { .. } | WorkerState::Draining { .. } => "draining",
            WorkerState::Killed { .. } => "killed",
        }
    }

    /// How long it has been ready at `now`, if it is.
    pub fn ready_for(&self, now: Instant) -> Option<Duration> {
        match *self {
            WorkerState::Ready { since, .. } => Some(now.saturating_duration_since(since)),
            WorkerState::Spawned { .. }
            | WorkerState::Booting { .. }
            | WorkerState::Leaving { .. }
            | WorkerState::Draining { .. }
            | WorkerState::Killed { .. } => None,
        }
    }

    /// The next instant at which this state changes by itself.
    pub fn deadline(&self) -> Option<Instant> {
        match *self {
            WorkerState::Spawned { ready_by } => Some(ready_by),
            WorkerState::Booting { ready_by, ready_at } => {
                Some(ready_at.map_or(ready_by, |at| at.min(ready_by)))
            }
            WorkerState::Ready { watchdog_by, .. } => watchdog_by,
            WorkerState::Leaving { kill_at } | WorkerState::Draining { kill_at, .. } => {
                Some(kill_at)
            }
            WorkerState::Killed { .. } => None,
        }
    }
}

/// Why the master stopped a worker; its exit log says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A reload replaced it with a worker of this generation.
    Replaced {
        by: Generation,
    },
    ScaledDown,
    Shutdown,
    /// A reload was aborted while this (new, not yet ready) worker started.
    ReloadAborted,
    /// It sent no `WATCHDOG=1` for this long.
    Watchdog {
        timeout: Duration,
    },
    /// It was not ready within `--ready-timeout`.
    NotReady {
        timeout: Duration,
    },
    /// It said `STOPPING=1` on its own.
    WorkerStopping,
    /// Its successor is ready; it was over `--max-memory` or `--max-age`.
    Recycled(RecycleReason),
}
