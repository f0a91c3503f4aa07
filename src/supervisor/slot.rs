//! The master's record of its workers: [`Slot`] (a stable position with its
//! restart backoff) and [`Worker`] (one process, in one [`WorkerState`]).
//!
//! Not to be confused with [`crate::worker`], the library that runs *inside*
//! a worker process.

use std::time::{Duration, Instant};

use crate::vocab::{Exit, Generation, Pid, SlotId};

use super::backoff::Backoff;

/// A stable position `0..workers`. Its worker may come and go; the slot
/// remembers how often it crashed and when it may start the next one.
#[derive(Debug, Clone)]
pub struct Slot {
    pub backoff: Backoff,
    /// No worker is started for this slot before this instant (backoff).
    pub restart_at: Option<Instant>,
    /// A `Spawn` action is out (for this lane) and its `Spawned` answer
    /// not yet seen.
    pub spawning: Option<Lane>,
    /// Its attached workers (at most two: during a replacement, the old and
    /// the new). An index into the supervisor's workers, so that a decision
    /// about one slot never scans every worker.
    pub attached: Vec<Pid>,
    /// How many of its workers failed (each one restarted or given up on).
    pub restarts: u32,
    /// How its last worker ended, and that worker's generation: a new
    /// release's worker that failed is not the history of the older worker
    /// still serving in the slot.
    pub last_exit: Option<Exit>,
    pub last_exit_generation: Option<Generation>,
    /// The lane of the worker it was last steered to (`--balance
    /// reuseport`): a restart after a crash takes that queue again.
    pub lane: Lane,
    /// What the slot looked like when the supervisor last counted it (see
    /// [`SlotView`]).
    pub view: SlotView,
}

impl Slot {
    pub fn new() -> Slot {
        Slot {
            backoff: Backoff::default(),
            restart_at: None,
            spawning: None,
            attached: Vec::new(),
            restarts: 0,
            last_exit: None,
            last_exit_generation: None,
            lane: 0,
            view: SlotView::default(),
        }
    }

    /// No worker, and none on its way: a restart (now or after backoff) is due.
    pub fn is_empty(&self) -> bool {
        self.attached.is_empty() && self.spawning.is_none()
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
    /// The lane of its newest proven worker: where new connections go.
    pub steered: Option<Lane>,
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

pub use crate::vocab::Lane;

/// One worker process as the master sees it.
#[derive(Debug, Clone)]
pub struct Worker {
    pub pid: Pid,
    pub slot: SlotId,
    pub generation: Generation,
    pub lane: Lane,
    pub started: Instant,
    pub state: WorkerState,
    /// The errno the exec pipe carried, so the exit can say why.
    pub exec_error: Option<i32>,
    /// What made it ready, once it is.
    pub ready_by: Option<ReadyBy>,
    /// A look found it waiting on its listeners (before it was ready).
    pub seen_listening: bool,
    /// Its last `STATUS=`, when it was last logged, and how many changes
    /// were not logged since.
    pub status: Option<String>,
    pub status_logged: Option<Instant>,
    pub status_unlogged: u32,
    /// Draining, the shim said its last connection was closed
    /// ([`NotifyMsg::Drained`](crate::vocab::NotifyMsg::Drained)): its
    /// death by the stop signal that follows lost nothing.
    pub drained: bool,
}

/// What showed that a worker is ready: its own word, or the master's look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyBy {
    /// `READY=1`, sent by `sender` (the worker, or a helper it started:
    /// `systemd-notify`, `rcluster notify`).
    Notify { sender: Pid },
    /// `--ready auto`, a silent worker: it waits on its listeners (an
    /// epoll set, `accept`, `poll` or `select` on one of them).
    Listening,
    /// `--ready auto`, a silent worker whose waiting could not be seen
    /// (no listeners, or `/proc` hides it): alive for `--min-uptime`.
    Uptime,
    /// `--ready delay:DUR`.
    Delay,
    /// `--ready exec`.
    Exec,
}

impl ReadyBy {
    /// Its name in the JSON log and `rcluster status --json`.
    pub fn name(&self) -> &'static str {
        match self {
            ReadyBy::Notify { .. } => "READY=1",
            ReadyBy::Listening => "listening",
            ReadyBy::Uptime => "min-uptime",
            ReadyBy::Delay => "delay",
            ReadyBy::Exec => "exec",
        }
    }
}

/// What the master saw when it looked whether a booting worker serves
/// ([`Action::LookServing`](super::event::Action::LookServing)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// A process of its tree waits on one of its listeners.
    Yes,
    /// None does. `idle`: nothing of its tree ran since the last look
    /// either (every thread asleep, no CPU time used): it is not busy
    /// booting, it waits for something else.
    No { idle: bool },
    /// It cannot be told: no listeners, `/proc` unreadable, or a way of
    /// waiting the master cannot see into (io_uring).
    Unknown,
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
    /// Exec succeeded; waiting for `READY=1`, for `ready_at` (delay
    /// rule), or (`auto`) for a look at `look_at` to find it serving.
    Booting {
        ready_by: Instant,
        ready_at: Option<Instant>,
        look_at: Option<Instant>,
        /// Looks so far: the next one waits twice as long.
        looks: u32,
    },
    /// Serving. `watchdog_by` is when the next `WATCHDOG=1` is due;
    /// `hold_until`, for a reload's canary, when it has proven itself
    /// (`--min-ready`): the worker it replaces stops only then.
    Ready {
        since: Instant,
        watchdog_by: Option<Instant>,
        hold_until: Option<Instant>,
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

    /// Ready, and not a canary still proving itself.
    pub fn is_proven(&self) -> bool {
        matches!(
            self,
            WorkerState::Ready {
                hold_until: None,
                ..
            }
        )
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
            WorkerState::Booting {
                ready_by,
                ready_at,
                look_at,
                ..
            } => [ready_at, look_at]
                .into_iter()
                .flatten()
                .chain([ready_by])
                .min(),
            WorkerState::Ready {
                watchdog_by,
                hold_until,
                ..
            } => watchdog_by.into_iter().chain(hold_until).min(),
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
    /// A new worker of a reload, alive but idle and not waiting on its
    /// listeners after `--min-uptime`.
    NotServing,
    /// It said `STOPPING=1` on its own.
    WorkerStopping,
    /// Starting, or a canary holding, it failed `--probe-failures` probes
    /// in a row.
    ProbeFailed,
    /// A canary holding, it answered clearly more errors than the serving
    /// workers (`answers.rs`).
    ErrorRate,
    /// Its successor is ready; it was over `--max-memory` or `--max-age`.
    Recycled(RecycleReason),
}

/// Why a serving worker is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecycleReason {
    Memory {
        rss: u64,
        limit: u64,
    },
    Age {
        limit: Duration,
    },
    /// It failed this many probes in a row.
    Unhealthy {
        failures: u32,
    },
}

impl RecycleReason {
    /// Its label in `/metrics` and the JSON log.
    pub fn name(&self) -> &'static str {
        match self {
            RecycleReason::Memory { .. } => "memory",
            RecycleReason::Age { .. } => "age",
            RecycleReason::Unhealthy { .. } => "probe",
        }
    }
}
