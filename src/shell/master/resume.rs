//! The new image of an upgraded master taking over from the hand-over:
//! the workers' exits and output pipes, the last words and counters, and
//! the word to systemd and the log that the upgrade is done. (The sockets
//! are taken over in `setup.rs`, the supervisor in its `snapshot.rs`.)

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::control::metrics::Metrics;
use crate::launch::Launch;
use crate::shell::output::Tail;
use crate::shell::undertaker::Undertaker;
use crate::shell::upgrade::{self, handover::Handover};
use crate::supervisor::event::ManagerState;
use crate::supervisor::record::Record;
use crate::vocab::{Pid, version};

use super::Master;

impl<L: Launch> Master<'_, L> {
    /// Goes on from `handover`, whose sockets the setup took over.
    pub(super) fn resume(&mut self, handover: Handover) {
        for pid in self.supervisor.worker_pids() {
            // A worker that exited since is a zombie: its pidfd is
            // readable at once, and the first turn restarts it.
            if !self.watch_exit(pid) {
                self.log.emit(&Record::OsError {
                    op: format!("watching worker {pid} after the upgrade (pidfd_open)"),
                    error: "its exit is seen by SIGCHLD instead".into(),
                });
            }
        }
        for pipe in &handover.pipes {
            // SAFETY: the old image handed this descriptor over to us alone.
            let fd = unsafe { OwnedFd::from_raw_fd(pipe.fd) };
            let _ = upgrade::set_cloexec(pipe.fd, true);
            if let Err(e) = self.output.resume(self.poll.registry(), pipe, fd) {
                self.log.emit(&Record::OsError {
                    op: format!("watching the {} of pid {}", pipe.stream.name(), pipe.pid),
                    error: e.to_string(),
                });
            }
        }
        self.say_files_gone(&handover);
        if let Some((fd, pid)) = handover.undertaker {
            // SAFETY: the old image handed this descriptor over to us alone.
            match unsafe { Undertaker::resume(fd, pid) } {
                Ok(undertaker) => self.undertaker = Some(undertaker),
                Err(e) => self.log.emit(&Record::OsError {
                    op: "taking over the undertaker's pipe after the upgrade".into(),
                    error: e.to_string(),
                }),
            }
        }
        for (slot, pid, lines) in &handover.last_words {
            let words = (Pid::from_raw(*pid), Tail::of_lines(lines));
            self.last_words.insert(*slot, words);
        }
        self.inherited = handover
            .inherited
            .iter()
            .map(|&p| Pid::from_raw(p))
            .collect();
        self.notify_dropped = handover.notify_dropped;
        self.log_lost_before = handover.log_lines_lost;
        self.metrics = Metrics::resume(&handover.counters);
        let took =
            Duration::from_nanos(upgrade::monotonic_ns().saturating_sub(handover.asked_at_ns));
        if let Some(cause) = handover.failed {
            // The old image again, from its own hand-over: nothing moved.
            self.upgrades.done = handover.upgrades;
            self.upgrades.attempts = handover.attempt.max(handover.upgrades);
            let cause = format!("the new image could not go on ({cause}) and ran this one again");
            self.upgrades.failed = Some((self.upgrades.attempts, cause.clone()));
            self.log.emit(&Record::UpgradeFailed { cause });
        } else {
            self.upgrades.done = handover.upgrades + 1;
            self.upgrades.attempts = handover.attempt.max(self.upgrades.done);
            self.upgrades.last = Some((handover.from_version.clone(), took));
            self.reload_at_start = handover.reload_after;
            self.log.emit(&Record::Upgraded {
                from: handover.from_version,
                to: version().to_string(),
                duration: took,
                workers: self.supervisor.worker_pids().len(),
            });
        }
        self.notify_manager(&ManagerState::Ready);
        let status = format!(
            "serving generation {}",
            self.supervisor.serving_generation()
        );
        self.notify_manager(&ManagerState::Status(status));
    }

    /// Socket files removed while the master ran (a tmp cleaner) are not
    /// taken over, and the upgrade goes on: failing it would end a master
    /// that serves, for a file it cannot make again without a restart.
    fn say_files_gone(&self, handover: &Handover) {
        let listeners = handover
            .listeners
            .iter()
            .filter_map(|l| Some((format!("listener {}", l.name), l.file.as_ref()?)));
        let control = handover
            .control
            .iter()
            .map(|c| ("the control socket".to_string(), &c.path));
        let metrics = handover
            .metrics
            .iter()
            .filter_map(|m| Some(("the metrics socket".to_string(), m.file.as_ref()?)));
        for (what, path) in listeners.chain(control).chain(metrics) {
            if std::fs::symlink_metadata(path).is_err() {
                self.log.emit(&Record::OsError {
                    op: format!(
                        "taking over {what}'s file {} after the upgrade",
                        path.display()
                    ),
                    error: "it was removed while the master ran: the socket serves on, but a \
                            client cannot connect by that path until rcluster starts again"
                        .into(),
                });
            }
        }
    }

    /// After the first turn of a resumed master: `rcluster upgrade
    /// --reload` rolls the workers now.
    pub(super) fn reload_after_upgrade(&mut self, now: Instant) {
        if std::mem::take(&mut self.reload_at_start) {
            let _ = self.reload(None, now);
        }
    }
}
