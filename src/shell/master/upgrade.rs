//! A live upgrade as the loop drives it: asked for (`SIGUSR2`, `rcluster
//! upgrade`), it waits until the master is quiet, has the new binary check
//! a copy of the hand-over, and then replaces the master's image in place
//! (`shell/upgrade/`). Every failure before the `execve` leaves the master
//! as it was, and says why in one line.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::launch::Launch;
use crate::shell::upgrade::handover::{
    self, CHECK_OK, ControlFd, Handover, ListenerFd, MetricsFd, NotifyFd,
};
use crate::shell::upgrade::{self, CHECK_TIMEOUT};
use crate::sockets::balance::Balancer;
use crate::supervisor::event::ManagerState;
use crate::supervisor::record::Record;
use crate::vocab::{Exit, Pid, version};

use super::Master;

/// How long an upgrade waits for a busy cluster (a reload, a worker
/// starting or stopping) to settle before it gives up and says so: one
/// asked during a crash loop would otherwise wait for ever, and block
/// every later one.
const BUSY_LIMIT: Duration = Duration::from_secs(60);

/// What this master's upgrades came to: for `status`.
#[derive(Debug, Default)]
pub struct Upgrades {
    /// Upgrades done, in this process's life.
    pub done: u32,
    /// The last one: from which version, and how long it took.
    pub last: Option<(String, Duration)>,
    /// Attempts asked for (done, failed, or under way).
    pub attempts: u32,
    /// The last attempt that failed, and why.
    pub failed: Option<(u32, String)>,
}

impl Upgrades {
    pub fn json(&self) -> Value {
        json!({
            "done": self.done,
            "attempts": self.attempts,
            "last": self.last.as_ref().map(|(from, took)| json!({
                "from": from, "duration_ms": took.as_millis() as u64,
            })),
            "failed": self.failed.as_ref().map(|(attempt, cause)| json!({
                "attempt": attempt, "cause": cause,
            })),
        })
    }
}

/// An upgrade under way.
pub(super) struct Upgrading {
    attempt: u32,
    /// Roll the workers once the new image runs.
    reload: bool,
    asked_at_ns: u64,
    step: Step,
}

enum Step {
    /// Until the master is quiet; `said`: the reason last logged. Given up
    /// at `until`.
    Waiting {
        said: Option<&'static str>,
        until: Instant,
    },
    /// The new binary reads a copy of the hand-over.
    Checking {
        pid: Pid,
        output: OwnedFd,
        deadline: Instant,
        /// The binary checked, open: the one exec'd.
        exe: OwnedFd,
        killed: bool,
    },
}

impl<L: Launch> Master<'_, L> {
    /// `SIGUSR2` or `rcluster upgrade`: the attempt's number, or why not.
    pub(super) fn upgrade(&mut self, reload: bool, now: Instant) -> Result<u32, String> {
        let refused = if self.binary.is_none() {
            Some(
                "this master runs a closure (rcluster::Cluster): the program is yours, \
                 restart it to run a new version",
            )
        } else if !self.supervisor.is_running() {
            Some("the master is stopping")
        } else if self.upgrading.is_some() {
            Some("an upgrade is already under way")
        } else {
            None
        };
        if let Some(why) = refused {
            self.log.emit(&Record::UpgradeFailed { cause: why.into() });
            return Err(why.into());
        }
        self.upgrades.attempts += 1;
        let attempt = self.upgrades.attempts;
        self.upgrading = Some(Upgrading {
            attempt,
            reload,
            asked_at_ns: upgrade::monotonic_ns(),
            step: Step::Waiting {
                said: None,
                until: now + BUSY_LIMIT,
            },
        });
        self.advance_upgrade(now);
        Ok(attempt)
    }

    /// After every turn, while an upgrade is under way: check the new
    /// binary once the master is quiet (or give up if it stays busy too
    /// long); stop a check that takes too long.
    pub(super) fn advance_upgrade(&mut self, now: Instant) {
        if !self.supervisor.is_running() {
            return self.cancel_upgrade();
        }
        let busy = self.busy();
        let log = self.log;
        let Some(upgrading) = &mut self.upgrading else {
            return;
        };
        match &mut upgrading.step {
            Step::Waiting { until, .. } if busy.is_some() && now >= *until => {
                let cause = format!(
                    "the cluster stayed busy ({}) for {}s; nothing changed, try again once it \
                     is quiet",
                    busy.unwrap_or_default(),
                    BUSY_LIMIT.as_secs()
                );
                self.upgrade_failed(cause);
            }
            Step::Waiting { said, .. } => match busy {
                Some(why) => {
                    if *said != busy {
                        *said = busy;
                        log.emit(&Record::UpgradeWaiting { why: why.into() });
                    }
                }
                None => self.start_check(now),
            },
            Step::Checking {
                pid,
                deadline,
                killed,
                ..
            } => {
                if now >= *deadline && !*killed {
                    *killed = true;
                    let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }

    /// When the loop must wake up for the upgrade.
    pub(super) fn upgrade_deadline(&self) -> Option<Instant> {
        match &self.upgrading.as_ref()?.step {
            Step::Waiting { until, .. } => Some(*until),
            Step::Checking {
                deadline,
                killed: false,
                ..
            } => Some(*deadline),
            _ => None,
        }
    }

    /// Why the master cannot hand over now.
    fn busy(&self) -> Option<&'static str> {
        if let Some(busy) = self.supervisor.busy() {
            return Some(busy);
        }
        (!self.exec_pipes.is_empty()).then_some("a worker is starting or stopping")
    }

    fn start_check(&mut self, now: Instant) {
        let Some(binary) = self.binary.clone() else {
            return;
        };
        let check = self
            .handover(now)
            .and_then(|h| h.seal().map_err(|e| format!("writing the hand-over: {e}")))
            .and_then(|memfd| {
                upgrade::start_check(&binary, &memfd)
                    .map_err(|e| format!("cannot run {}: {e}", binary.exe.display()))
            });
        let check = match check {
            Ok(check) => check,
            Err(cause) => return self.upgrade_failed(cause),
        };
        self.log.emit(&Record::UpgradeChecking {
            exe: binary.exe.display().to_string(),
        });
        self.watch_exit(check.pid);
        if let Some(upgrading) = &mut self.upgrading {
            upgrading.step = Step::Checking {
                pid: check.pid,
                output: check.output,
                deadline: now + CHECK_TIMEOUT,
                exe: check.exe,
                killed: false,
            };
        }
    }

    /// Whether `pid` is a new binary checking the hand-over (or one whose
    /// upgrade was given up: its exit is no business of the workers').
    pub(super) fn is_upgrade_check(&self, pid: Pid) -> bool {
        self.abandoned_check == Some(pid)
            || matches!(
                self.upgrading.as_ref().map(|u| &u.step),
                Some(Step::Checking { pid: p, .. }) if *p == pid
            )
    }

    /// The check ended: exec the new binary, or say why not.
    pub(super) fn on_upgrade_checked(&mut self, exit: Exit, now: Instant) {
        if self.abandoned_check.take().is_some() {
            return;
        }
        let Some(Upgrading {
            step: Step::Checking { output, killed, .. },
            ..
        }) = &self.upgrading
        else {
            return;
        };
        let said = upgrade::read_output(output);
        let exe = self
            .binary
            .as_ref()
            .map(|b| b.exe.clone())
            .unwrap_or_default();
        let exe = exe.display();
        let last = said
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map_or_else(|| "it said nothing".to_string(), |l| l.trim().to_string());
        let failure = match exit {
            _ if *killed => Some(format!(
                "{exe} did not finish checking the hand-over within {}s",
                CHECK_TIMEOUT.as_secs()
            )),
            Exit::Code(0) if said.lines().next() == Some(CHECK_OK) => None,
            Exit::Code(0) => Some(format!("{exe} did not confirm it can take over: {last}")),
            Exit::Code(code) => Some(format!(
                "{exe} refused the hand-over (exit code {code}): {last}"
            )),
            Exit::Signaled { .. } => Some(format!(
                "{exe} was killed by {} while checking the hand-over",
                exit.short()
            )),
        };
        if let Some(cause) = failure {
            return self.upgrade_failed(cause);
        }
        let to = said
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix("version "))
            .unwrap_or("?")
            .to_string();
        let checked = self.upgrading.as_mut().map(|u| {
            std::mem::replace(
                &mut u.step,
                Step::Waiting {
                    said: None,
                    until: now,
                },
            )
        });
        if let Some(Step::Checking { exe, .. }) = checked {
            self.exec_upgrade(&exe, to, now);
        }
    }

    /// Replaces the master's image, with a hand-over written now (the
    /// master may have moved while the check ran: then it waits again).
    fn exec_upgrade(&mut self, exe: &OwnedFd, to: String, now: Instant) {
        let Some(binary) = self.binary.clone() else {
            return;
        };
        if let Some(why) = self.busy() {
            if let Some(upgrading) = &mut self.upgrading {
                upgrading.step = Step::Waiting {
                    said: Some(why),
                    until: now + BUSY_LIMIT,
                };
            }
            return self.log.emit(&Record::UpgradeWaiting { why: why.into() });
        }
        if let Err(cause) = self.preflight() {
            return self.upgrade_failed(cause);
        }
        let handover = match self.handover(now) {
            Ok(handover) => handover,
            Err(cause) => return self.upgrade_failed(cause),
        };
        let fds = handover.fds();
        let memfd = match handover.seal() {
            Ok(memfd) => memfd,
            Err(e) => return self.upgrade_failed(format!("writing the hand-over: {e}")),
        };
        self.log.emit(&Record::Upgrading {
            from: version().to_string(),
            to,
            exe: binary.exe.display().to_string(),
        });
        self.notify_manager(&ManagerState::Reloading);
        self.log.flush();
        let error = upgrade::exec(&binary, exe, &memfd, &fds);
        self.notify_manager(&ManagerState::Ready);
        self.upgrade_failed(format!("cannot execute {}: {error}", binary.exe.display()));
    }

    /// What the new image opens again as it starts, tried now, before the
    /// point of no return: the log file (reopened, as on `SIGUSR1`) and
    /// the pid file's directory.
    fn preflight(&mut self) -> Result<(), String> {
        if let Err(e) = self.log.reopen() {
            return Err(format!("the log file cannot be opened again: {e}"));
        }
        if let Some(pid_file) = &self.pid_file
            && let Err(e) = pid_file.writable()
        {
            let path = pid_file.path().display();
            return Err(format!("the pid file {path} cannot be written again: {e}"));
        }
        Ok(())
    }

    fn upgrade_failed(&mut self, cause: String) {
        if let Some(upgrading) = self.upgrading.take() {
            self.upgrades.failed = Some((upgrading.attempt, cause.clone()));
        }
        self.log.emit(&Record::UpgradeFailed { cause });
    }

    /// Stops an upgrade when the master begins to stop.
    fn cancel_upgrade(&mut self) {
        if let Some(Upgrading {
            step: Step::Checking { pid, .. },
            ..
        }) = &self.upgrading
        {
            let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
            self.abandoned_check = Some(*pid);
        }
        if self.upgrading.is_some() {
            self.upgrade_failed("the master began to stop".into());
        }
    }

    /// Everything the new image needs, written down now.
    fn handover(&self, now: Instant) -> Result<Handover, String> {
        let binary = self.binary.as_ref().ok_or("no binary")?;
        let upgrading = self.upgrading.as_ref().ok_or("no upgrade")?;
        let supervisor = self.supervisor.snapshot(now).map_err(String::from)?;
        let listeners = self
            .listeners
            .iter()
            .map(|l| ListenerFd {
                fd: l.fd(),
                name: l.name.clone(),
                local: l.local.clone(),
                file: l.file().map(Into::into),
            })
            .collect();
        let metrics = self.metrics_server.as_ref().map(|m| {
            let (fd, file) = m.handover();
            MetricsFd {
                fd,
                addr: m.addr.clone(),
                file: file.map(Into::into),
            }
        });
        Ok(Handover {
            format: match self.balancer {
                Some(_) => handover::FORMAT_BALANCE,
                None => handover::FORMAT,
            },
            from_version: version().to_string(),
            exe: binary.exe.clone(),
            argv0: binary.argv0.clone(),
            args: binary.args.clone(),
            upgrades: self.upgrades.done,
            attempt: upgrading.attempt,
            failed: None,
            undertaker: self.undertaker.as_ref().map(|u| (u.fd(), u.pid.as_raw())),
            asked_at_ns: upgrading.asked_at_ns,
            started_ago_us: now.saturating_duration_since(self.info.started).as_micros() as u64,
            reload_after: upgrading.reload,
            supervisor,
            releases: self.releases.as_ref().map(|r| r.snapshot()),
            listeners,
            notify: NotifyFd {
                fd: self.notify.as_raw_fd(),
                address: self.notify.address(),
                dir: self.notify.dir().map(Into::into),
            },
            control: self.control.as_ref().map(|c| ControlFd {
                fd: c.listener_fd(),
                path: c.path().to_path_buf(),
            }),
            metrics,
            pipes: self.output.handover(),
            last_words: self
                .last_words
                .iter()
                .map(|(&slot, (pid, tail))| {
                    (slot, pid.as_raw(), tail.lines().map(String::from).collect())
                })
                .collect(),
            notify_dropped: self.notify_dropped,
            log_lines_lost: self.counts().log_lines_lost,
            inherited: self.inherited.iter().map(|p| p.as_raw()).collect(),
            counters: self.metrics.snapshot(),
            balance: self
                .balancer
                .as_ref()
                .map(Balancer::handover)
                .unwrap_or_default(),
        })
    }
}
