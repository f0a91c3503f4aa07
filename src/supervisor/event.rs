//! The contract between the pure [`Supervisor`](super::Supervisor) and the
//! shell that runs it: the facts the shell observes ([`Event`]) and the
//! commands the core asks it to carry out ([`Action`]).
//!
//! Nothing here performs a syscall. Pids and signal numbers are plain data.

use std::fmt;
use std::time::Duration;

pub use nix::unistd::Pid;

use crate::record::Record;

/// A worker's stable position, `0..workers`: what `RCLUSTER_WORKER_ID` says.
pub type SlotId = usize;

/// How many reloads a worker's configuration has seen; bumped by every `HUP`.
pub type Generation = u64;

/// A signal sent to the master, already translated into what it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterSignal {
    /// `HUP`: replace every worker with a fresh one.
    Reload,
    /// `TERM`, `INT`: graceful stop (a second one is immediate).
    Stop,
    /// `QUIT`: immediate stop.
    StopNow,
    /// `TTIN`: one worker more.
    ScaleUp,
    /// `TTOU`: one worker less, never fewer than one.
    ScaleDown,
}

/// A message a worker sent over the sd_notify protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyMsg {
    Ready,
    Stopping,
    Watchdog,
    Status(String),
}

/// How a process ended, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signaled { signal: i32, core_dumped: bool },
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {}", signal_name(signal))?;
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// `SIGKILL` for 9, `SIGRTMIN+3` for a real-time signal: logs name signals,
/// never number them.
pub fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(sig) => sig.as_str().to_string(),
        Err(_) if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal) => {
            format!("SIGRTMIN+{}", signal - libc::SIGRTMIN())
        }
        Err(_) => format!("signal {signal}"),
    }
}

/// `ENOENT` for 2: the name an engineer can search for.
pub fn errno_name(errno: i32) -> String {
    let name = format!("{:?}", nix::errno::Errno::from_raw(errno));
    if name == "UnknownErrno" {
        format!("errno {errno}")
    } else {
        name
    }
}

/// A fact the shell observed. Every event is handled with the one `now` the
/// shell read for its wakeup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The listeners are bound: start the initial workers.
    Start,
    Signal(MasterSignal),
    /// The shell forked a worker the core asked for with [`Action::Spawn`].
    Spawned {
        slot: SlotId,
        generation: Generation,
        pid: Pid,
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
    /// A child was reaped.
    Exited {
        pid: Pid,
        exit: Exit,
    },
    /// A worker (or a process it started) spoke on `NOTIFY_SOCKET`.
    Notify {
        pid: Pid,
        msg: NotifyMsg,
    },
    /// `rcluster scale N`: run N workers.
    ScaleTo(usize),
    /// The poll timed out: a deadline from `next_deadline` has passed.
    Timeout,
}

/// What the service manager above rcluster (systemd) should be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerState {
    Ready,
    Reloading,
    Stopping,
}

/// A command for the shell. Actions are executed in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Fork and exec (or fork and run) a worker for `slot`; answer with
    /// [`Event::Spawned`] or [`Event::SpawnFailed`] before anything else.
    Spawn {
        slot: SlotId,
        generation: Generation,
    },
    /// Send `signal` to the worker process itself.
    Signal {
        pid: Pid,
        signal: i32,
    },
    /// `SIGKILL` the worker's whole process group (it leads its own group).
    KillGroup {
        pid: Pid,
    },
    Log(Record),
    NotifyManager(ManagerState),
    /// The master is done: exit with `code`; `error` is the one line for stderr.
    Exit {
        code: u8,
        error: Option<String>,
    },
}

/// Everything the core needs to know about policy, fixed at start-up.
#[derive(Debug, Clone)]
pub struct Policy {
    pub workers: usize,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub min_uptime: Duration,
    pub max_restarts: Option<u32>,
    pub ready: ReadyRule,
    pub ready_timeout: Duration,
    pub reload_batch: usize,
    pub watchdog: Option<Duration>,
}

/// When a started worker counts as Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyRule {
    /// As soon as exec succeeded.
    Exec,
    /// When the worker sends `READY=1` to `NOTIFY_SOCKET`.
    Notify,
    /// This long after exec succeeded.
    Delay(Duration),
}
