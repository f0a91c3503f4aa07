//! What comes from the workers, and starting them: the fork (or exec) of
//! a new one with its pipes and pidfd watched; its exec pipe; its exit,
//! seen through its pidfd (or `SIGCHLD` and `waitpid`), with its last words
//! on stderr; what it says on the notify socket; and the processes the
//! workers left behind.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use mio::Interest;
use mio::unix::SourceFd;

use crate::launch::{Launch, Launched, OutputPipe, Reaping};
use crate::shell::reap;
use crate::shell::undertaker::Undertaker;
use crate::sockets::notify::{self, Datagram};
use crate::supervisor::event::Event;
use crate::supervisor::record::Record;
use crate::vocab::{Generation, Lane, Pid, SlotId};

use super::{Master, io_errno};
use crate::shell::token::Source;

impl<L: Launch> Master<'_, L> {
    /// Drains the notify socket: edge-triggered, so until it would block;
    /// a failed read skips that datagram, and a turn that reads many leaves
    /// the rest for the next turn, which comes at once: a worker flooding
    /// the socket delays no respawn, reload step or `status` answer by more
    /// than a turn's worth.
    pub(super) fn on_notify(&mut self, now: Instant) {
        const PER_TURN: usize = 256;
        self.notify_pending = false;
        let mut error = None;
        for _ in 0..PER_TURN {
            match self.notify.recv() {
                Ok(Some(datagram)) => self.on_datagram(datagram, now),
                Ok(None) => {
                    if let Some(e) = error {
                        self.log.emit(&Record::OsError {
                            op: "reading the notify socket".into(),
                            error: e,
                        });
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => error = Some(e.to_string()),
            }
        }
        self.notify_pending = true;
    }

    pub(super) fn on_datagram(&mut self, datagram: Datagram, now: Instant) {
        // Most datagrams come from a worker itself: no need to walk /proc.
        let ancestry = match datagram.sender {
            Some(sender) if self.supervisor.is_worker(sender) => vec![sender],
            Some(sender) => notify::ancestry(sender),
            None => Vec::new(),
        };
        let supervisor = &self.supervisor;
        let speaker = notify::speaker(
            &datagram,
            &ancestry,
            |pid| supervisor.is_worker(pid),
            self.launcher.uid(),
        );
        match speaker {
            Ok(worker) => {
                let sender = datagram.sender.unwrap_or(worker);
                for msg in datagram.messages {
                    self.dispatch(
                        Event::Notify {
                            pid: worker,
                            msg,
                            sender,
                        },
                        now,
                    );
                }
            }
            Err(why) => {
                self.notify_dropped += 1;
                self.log.emit(&Record::NotifyIgnored {
                    pid: datagram.sender.unwrap_or(Pid::from_raw(0)),
                    why: why.to_string(),
                });
            }
        }
    }

    /// A SIGCHLD from `sender`. A worker with a pidfd is reaped when its
    /// pidfd says so. Anything else is reaped by pid; an orphan's exit then
    /// sweeps for the others, since one SIGCHLD can stand for several exits
    /// (an orphan hidden behind a worker's waits for the next sweep).
    pub(super) fn on_child(&mut self, sender: Pid, now: Instant) {
        if self.pidfds.contains_key(&sender) {
            return;
        }
        let worker = self.supervisor.is_worker(sender);
        if !worker && self.launcher.reaping() == Reaping::Workers {
            // A child of the program that runs the cluster: not ours to reap.
            return;
        }
        if let Some(exit) = reap::pid(sender) {
            self.on_reaped(sender, exit, now);
            if !worker {
                self.reap(now);
            }
        } else if worker {
            // A worker without a pidfd whose SIGCHLD merged with another's.
            self.reap(now);
        }
    }

    /// Reaps every exited child, handling each exit before the next
    /// `waitpid`: until then the pid is a zombie, not free for reuse, so
    /// whatever the supervisor decides about the others is still safe.
    /// A SIGCHLD that stands for several exits may name a worker with a
    /// pidfd and hide an orphan: that orphan is reaped with the next sweep.
    pub(super) fn reap(&mut self, now: Instant) {
        match self.launcher.reaping() {
            Reaping::All => {
                while let Some((pid, exit)) = reap::any() {
                    self.on_reaped(pid, exit, now);
                }
            }
            // Workers without a pidfd (an old kernel), by pid.
            Reaping::Workers => {
                for pid in self.supervisor.worker_pids() {
                    if !self.pidfds.contains_key(&pid)
                        && let Some(exit) = reap::pid(pid)
                    {
                        self.on_reaped(pid, exit, now);
                    }
                }
            }
        }
    }

    pub(super) fn on_reaped(&mut self, pid: Pid, exit: crate::vocab::Exit, now: Instant) {
        // Each part is timed on its own: a stall seen once names its part.
        let began = Instant::now();
        if let Some(undertaker) = &self.undertaker {
            undertaker.forget(pid);
        }
        self.steps.ended(began, || "telling the undertaker".into());
        let began = Instant::now();
        if let Some(pidfd) = self.pidfds.remove(&pid) {
            // It closes as it drops, which takes it out of the epoll set
            // anyway: a failed deregister changes nothing.
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pidfd.as_raw_fd()));
        }
        self.steps.ended(began, || "closing the pidfd".into());
        if self.is_upgrade_check(pid) {
            return self.on_upgrade_checked(exit, now);
        }
        // The exec pipe of a child that died young still holds its errno:
        // report the exec before the exit, so the log says "could not exec
        // (ENOENT)", not "exited with code 127".
        if self.exec_pipes.contains_key(&pid) {
            self.on_exec_pipe(pid, now);
        }
        // Its last words first: what it wrote just before it died may still
        // be in its pipe.
        let began = Instant::now();
        let tail = self.output.last_words(pid, self.poll.registry(), self.log);
        let last_line = tail.cause();
        self.steps.ended(began, || "its last words".into());
        self.cpu_samples.remove(&pid);
        self.look_samples.remove(&pid);
        self.inherited.remove(&pid);
        if let Some(slot) = self.supervisor.slot_of(pid) {
            self.last_words.insert(slot, (pid, tail));
        }
        self.dispatch(
            Event::Exited {
                pid,
                exit,
                last_line,
            },
            now,
        );
        // The last worker that had a dropped address may be this one.
        self.close_unused_listeners();
    }

    pub(super) fn on_exec_pipe(&mut self, pid: Pid, now: Instant) {
        let Some(pipe) = self.exec_pipes.get(&pid) else {
            return;
        };
        let mut buf = [0u8; 4];
        let result = loop {
            break match nix::unistd::read(pipe.as_fd(), &mut buf) {
                Ok(0) => Ok(()),
                Ok(_) => Err(i32::from_ne_bytes(buf)),
                Err(nix::errno::Errno::EAGAIN) => return,
                // A signal while reading says nothing about the exec.
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => Err(e as i32),
            };
        };
        if let Some(pipe) = self.exec_pipes.remove(&pid) {
            // As for a pidfd: closing it is what counts.
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pipe.as_raw_fd()));
        }
        self.dispatch(Event::Exec { pid, result }, now);
    }

    /// The listeners a worker of `slot` and `generation` on `lane` gets.
    /// `Err`: why it cannot start.
    pub(super) fn listeners_for(
        &mut self,
        slot: SlotId,
        generation: Generation,
        lane: Lane,
    ) -> Result<Vec<RawFd>, String> {
        let Some(balancer) = &mut self.balancer else {
            return self.fds_of(generation);
        };
        let fds = balancer
            .fds(slot, lane)
            .map_err(|e| format!("binding slot {slot}'s sockets failed: {}", io_errno(&e)))?;
        // The slot's sockets are the worker's own, not ports of its own.
        for &fd in &fds {
            if !self.ours.knows(fd) {
                self.ours.add(fd);
            }
        }
        Ok(fds)
    }

    /// The master's children that are no workers: every one, or those the
    /// worker `of` started. Each is watched through a pidfd, as workers
    /// are, so its exit is seen even when its SIGCHLD merges with another's
    /// (the master waits for it at shutdown); one already gone is left out.
    /// Cluster mode adopts nothing: a library does not touch its host's
    /// children.
    pub(super) fn find_strays(&mut self, of: Option<&[Pid]>) -> Vec<Pid> {
        if self.launcher.reaping() != Reaping::All {
            return Vec::new();
        }
        let found: Vec<Pid> = reap::children()
            .into_iter()
            .filter(|&pid| !self.supervisor.is_worker(pid) && !self.pidfds.contains_key(&pid))
            .filter(|pid| !self.inherited.contains(pid))
            .filter(|&pid| of.is_none_or(|workers| reap::started_by(pid, workers)))
            .collect();
        found
            .into_iter()
            .filter(|&pid| self.watch_exit(pid))
            .collect()
    }

    pub(super) fn spawn(&mut self, slot: SlotId, generation: Generation, lane: Lane, now: Instant) {
        let listeners = match self.listeners_for(slot, generation, lane) {
            Ok(fds) => fds,
            Err(error) => {
                let failed = Event::SpawnFailed {
                    slot,
                    generation,
                    error,
                };
                return self.dispatch(failed, now);
            }
        };
        self.say_rewritten(generation);
        match self.launcher.launch(slot, generation, &listeners) {
            Ok(Launched {
                pid,
                exec_pipe,
                output,
            }) => {
                self.watch_output(slot, pid, output);
                if let Some(undertaker) = &self.undertaker {
                    undertaker.watch(pid);
                }
                let confirmed = exec_pipe.is_none();
                if let Some(pipe) = exec_pipe {
                    self.watch_exec_pipe(pid, pipe);
                }
                self.watch_exit(pid);
                let spawned = Event::Spawned {
                    slot,
                    generation,
                    pid,
                    confirmed,
                };
                self.dispatch(spawned, now);
            }
            Err(e) => self.dispatch(
                Event::SpawnFailed {
                    slot,
                    generation,
                    error: e.to_string(),
                },
                now,
            ),
        }
    }

    /// A file of the generation's release rewritten in place runs as it
    /// is now (the launcher refuses only a replaced one): said once.
    fn say_rewritten(&mut self, generation: Generation) {
        let Some(release) = self.releases.as_ref().and_then(|r| r.get(generation)) else {
            return;
        };
        for (what, path) in release.rewritten() {
            if self.rewritten_said.insert((generation, what)) {
                self.log.emit(&Record::ReleaseRewritten {
                    generation,
                    what,
                    path: path.display().to_string(),
                });
            }
        }
    }

    /// The undertaker the hand-over named (`resume`), or a new one; it is
    /// told of every worker there is. Only for exec'd workers: a library's
    /// cluster forks no helper into its host program.
    pub(super) fn keep_undertaker(&mut self, (signal, timeout): (i32, std::time::Duration)) {
        if self.launcher.reaping() != Reaping::All {
            return;
        }
        if self.undertaker.is_none() {
            match Undertaker::start(signal, timeout) {
                Ok(undertaker) => {
                    for pid in self.supervisor.worker_pids() {
                        undertaker.watch(pid);
                    }
                    self.undertaker = Some(undertaker);
                }
                Err(e) => self.log.emit(&Record::OsError {
                    op: "starting the undertaker (fork): workers are killed, not stopped, if the \
                         master dies"
                        .into(),
                    error: e.to_string(),
                }),
            }
        }
        if let Some(undertaker) = &self.undertaker {
            // No stray, no worker: a child of the master's own.
            self.inherited.insert(undertaker.pid);
        }
    }

    pub(super) fn watch_output(&mut self, slot: SlotId, pid: Pid, pipes: Vec<OutputPipe>) {
        for OutputPipe {
            stream,
            prefixed,
            fd,
        } in pipes
        {
            if let Err(e) = self
                .output
                .watch(self.poll.registry(), slot, pid, stream, prefixed, fd)
            {
                self.log.emit(&Record::OsError {
                    op: format!("watching the {} of pid {pid}", stream.name()),
                    error: e.to_string(),
                });
            }
        }
    }

    /// Watches a child's pidfd; false if there is none (an old kernel,
    /// or it is already reaped): then SIGCHLD tells of its exit.
    pub(super) fn watch_exit(&mut self, pid: Pid) -> bool {
        let Some(pidfd) = reap::open(pid) else {
            return false;
        };
        let token = Source::Exited(pid).token();
        let registered = self.poll.registry().register(
            &mut SourceFd(&pidfd.as_raw_fd()),
            token,
            Interest::READABLE,
        );
        if registered.is_ok() {
            self.pidfds.insert(pid, pidfd);
        }
        registered.is_ok()
    }

    pub(super) fn watch_exec_pipe(&mut self, pid: Pid, pipe: OwnedFd) {
        let token = Source::ExecPipe(pid).token();
        let registered = self.poll.registry().register(
            &mut SourceFd(&pipe.as_raw_fd()),
            token,
            Interest::READABLE,
        );
        match registered {
            Ok(()) => {
                self.exec_pipes.insert(pid, pipe);
            }
            // Without the pipe the exec is confirmed by nothing; the worker
            // still runs and its exit is still reaped.
            Err(e) => self.log.emit(&Record::OsError {
                op: format!("watching the exec pipe of pid {pid}"),
                error: e.to_string(),
            }),
        }
    }
}
