//! When a worker ends: its exit record, what follows (a restart now or
//! after backoff, giving up, an aborted reload), and what it left behind
//! (its process group, processes that left it). The backoff rule itself is
//! `backoff.rs`.

use std::time::{Duration, Instant};

use crate::vocab::{Exit, Pid, errno_name, human};

use super::backoff::Restart;
use super::event::{Action, Outcome};
use super::record::{Next, Record};
use super::slot::{StopReason, WorkerState};
use super::timers::Timer;
use super::{Failure, Phase, Supervisor, Sweep};

/// How long after a worker's exit the master looks for the processes it
/// left behind (see `on_exited`).
pub const STRAY_SEARCH_DELAY: Duration = Duration::from_millis(100);

impl Supervisor {
    pub(super) fn on_exited(
        &mut self,
        pid: Pid,
        exit: Exit,
        last_line: Option<String>,
        now: Instant,
    ) {
        let Some(worker) = self.workers.remove(&pid) else {
            if let Some(kill_at) = self.strays.remove(&pid) {
                self.timers.change(Timer::Stray(pid), kill_at, None);
            }
            self.log(Record::OrphanReaped { pid, exit });
            return;
        };
        self.timers
            .change(Timer::Worker(pid), worker.state.deadline(), None);
        self.forget_pending(pid);
        self.detach(&worker);
        if let Some(slot) = self.slots.get_mut(worker.slot) {
            slot.last_exit = Some(exit);
            slot.last_exit_generation = Some(worker.generation);
        }
        let uptime = now.saturating_duration_since(worker.started);
        // The exit record comes first; what it decides (an aborted reload,
        // giving up) is logged after it.
        let at = self.actions.len();
        let (next, killed_by_us) = match worker.state {
            WorkerState::Leaving { .. } => (Next::Stopped(StopReason::WorkerStopping), false),
            WorkerState::Draining { why, .. } => (Next::Stopped(why), false),
            WorkerState::Killed { why } => (Next::Stopped(why), true),
            WorkerState::Spawned { .. }
            | WorkerState::Booting { .. }
            | WorkerState::Ready { .. } => {
                if let Some(errno) = worker.exec_error
                    && !self.ever_started
                    && cannot_ever_exec(errno)
                {
                    // The first workers cannot run the command, and never
                    // will: say so and stop, as a shell would.
                    self.begin_stop(true, Outcome::CannotExec { errno }, now);
                    (Next::NotRestarted, false)
                } else {
                    let cause = match worker.exec_error {
                        Some(errno) => {
                            format!("could not exec the command ({})", errno_name(errno))
                        }
                        None => format!("{exit} after {}", human(uptime)),
                    };
                    let failure = Failure {
                        slot: worker.slot,
                        generation: worker.generation,
                        pid: Some(pid),
                        ready_for: worker.state.ready_for(now),
                        cause,
                    };
                    (self.on_failure(failure, now), false)
                }
            }
        };
        let record = Record::WorkerExited {
            slot: worker.slot,
            pid,
            generation: worker.generation,
            exit,
            exec_error: worker.exec_error,
            uptime,
            next,
            killed_by_us,
            drained: worker.drained,
            last_line,
        };
        self.actions.insert(at, Action::Log(record));
        // Whatever it started goes with it: its process group now, and the
        // processes that left the group and came back to the master.
        self.actions.push(Action::StopGroup {
            pgid: pid,
            signal: self.policy.stop_signal,
        });
        // The processes that came back to the master are found by listing
        // its children, which costs as much as it has workers: once for the
        // exits of a short while, not for each (at 1024 workers a listing
        // per exit was half the master's CPU in a reload). The wait also
        // lets a double fork's middle process exit, so its child has come
        // back by the time of the search.
        if self.stray_search.is_empty() {
            let at = now + STRAY_SEARCH_DELAY;
            self.timers.change(Timer::StraySearch, None, Some(at));
        }
        self.stray_search.push(pid);
    }

    /// Decides what follows a failed worker: abort the reload it belonged
    /// to, restart its slot (now or after backoff), or give up.
    pub(super) fn on_failure(&mut self, failure: Failure, now: Instant) -> Next {
        if self.phase != Phase::Running || failure.slot >= self.slots.len() {
            return Next::NotRestarted;
        }
        // Any worker started during the reload (a replacement, or a crash
        // restart, which also runs the new release) that fails, before or
        // after its ready, stops the reload: no further old worker stops.
        let is_new = self
            .reload
            .as_ref()
            .is_some_and(|plan| failure.generation > plan.from);
        if is_new {
            self.abort_reload(&failure, now);
        }
        self.recycle_failed(&failure, now);
        if !self.slots[failure.slot].is_empty() {
            return Next::SlotServed;
        }
        let slot = &mut self.slots[failure.slot];
        slot.restarts += 1;
        match slot.backoff.on_crash(failure.ready_for, &self.policy) {
            Restart::Now => Next::Restart {
                delay: Duration::ZERO,
                attempt: 0,
            },
            Restart::After { delay, attempt } => {
                self.set_restart(failure.slot, Some(now + delay));
                Next::Restart { delay, attempt }
            }
            Restart::GiveUp { crashes } => {
                let max_restarts = self.policy.max_restarts.unwrap_or_default();
                self.log(Record::GivingUp {
                    slot: failure.slot,
                    crashes,
                    max_restarts,
                });
                let outcome = Outcome::GaveUp {
                    slot: failure.slot,
                    crashes,
                    max_restarts,
                };
                self.begin_stop(true, outcome, now);
                Next::GiveUp
            }
        }
    }

    pub(super) fn on_group_lingers(&mut self, pgid: Pid, now: Instant) {
        // At shutdown, the last look for strays takes care of them.
        if self.phase != Phase::Running {
            return;
        }
        let kill_at = now + self.policy.stop_timeout;
        let old = self.groups.insert(pgid, kill_at);
        self.timers.change(Timer::Group(pgid), old, Some(kill_at));
    }

    /// The search for what the exited workers left behind is due.
    pub(super) fn search_strays(&mut self) {
        let of = std::mem::take(&mut self.stray_search);
        if !of.is_empty() {
            self.actions.push(Action::FindStrays { of: Some(of) });
        }
    }

    pub(super) fn on_strays(&mut self, of: Option<Vec<Pid>>, pids: Vec<Pid>, now: Instant) {
        let new: Vec<Pid> = pids
            .into_iter()
            .filter(|pid| !self.workers.contains_key(pid) && !self.strays.contains_key(pid))
            .collect();
        if of.is_none() && self.sweep == Sweep::Asked {
            self.sweep = if new.is_empty() {
                Sweep::Clean
            } else {
                Sweep::NotYet
            };
        }
        if new.is_empty() {
            return;
        }
        let timeout = self.policy.stop_timeout;
        self.log(Record::StraysStopping {
            pids: new.clone(),
            timeout,
        });
        let forced = matches!(self.phase, Phase::Stopping { forced: true, .. });
        for pid in new {
            if forced {
                self.strays.insert(pid, None);
                self.actions.push(Action::KillGroup { pid });
            } else {
                self.strays.insert(pid, Some(now + timeout));
                self.timers
                    .change(Timer::Stray(pid), None, Some(now + timeout));
                self.signal(pid, self.policy.stop_signal);
            }
        }
    }
}

/// An exec error that trying again will not cure: the file is not a
/// program (ENOEXEC), may not be run (EACCES, EPERM), or it or its
/// interpreter is missing (ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG, ELIBBAD).
/// ETXTBSY (a binary being copied), EAGAIN, ENOMEM, EMFILE may pass.
fn cannot_ever_exec(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOEXEC
            | libc::EACCES
            | libc::EPERM
            | libc::ENOENT
            | libc::ENOTDIR
            | libc::ELOOP
            | libc::ENAMETOOLONG
            | libc::ELIBBAD
            | libc::EISDIR
    )
}
