//! The contract between the pure [`Supervisor`](super::Supervisor) and the
//! shell that runs it: the facts the shell observes ([`Event`]) and the
//! commands the core asks it to carry out ([`Action`]).
//!
//! Nothing here performs a syscall. Pids and signal numbers are plain data.

use crate::vocab::{Exit, Generation, Lane, Pid, SlotId};
use std::time::Duration;

pub use crate::vocab::{ManagerState, NotifyMsg};

use super::record::Record;
use super::slot::Serving;

/// A signal sent to the master, already translated into what it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterSignal {
    /// `HUP`: replace every worker with a fresh one.
    Reload,
    /// `TERM`: graceful stop. Another `TERM` changes nothing: `timeout`,
    /// systemd and the kubelet may send two at once.
    Terminate,
    /// `INT`: graceful stop; a second one (a person pressing Ctrl-C again)
    /// stops at once.
    Interrupt,
    /// `QUIT`: immediate stop.
    Quit,
    /// `TTIN`: one worker more.
    ScaleUp,
    /// `TTOU`: one worker less, never fewer than one.
    ScaleDown,
}

/// A fact the shell observed. Every event is handled with the one `now` the
/// shell read for its wakeup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The listeners are bound: start the initial workers.
    Start,
    Signal(MasterSignal),
    /// The shell started a worker the core asked for with [`Action::Spawn`].
    /// `confirmed`: it already runs (fork mode); otherwise an
    /// [`Event::Exec`] follows when its exec is confirmed or fails.
    Spawned {
        slot: SlotId,
        generation: Generation,
        pid: Pid,
        confirmed: bool,
    },
    /// `fork` itself failed (e.g. `EAGAIN`); no process exists.
    SpawnFailed {
        slot: SlotId,
        generation: Generation,
        error: String,
    },
    /// The exec pipe closed (exec succeeded) or carried an errno.
    Exec {
        pid: Pid,
        result: Result<(), i32>,
    },
    /// A child was reaped: a worker, or an orphan the master inherited.
    /// `last_line`: the last line it wrote to stderr, if the master saw it.
    Exited {
        pid: Pid,
        exit: Exit,
        last_line: Option<String>,
    },
    /// A worker (or a process it started, `sender`) spoke on
    /// `NOTIFY_SOCKET`.
    Notify {
        pid: Pid,
        msg: NotifyMsg,
        sender: Pid,
    },
    /// The answer to [`Action::LookServing`].
    Serving {
        pid: Pid,
        serving: Serving,
    },
    /// `rcluster scale N`: run N workers.
    ScaleTo(usize),
    /// A reload was asked for but cannot start (`--env-file` cannot be read
    /// or parsed): the workers keep serving as they are.
    ReloadRefused {
        cause: String,
    },
    /// The answer to [`Action::MeasureMemory`]: the resident bytes of each
    /// worker's process tree (those still alive).
    Memory(Vec<(Pid, u64)>),
    /// The group [`Action::StopGroup`] signalled still had processes.
    GroupLingers {
        pgid: Pid,
    },
    /// The answer to [`Action::FindStrays`] `{ of }`: processes the
    /// workers (or the exited workers `of`) left behind, now the master's
    /// children.
    Strays {
        of: Option<Vec<Pid>>,
        pids: Vec<Pid>,
    },
    /// The answer to [`Action::Probe`] for `target`: what the probe found,
    /// and which worker answered it (none: it could not be told).
    Probed {
        target: Pid,
        by: Option<Pid>,
        outcome: ProbeOutcome,
    },
    /// The poll timed out: a deadline from `next_deadline` has passed.
    Timeout,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Answered 2xx or 3xx (Kubernetes' rule).
    Passed { status: u16 },
    /// Anything else, in words: "answered 500 to GET /healthz".
    Failed { cause: String },
}

/// How the master ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Asked to stop, and stopped: exit 0.
    Stopped,
    /// `--max-restarts` was used up: `crashes` quick crashes in a row of
    /// `slot`'s workers. Exit 1.
    GaveUp {
        slot: SlotId,
        crashes: u32,
        max_restarts: u32,
    },
    /// No worker could exec the command, for a reason that will not go
    /// away (`errno`: ENOEXEC, EACCES, ENOENT…), and none ever did: exit 126
    /// (127 for ENOENT), as a shell does.
    CannotExec { errno: i32 },
}

impl Outcome {
    /// The master's exit code: 0, 1 for giving up, 126 or 127 (ENOENT) for
    /// a command that cannot run.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Stopped => 0,
            Outcome::GaveUp { .. } => 1,
            Outcome::CannotExec { errno } if *errno == libc::ENOENT => 127,
            Outcome::CannotExec { .. } => 126,
        }
    }
}

/// A command for the shell. Actions are executed in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a worker for `slot`; answer with [`Event::Spawned`] or
    /// [`Event::SpawnFailed`] before anything else.
    Spawn {
        slot: SlotId,
        generation: Generation,
        /// Which of the slot's two queues it takes (`--balance reuseport`).
        lane: Lane,
    },
    /// Send `signal` to the worker process itself.
    Signal {
        pid: Pid,
        signal: i32,
    },
    /// `SIGKILL` the worker's whole process group (it leads its own group),
    /// or a stray's.
    KillGroup {
        pid: Pid,
    },
    /// `SIGKILL` what is left of an exited worker's process group (only the
    /// group: its leader's pid is no longer ours).
    KillRemnants {
        pgid: Pid,
    },
    /// Send `signal` to what is left of an exited worker's process group
    /// (systemd's `KillMode=mixed`); answer [`Event::GroupLingers`] if
    /// anything was there.
    StopGroup {
        pgid: Pid,
        signal: i32,
    },
    /// Look for the processes workers left behind among the master's
    /// children: those of the exited workers `of` (by their environment), or, with
    /// `None`, every child that is no worker. Answer [`Event::Strays`].
    FindStrays {
        of: Option<Vec<Pid>>,
    },
    /// Read the memory of these workers' process trees; answer
    /// [`Event::Memory`].
    MeasureMemory {
        pids: Vec<Pid>,
    },
    /// See whether the worker listens on a TCP port of its own rather than
    /// on the sockets it was given; log a warning if so. Nothing to answer.
    CheckListeners {
        pid: Pid,
    },
    /// Look whether a booting worker's process tree waits on its
    /// listeners; answer [`Event::Serving`].
    LookServing {
        pid: Pid,
    },
    /// Send an HTTP probe (`--probe`) meant for this worker, on the queue
    /// of its slot and lane under `--balance reuseport`; answer
    /// [`Event::Probed`] once it is answered or timed out.
    Probe {
        pid: Pid,
        slot: SlotId,
        lane: Lane,
    },
    /// A stop began: the master closes its copies of the listeners, so
    /// that once the workers have closed theirs a new connection is
    /// refused at once instead of waiting in a queue nobody accepts from.
    CloseListeners,
    /// Steer new connections to these queues only (`--balance
    /// reuseport`): each slot's, on the lane its proven worker takes.
    Steer {
        queues: Vec<(SlotId, Lane)>,
    },
    Log(Record),
    NotifyManager(ManagerState),
    /// A reload ended: clients waiting for it (`rcluster reload --wait`)
    /// get their answer.
    ReloadFinished(ReloadOutcome),
    /// The master is done: exit.
    Exit(Outcome),
}

impl Action {
    /// Its name, for a slow turn's record.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Spawn { .. } => "Spawn",
            Action::Signal { .. } => "Signal",
            Action::KillGroup { .. } => "KillGroup",
            Action::KillRemnants { .. } => "KillRemnants",
            Action::StopGroup { .. } => "StopGroup",
            Action::FindStrays { .. } => "FindStrays",
            Action::MeasureMemory { .. } => "MeasureMemory",
            Action::CheckListeners { .. } => "CheckListeners",
            Action::LookServing { .. } => "LookServing",
            Action::Probe { .. } => "Probe",
            Action::CloseListeners => "CloseListeners",
            Action::Steer { .. } => "Steer",
            Action::Log(_) => "Log",
            Action::NotifyManager(_) => "NotifyManager",
            Action::ReloadFinished(_) => "ReloadFinished",
            Action::Exit(_) => "Exit",
        }
    }
}

/// How a reload ended, for `rcluster status` and `reload --wait`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Complete {
        generation: Generation,
        duration: Duration,
    },
    /// A new worker failed; `cause` says how ("exited with code 1 after
    /// 5ms").
    Aborted {
        generation: Generation,
        cause: String,
    },
    /// The master began to stop before the reload was done.
    Interrupted { generation: Generation },
}
