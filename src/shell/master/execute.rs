//! Carrying out the supervisor's actions: one arm per action, each a call.
//! The syscalls are here; what an action means is the supervisor's
//! (`supervisor/event.rs`).

use std::os::fd::AsFd;
use std::time::Instant;

use serde_json::json;

use crate::control::server as control;
use crate::control::usage;
use crate::error::Error;
use crate::launch::Launch;
use crate::shell::log::render;
use crate::shell::serving;
use crate::sockets::portcheck;
use crate::supervisor::event::{Action, Event, ManagerState, Outcome, ReloadOutcome};
use crate::supervisor::record::Record;
use crate::vocab::{Lane, Pid, SlotId};

use super::{Master, reload_answer};

impl<L: Launch> Master<'_, L> {
    pub(super) fn execute(&mut self, action: Action, now: Instant) {
        match action {
            Action::Spawn {
                slot,
                generation,
                lane,
            } => self.spawn(slot, generation, lane, now),
            Action::Signal { pid, signal } => signal_worker(pid, signal),
            Action::KillRemnants { pgid } => kill_remnants(pgid),
            Action::StopGroup { pgid, signal } => self.stop_group(pgid, signal, now),
            Action::FindStrays { of } => {
                let pids = self.find_strays(of.as_deref());
                self.dispatch(Event::Strays { of, pids }, now);
            }
            Action::KillGroup { pid } => kill_group(pid),
            Action::MeasureMemory { pids } => self.measure_memory(pids, now),
            Action::CheckListeners { pid } => self.check_listeners(pid),
            Action::LookServing { pid } => {
                let serving = serving::look(pid, &self.ours, &mut self.look_samples);
                self.dispatch(Event::Serving { pid, serving }, now);
            }
            Action::Probe { pid, slot, lane } => self.start_probe(pid, slot, lane, now),
            Action::CloseListeners => self.close_listeners(),
            Action::Steer { queues } => self.steer(&queues),
            Action::Log(record) => {
                self.metrics.observe(&record);
                self.log.emit(&record)
            }
            Action::NotifyManager(state) => self.notify_manager(&state),
            Action::ReloadFinished(outcome) => self.reload_finished(&outcome),
            Action::Exit(outcome) => self.exit(outcome),
        }
    }

    /// What is left of an exited worker's process group gets `signal`;
    /// if anything was there, the supervisor hears it lingers.
    fn stop_group(&mut self, pgid: Pid, signal: i32, now: Instant) {
        // SAFETY: the group of a worker just reaped: its number is not free
        // for reuse while anything is in it, and nothing is hit if it is
        // empty.
        let lingers = unsafe { libc::kill(-pgid.as_raw(), signal) } == 0;
        if lingers {
            // SAFETY: as above.
            unsafe { libc::kill(-pgid.as_raw(), libc::SIGCONT) };
            self.dispatch(Event::GroupLingers { pgid }, now);
        }
    }

    fn measure_memory(&mut self, pids: Vec<Pid>, now: Instant) {
        let rss = pids
            .into_iter()
            .filter_map(|pid| Some((pid, usage::of_tree(pid)?.rss_bytes)))
            .collect();
        self.dispatch(Event::Memory(rss), now);
    }

    /// Warns if the worker listens on TCP ports of its own.
    fn check_listeners(&mut self, pid: Pid) {
        let Some(pidfd) = self.pidfds.get(&pid) else {
            return;
        };
        let ports = portcheck::own_ports(pid, pidfd.as_fd(), &self.ours.inodes);
        if !ports.is_empty() {
            let ours = self.info.listeners.iter().map(|(_, a)| a.clone()).collect();
            self.log.emit(&Record::OwnPorts { pid, ports, ours });
        }
    }

    /// A stop began. Workers hold their own copies while they drain; once
    /// the last is closed, a new connection is refused at once.
    fn close_listeners(&mut self) {
        self.listeners.clear();
        self.listener_fds.clear();
        if let Some(balancer) = &mut self.balancer {
            balancer.close();
        }
    }

    fn steer(&mut self, queues: &[(SlotId, Lane)]) {
        let steered = self.balancer.as_mut().map(|b| b.steer(queues));
        if let Some(Err(e)) = steered {
            self.log.emit(&Record::OsError {
                op: "steering new connections (SO_ATTACH_REUSEPORT_CBPF)".into(),
                error: e.to_string(),
            });
        }
    }

    pub(super) fn notify_manager(&mut self, state: &ManagerState) {
        if let Some(manager) = &self.manager
            && let Err(e) = manager.tell(state)
        {
            self.log.emit(&Record::OsError {
                op: "notifying systemd (NOTIFY_SOCKET)".into(),
                error: e.to_string(),
            });
        }
    }

    fn reload_finished(&mut self, outcome: &ReloadOutcome) {
        self.metrics.reload_finished(outcome);
        if let (ReloadOutcome::Complete { generation, .. }, Some(releases)) =
            (outcome, &mut self.releases)
        {
            releases.served(*generation);
        }
        self.keep_releases();
        let mut answer = reload_answer(outcome);
        if let Some(generation) = answer["generation"].as_u64() {
            answer["release"] = self.release_json(generation);
        }
        let waiters = std::mem::take(&mut self.reload_waiters);
        self.answer(waiters, &answer);
    }

    /// The master is done: its waiting clients get their answers, and the
    /// loop returns `outcome`.
    fn exit(&mut self, outcome: Outcome) {
        let waiters = std::mem::take(&mut self.reload_waiters);
        self.answer(waiters, &control::error("the master stopped"));
        let code = outcome.exit_code();
        let waiters = std::mem::take(&mut self.stop_waiters);
        let stopped = json!({"ok": code == 0, "result": "stopped", "code": code});
        self.answer(waiters, &stopped);
        self.outcome = Some(match outcome {
            Outcome::Stopped => Ok(()),
            Outcome::GaveUp {
                slot,
                crashes,
                max_restarts,
            } => Err(Error::GaveUp(render::sentence(&Record::GivingUp {
                slot,
                crashes,
                max_restarts,
            }))),
            Outcome::CannotExec { errno } => {
                Err(Error::cannot_exec(&self.launcher.describe(), errno))
            }
        });
    }
}

/// The supervisor signals only pids it has not seen exit, and exits are
/// reported as they are reaped, so this is our child or our zombie. A
/// process stopped with `SIGSTOP` would hold the signal: `SIGCONT` after
/// it, as systemd does.
fn signal_worker(pid: Pid, signal: i32) {
    // SAFETY: plain syscalls on our own child (see above).
    unsafe {
        libc::kill(pid.as_raw(), signal);
        libc::kill(pid.as_raw(), libc::SIGCONT);
    }
}

/// A group, never a pid: the number of a worker that left members behind
/// is not reused while any is alive.
fn kill_remnants(pgid: Pid) {
    // SAFETY: a plain syscall on a group (see above).
    unsafe { libc::kill(-pgid.as_raw(), libc::SIGKILL) };
}

/// `SIGKILL` to a worker's (or stray's) process group, or to the process
/// alone if it leads none.
fn kill_group(pid: Pid) {
    // SAFETY: plain syscalls on our own child's group.
    unsafe {
        if libc::kill(-pid.as_raw(), libc::SIGKILL) != 0 {
            libc::kill(pid.as_raw(), libc::SIGKILL);
        }
    }
}
