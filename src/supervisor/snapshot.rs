//! The supervisor written down for a live upgrade (`rcluster upgrade`):
//! what a new image of the master needs to go on where the old one stopped.
//!
//! Only a *quiet* supervisor is written down: running, no reload, no
//! recycling, every worker ready and proven, nothing being stopped. Its
//! state is then small and has no half-done step (a spawn whose answer
//! is out, a drain with a kill deadline) that a new image would have to
//! take over mid-way; the upgrade waits for that moment instead (sozu's
//! lesson: the master first, while nothing moves). Instants become
//! durations relative to the moment of writing, since an `Instant` means
//! nothing to another image.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::vocab::{Exit, Generation, Lane, Pid, SlotId};

use super::backoff::Backoff;
use super::policy::Policy;
use super::recycle::Rng;
use super::reload::ReloadOutcome;
use super::slot::{ReadyBy, Slot, Worker, WorkerState};
use super::timers::Timer;
use super::{Phase, Supervisor};

/// A quiet supervisor. Durations are in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub target: Generation,
    pub serving: Generation,
    pub last_reload: Option<LastReload>,
    /// Since the first `Start`.
    pub started_ago_us: u64,
    pub announced_ready: bool,
    pub listeners_checked: Generation,
    pub ever_started: bool,
    pub speaks_ready: bool,
    pub rng: u64,
    pub slots: Vec<SlotSnapshot>,
    pub workers: Vec<WorkerSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotSnapshot {
    pub quick_crashes: u32,
    /// A restart waiting out its backoff: due in this long.
    pub restart_in_us: Option<u64>,
    pub restarts: u32,
    pub last_exit: Option<Exit>,
    /// Absent in a hand-over from an rcluster before it was kept, and left
    /// out when unknown: still format 1 (a reader of format 1 ignores a
    /// field it does not know, and loses only which row shows the exit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_generation: Option<Generation>,
    pub lane: Lane,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    pub pid: i32,
    pub slot: SlotId,
    pub generation: Generation,
    pub lane: Lane,
    pub started_ago_us: u64,
    pub ready_ago_us: u64,
    pub watchdog_in_us: Option<u64>,
    /// `ReadyBy::name()`, and the sender of `READY=1`.
    pub ready_by: String,
    pub ready_sender: Option<i32>,
    pub seen_listening: bool,
    pub status: Option<String>,
    /// `--max-age`: due in this long, and the limit it was given.
    pub age_limit_us: Option<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LastReload {
    Complete {
        generation: Generation,
        duration_us: u64,
    },
    Aborted {
        generation: Generation,
        cause: String,
    },
    Interrupted {
        generation: Generation,
    },
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn from_us(us: u64) -> Duration {
    Duration::from_micros(us)
}

impl Supervisor {
    /// Why this supervisor cannot be written down now, if it cannot: what
    /// the upgrade waits for.
    pub fn busy(&self) -> Option<&'static str> {
        if self.phase != Phase::Running {
            return Some("the master is stopping");
        }
        if self.reload.is_some() {
            return Some("a reload is in progress");
        }
        if self.recycling.is_some() || !self.due.is_empty() || !self.retiring.is_empty() {
            return Some("a worker is being recycled");
        }
        if self.spawns_in_flight > 0 || self.workers.values().any(|w| !w.state.is_proven()) {
            return Some("a worker is starting or stopping");
        }
        if !self.groups.is_empty() || !self.strays.is_empty() {
            return Some("processes a worker left are being stopped");
        }
        None
    }

    /// The supervisor as it is at `now`, if it is quiet.
    pub fn snapshot(&self, now: Instant) -> Result<Snapshot, &'static str> {
        if let Some(busy) = self.busy() {
            return Err(busy);
        }
        let ago = |t: Instant| us(now.saturating_duration_since(t));
        let until = |t: Instant| us(t.saturating_duration_since(now));
        let slots = self
            .slots
            .iter()
            .map(|s| SlotSnapshot {
                quick_crashes: s.backoff.quick_crashes(),
                restart_in_us: s.restart_at.map(until),
                restarts: s.restarts,
                last_exit: s.last_exit,
                last_exit_generation: s.last_exit_generation,
                lane: s.lane,
            })
            .collect();
        let workers = self
            .workers
            .values()
            .map(|w| {
                let WorkerState::Ready {
                    since, watchdog_by, ..
                } = w.state
                else {
                    unreachable!("a quiet supervisor's workers are ready");
                };
                let ready_by = w.ready_by.unwrap_or(ReadyBy::Uptime);
                WorkerSnapshot {
                    pid: w.pid.as_raw(),
                    slot: w.slot,
                    generation: w.generation,
                    lane: w.lane,
                    started_ago_us: ago(w.started),
                    ready_ago_us: ago(since),
                    watchdog_in_us: watchdog_by.map(until),
                    ready_by: ready_by.name().to_string(),
                    ready_sender: match ready_by {
                        ReadyBy::Notify { sender } => Some(sender.as_raw()),
                        _ => None,
                    },
                    seen_listening: w.seen_listening,
                    status: w.status.clone(),
                    age_limit_us: self
                        .age_limits
                        .get(&w.pid)
                        .map(|&(at, limit)| (until(at), us(limit))),
                }
            })
            .collect();
        Ok(Snapshot {
            target: self.target,
            serving: self.serving,
            last_reload: self.last_reload.as_ref().map(|r| match r {
                ReloadOutcome::Complete {
                    generation,
                    duration,
                } => LastReload::Complete {
                    generation: *generation,
                    duration_us: us(*duration),
                },
                ReloadOutcome::Aborted { generation, cause } => LastReload::Aborted {
                    generation: *generation,
                    cause: cause.clone(),
                },
                ReloadOutcome::Interrupted { generation } => LastReload::Interrupted {
                    generation: *generation,
                },
            }),
            started_ago_us: self.started.map_or(0, ago),
            announced_ready: self.announced_ready,
            listeners_checked: self.listeners_checked,
            ever_started: self.ever_started,
            speaks_ready: self.speaks_ready,
            rng: self.rng.state(),
            slots,
            workers,
        })
    }

    /// A supervisor that goes on from `snapshot`, written `now` by another
    /// image (its own `Event::Start` then finds every slot as it was).
    pub fn restore(policy: Policy, snapshot: Snapshot, now: Instant) -> Supervisor {
        let back = |us: u64| now.checked_sub(from_us(us)).unwrap_or(now);
        let ahead = |us: u64| now + from_us(us);
        let mut s = Supervisor::new(policy);
        s.slots = snapshot
            .slots
            .iter()
            .map(|snap| {
                let mut slot = Slot::new();
                slot.backoff = Backoff::resume(snap.quick_crashes);
                slot.restarts = snap.restarts;
                slot.last_exit = snap.last_exit;
                slot.last_exit_generation = snap.last_exit_generation;
                slot.lane = snap.lane;
                slot
            })
            .collect();
        for (id, snap) in snapshot.slots.iter().enumerate() {
            s.set_restart(id, snap.restart_in_us.map(ahead));
        }
        for snap in snapshot.workers {
            let pid = Pid::from_raw(snap.pid);
            let ready_by = match (snap.ready_by.as_str(), snap.ready_sender) {
                ("READY=1", Some(sender)) => ReadyBy::Notify {
                    sender: Pid::from_raw(sender),
                },
                ("listening", _) => ReadyBy::Listening,
                ("delay", _) => ReadyBy::Delay,
                ("exec", _) => ReadyBy::Exec,
                _ => ReadyBy::Uptime,
            };
            let state = WorkerState::Ready {
                since: back(snap.ready_ago_us),
                watchdog_by: snap.watchdog_in_us.map(ahead),
                hold_until: None,
            };
            s.timers.change(Timer::Worker(pid), None, state.deadline());
            if let Some((due_in, limit)) = snap.age_limit_us {
                let at = ahead(due_in);
                s.age_limits.insert(pid, (at, from_us(limit)));
                s.timers.change(Timer::Age(pid), None, Some(at));
            }
            if let Some(slot) = s.slots.get_mut(snap.slot) {
                slot.attached.push(pid);
            }
            s.workers.insert(
                pid,
                Worker {
                    pid,
                    slot: snap.slot,
                    generation: snap.generation,
                    lane: snap.lane,
                    started: back(snap.started_ago_us),
                    state,
                    exec_error: None,
                    ready_by: Some(ready_by),
                    seen_listening: snap.seen_listening,
                    status: snap.status,
                    status_logged: None,
                    status_unlogged: 0,
                    drained: false,
                },
            );
        }
        s.target = snapshot.target;
        s.serving = snapshot.serving;
        s.last_reload = snapshot.last_reload.map(|r| match r {
            LastReload::Complete {
                generation,
                duration_us,
            } => ReloadOutcome::Complete {
                generation,
                duration: from_us(duration_us),
            },
            LastReload::Aborted { generation, cause } => {
                ReloadOutcome::Aborted { generation, cause }
            }
            LastReload::Interrupted { generation } => ReloadOutcome::Interrupted { generation },
        });
        s.started = Some(back(snapshot.started_ago_us));
        s.announced_ready = snapshot.announced_ready;
        s.listeners_checked = snapshot.listeners_checked;
        s.ever_started = snapshot.ever_started;
        s.speaks_ready = snapshot.speaks_ready;
        s.rng = Rng::resume(snapshot.rng);
        for slot in 0..s.slots.len() {
            s.refresh(slot);
        }
        // Every worker was proven (a busy supervisor is not written down).
        let pids: Vec<Pid> = s.workers.keys().copied().collect();
        for pid in pids {
            s.probe_from(pid, now);
        }
        s
    }
}
