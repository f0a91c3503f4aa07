//! The probes (`--probe`) the supervisor asks for, sent and read in the
//! loop: each is a non-blocking connection (`sockets/probe.rs`) with a
//! deadline, and its answer goes back to the supervisor with the worker
//! that answered it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::Interest;

use crate::error::Error;
use crate::launch::Launch;
use crate::shell::token::Source;
use crate::sockets::listen::Listener;
use crate::sockets::probe::{self, Probe, Progress};
use crate::supervisor::event::{Event, ProbeOutcome};
use crate::supervisor::policy::Policy;
use crate::supervisor::record::Record;
use crate::vocab::{Lane, Pid, SlotId};

use super::Master;

/// Where the master probes. Whether and how is the supervisor's policy
/// (`--probe`, which a reload may change), read as each probe starts.
#[derive(Debug)]
pub(super) struct Probes {
    /// The first TCP listener: its address, and its position (fd 3 + it).
    listener: SocketAddr,
    position: usize,
    /// The probes out, by the worker each is for.
    out: HashMap<Pid, Out>,
    /// Said once: a probe's answer could not be attributed.
    unattributed_said: bool,
}

/// One probe out.
#[derive(Debug)]
struct Out {
    probe: Probe,
    /// Sent to the worker's own socket (`--balance reuseport`).
    steered: bool,
    deadline: Instant,
    path: String,
    timeout: Duration,
}

/// What `--probe` needs and a master without a TCP listener lacks.
pub(super) const NEEDS_TCP: &str = "--probe needs a TCP listener to send its requests to: add \
                                    --listen 127.0.0.1:PORT (or drop --probe)";

impl Probes {
    /// Probes go to the first TCP listener; without one, `--probe` is
    /// refused.
    pub(super) fn of(policy: &Policy, listeners: &[Listener]) -> Result<Option<Probes>, Error> {
        let Some((position, listener)) = listeners
            .iter()
            .enumerate()
            .find_map(|(position, l)| Some((position, l.tcp_addr()?)))
        else {
            return match policy.probe {
                Some(_) => Err(Error::Usage(NEEDS_TCP.into())),
                None => Ok(None),
            };
        };
        Ok(Some(Probes {
            listener,
            position,
            out: HashMap::new(),
            unattributed_said: false,
        }))
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.out.values().map(|out| out.deadline).min()
    }
}

impl<L: Launch> Master<'_, L> {
    /// Sends the probe meant for worker `pid`: steered to its own socket
    /// under `--balance reuseport`, else into the shared queue.
    pub(super) fn start_probe(&mut self, pid: Pid, slot: SlotId, lane: Lane, now: Instant) {
        let (Some(probes), Some(policy)) = (&mut self.probes, self.supervisor.probe_policy())
        else {
            return;
        };
        if probes.out.contains_key(&pid) {
            return;
        }
        let (path, timeout) = (policy.path.clone(), policy.timeout);
        let start_addr = probes.listener;
        let generation = self.supervisor.worker(pid).map(|w| w.generation);
        // A generation whose listeners a reload changed is probed on its own.
        let addr = generation
            .and_then(|g| self.probe_addr(g))
            .unwrap_or(start_addr);
        let Some(probes) = &mut self.probes else {
            return;
        };
        if is_stopped(pid) {
            let cause = "is stopped (SIGSTOP): it answers nothing".to_string();
            let outcome = ProbeOutcome::Failed { cause };
            return self.dispatch(probed(pid, Some(pid), outcome), now);
        }
        let steer = self
            .balancer
            .as_ref()
            .and_then(|b| b.index(probes.position, slot, lane))
            .filter(|&index| index <= probe::MAX_STEERED_INDEX);
        let started = Probe::start(addr, &path, steer).and_then(|mut p| {
            self.poll
                .registry()
                .register(
                    p.source(),
                    Source::Probe(pid).token(),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map(|()| p)
        });
        match started {
            Ok(probe) => {
                let out = Out {
                    probe,
                    steered: steer.is_some(),
                    deadline: now + timeout,
                    path,
                    timeout,
                };
                probes.out.insert(pid, out);
            }
            Err(e) => {
                self.log.emit(&Record::OsError {
                    op: format!("probing worker {slot} (pid {pid})"),
                    error: e.to_string(),
                });
                let outcome = ProbeOutcome::Failed {
                    cause: format!("could not be probed: {e}"),
                };
                self.dispatch(probed(pid, steer.map(|_| pid), outcome), now);
            }
        }
    }

    /// The probe for `pid` can go on.
    pub(super) fn on_probe(&mut self, pid: Pid, now: Instant) {
        let progress = match self.probes.as_mut().and_then(|p| p.out.get_mut(&pid)) {
            Some(out) => out.probe.advance(),
            None => return,
        };
        if progress != Progress::Waiting {
            self.finish_probe(pid, progress, now);
        }
    }

    /// Probes past their deadline fail.
    pub(super) fn expire_probes(&mut self, now: Instant) {
        let Some(probes) = &self.probes else {
            return;
        };
        let late: Vec<(Pid, String)> = probes
            .out
            .iter()
            .filter(|(_, out)| out.deadline <= now)
            .map(|(pid, out)| (*pid, probe::timed_out(out.timeout)))
            .collect();
        for (pid, cause) in late {
            self.finish_probe(pid, Progress::Failed(cause), now);
        }
    }

    /// Judged by whoever answered: the worker it was steered to, or the
    /// worker found holding its other end. Closed only then, so that the
    /// holder can be found.
    fn finish_probe(&mut self, pid: Pid, progress: Progress, now: Instant) {
        let Some(probes) = &mut self.probes else {
            return;
        };
        let Some(Out {
            mut probe,
            steered,
            path,
            ..
        }) = probes.out.remove(&pid)
        else {
            return;
        };
        let _ = self.poll.registry().deregister(probe.source());
        let by = if steered {
            Some(pid)
        } else {
            let workers: Vec<i32> = self
                .supervisor
                .worker_pids()
                .iter()
                .map(|p| p.as_raw())
                .collect();
            let began = Instant::now();
            let holder = probe.ends().and_then(|(local, peer)| {
                crate::control::holder::holder(peer, local, &workers).map(Pid::from_raw)
            });
            self.steps
                .ended(began, || "finding a probe's worker".into());
            holder
        };
        drop(probe);
        let outcome = match progress {
            Progress::Answered(status) if probe::passes(status) => ProbeOutcome::Passed { status },
            Progress::Answered(status) => ProbeOutcome::Failed {
                cause: format!("answered {status} to GET {path}"),
            },
            Progress::Failed(why) => ProbeOutcome::Failed {
                cause: format!("{why} (GET {path})"),
            },
            Progress::Waiting => return,
        };
        if by.is_none() && !probes.unattributed_said {
            probes.unattributed_said = true;
            self.log.emit(&Record::ProbeUnattributed {
                outcome: match &outcome {
                    ProbeOutcome::Passed { status } => format!("answered {status}"),
                    ProbeOutcome::Failed { cause } => cause.clone(),
                },
            });
        }
        self.dispatch(probed(pid, by, outcome), now);
    }
}

fn probed(target: Pid, by: Option<Pid>, outcome: ProbeOutcome) -> Event {
    Event::Probed {
        target,
        by,
        outcome,
    }
}

/// Stopped by a signal (`SIGSTOP`, `SIGTSTP`) or a tracer: it accepts and
/// answers nothing, whatever the queue.
fn is_stopped(pid: Pid) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some('T' | 't'))
}
