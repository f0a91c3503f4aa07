//! Starting a worker: one idea, two implementations. The `rcluster` binary
//! forks and execs a command (`exec.rs`); [`crate::Cluster`] forks and runs
//! a closure (`fork.rs`). The master's loop knows only [`Launch`]. What a
//! started worker is made of (its command, user, environment, and the code
//! between `fork` and `exec`) is `spawn/`; the library preloaded into it
//! for `--adopt-bind` and `--http-drain` is `shim/`.

pub mod exec;
pub mod fork;
pub mod release;
pub mod shim;
pub mod spawn;

use std::os::fd::{OwnedFd, RawFd};

use crate::launch::release::Release;
use crate::launch::spawn::CallFailed;
use crate::vocab::Stream;
use crate::vocab::{Generation, Pid, SlotId};

/// How a master starts its workers.
pub trait Launch {
    /// Starts a worker for `slot`, of `generation`, with `listeners` at fd
    /// 3, 4, …: the master's, or the slot's own (`--balance reuseport`).
    fn launch(
        &mut self,
        slot: SlotId,
        generation: Generation,
        listeners: &[RawFd],
    ) -> Result<Launched, CallFailed>;

    /// Which children the master may reap.
    fn reaping(&self) -> Reaping;

    /// What the workers run, for messages: the command as given.
    fn describe(&self) -> String;

    /// The user the workers run as: only it (or root) may speak for them
    /// on the notify socket.
    fn uid(&self) -> u32;

    /// Workers of `generation` run `release` (its directory, command and
    /// env file); a fork runs its closure whatever the release.
    fn prepare(&mut self, _generation: Generation, _release: &Release) {}

    /// No worker of `generation` starts again.
    fn forget(&mut self, _generation: Generation) {}
}

/// A worker just started.
#[derive(Debug)]
pub struct Launched {
    pub pid: Pid,
    /// `None`: it already runs (a fork is its own start, and an exec is
    /// known to have happened when `spawn` returns). Otherwise its start
    /// is confirmed through this pipe: EOF when exec succeeded, four bytes
    /// of errno when it failed.
    pub exec_pipe: Option<OwnedFd>,
    /// The read ends of its output streams that go through the master.
    pub output: Vec<OutputPipe>,
}

/// Which of a worker's output streams go through the master, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capture {
    pub stdout: bool,
    pub stderr: bool,
    /// Marked with the slot, or as JSON records (`--log-prefix`).
    pub prefixed: bool,
}

/// The master's end of one captured stream.
#[derive(Debug)]
pub struct OutputPipe {
    pub stream: Stream,
    pub prefixed: bool,
    pub fd: OwnedFd,
}

/// Which exited children the master collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaping {
    /// Every child, `waitpid(-1)`: the binary, which may be PID 1 and
    /// inherit orphans.
    All,
    /// Only its workers, by pid: a library must not reap children its host
    /// program started.
    Workers,
}
