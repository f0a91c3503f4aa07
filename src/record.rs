//! What rcluster reports: one typed [`Record`] per thing that happened.
//!
//! Each record has a stable name (the JSON `msg`, which tests and log
//! pipelines match on), a level, a sentence for people (the human log), and
//! fields (the JSON keys). Logger setup lives in [`crate::log`].

use std::fmt;
use std::time::Duration;

use slog::{KV, Level, Serializer};

use crate::supervisor::event::{Exit, Generation, Pid, SlotId, errno_name, signal_name};
use crate::supervisor::slot::StopReason;

/// The stable names, one constant each, so tests and code agree.
pub mod msg {
    pub const STARTED: &str = "started";
    pub const LISTENING: &str = "listening";
    pub const WORKER_SPAWNED: &str = "worker spawned";
    pub const WORKER_STARTED: &str = "worker started";
    pub const WORKER_READY: &str = "worker ready";
    pub const WORKERS_READY: &str = "workers ready";
    pub const WORKER_EXITED: &str = "worker exited";
    pub const WORKER_STATUS: &str = "worker status";
    pub const WORKER_STOPPING: &str = "worker stopping";
    pub const WORKER_DRAINING: &str = "worker draining";
    pub const SPAWN_FAILED: &str = "spawn failed";
    pub const NOT_READY: &str = "worker not ready";
    pub const WATCHDOG_TIMEOUT: &str = "watchdog timeout";
    pub const STOP_TIMEOUT: &str = "stop timeout";
    pub const RELOAD_STARTED: &str = "reload started";
    pub const RELOAD_RETARGETED: &str = "reload retargeted";
    pub const RELOAD_COMPLETE: &str = "reload complete";
    pub const RELOAD_ABORTED: &str = "reload aborted";
    pub const SCALED: &str = "scaled";
    pub const STOP_REQUESTED: &str = "stop requested";
    pub const GIVING_UP: &str = "giving up";
    pub const STOPPED: &str = "stopped";
    pub const SIGNAL_IGNORED: &str = "signal ignored";
    pub const ORPHAN_REAPED: &str = "orphan reaped";
    pub const NOTIFY_IGNORED: &str = "notify ignored";
    pub const OS_ERROR: &str = "os error";
    pub const WORKER_OUTPUT: &str = "worker output";
    pub const LOG_REOPENED: &str = "log reopened";
    pub const CONTROL: &str = "control socket";
}

/// What happens after a worker ended, as its exit record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Restart after `delay` (zero: at once); `attempt` counts quick crashes.
    Restart { delay: Duration, attempt: u32 },
    /// The master stopped it on purpose.
    Stopped(StopReason),
    /// The slot still has a worker (a reload's old or new one): no restart.
    SlotServed,
    /// Not restarted: the master is stopping or the slot was scaled away.
    NotRestarted,
    /// `--max-restarts` is used up; the master stops.
    GiveUp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Started {
        pid: u32,
        workers: usize,
        version: &'static str,
    },
    Listening {
        name: String,
        addr: String,
    },
    WorkerSpawned {
        slot: SlotId,
        pid: Pid,
        generation: Generation,
    },
    /// Its exec succeeded (debug level: benchmarks time restarts with it).
    WorkerStarted {
        slot: SlotId,
        pid: Pid,
    },
    WorkerReady {
        slot: SlotId,
        pid: Pid,
        generation: Generation,
        startup: Duration,
    },
    /// Every slot has a ready worker for the first time.
    WorkersReady {
        workers: usize,
        startup: Duration,
    },
    WorkerExited {
        slot: SlotId,
        pid: Pid,
        generation: Generation,
        exit: Exit,
        exec_error: Option<i32>,
        uptime: Duration,
        next: Next,
        /// Whether a `SIGKILL` that ended it was sent by rcluster.
        killed_by_us: bool,
    },
    WorkerStatus {
        slot: SlotId,
        pid: Pid,
        status: String,
    },
    WorkerStopping {
        slot: SlotId,
        pid: Pid,
    },
    /// The master sent a worker its stop signal.
    WorkerDraining {
        slot: SlotId,
        pid: Pid,
        why: StopReason,
    },
    SpawnFailed {
        slot: SlotId,
        error: String,
    },
    NotReady {
        slot: SlotId,
        pid: Pid,
        timeout: Duration,
    },
    WatchdogTimeout {
        slot: SlotId,
        pid: Pid,
        timeout: Duration,
    },
    StopTimeout {
        slot: SlotId,
        pid: Pid,
        timeout: Duration,
    },
    ReloadStarted {
        generation: Generation,
        workers: usize,
    },
    ReloadRetargeted {
        generation: Generation,
    },
    ReloadComplete {
        generation: Generation,
        duration: Duration,
    },
    ReloadAborted {
        generation: Generation,
        slot: SlotId,
        pid: Option<Pid>,
        cause: String,
        old_serving: usize,
    },
    Scaled {
        workers: usize,
    },
    StopRequested {
        graceful: bool,
        timeout: Duration,
    },
    GivingUp {
        slot: SlotId,
        crashes: u32,
        max_restarts: u32,
    },
    Stopped {
        code: u8,
    },
    SignalIgnored {
        signal: &'static str,
        why: &'static str,
    },
    OrphanReaped {
        pid: Pid,
        exit: Exit,
    },
    NotifyIgnored {
        pid: Pid,
        why: String,
    },
    /// A syscall at the edge failed in a way the master survives.
    OsError {
        op: String,
        error: String,
    },
    /// A line a worker wrote (`--log-prefix`, JSON logs).
    WorkerOutput {
        slot: SlotId,
        pid: Pid,
        stream: &'static str,
        line: String,
    },
    LogReopened {
        path: String,
    },
    /// Where the control socket listens, or why there is none.
    Control {
        path: String,
        error: Option<String>,
    },
}

impl Record {
    /// The stable name: the JSON `msg`.
    pub fn name(&self) -> &'static str {
        use Record::*;
        match self {
            Started { .. } => msg::STARTED,
            Listening { .. } => msg::LISTENING,
            WorkerSpawned { .. } => msg::WORKER_SPAWNED,
            WorkerStarted { .. } => msg::WORKER_STARTED,
            WorkerReady { .. } => msg::WORKER_READY,
            WorkersReady { .. } => msg::WORKERS_READY,
            WorkerExited { .. } => msg::WORKER_EXITED,
            WorkerStatus { .. } => msg::WORKER_STATUS,
            WorkerStopping { .. } => msg::WORKER_STOPPING,
            WorkerDraining { .. } => msg::WORKER_DRAINING,
            SpawnFailed { .. } => msg::SPAWN_FAILED,
            NotReady { .. } => msg::NOT_READY,
            WatchdogTimeout { .. } => msg::WATCHDOG_TIMEOUT,
            StopTimeout { .. } => msg::STOP_TIMEOUT,
            ReloadStarted { .. } => msg::RELOAD_STARTED,
            ReloadRetargeted { .. } => msg::RELOAD_RETARGETED,
            ReloadComplete { .. } => msg::RELOAD_COMPLETE,
            ReloadAborted { .. } => msg::RELOAD_ABORTED,
            Scaled { .. } => msg::SCALED,
            StopRequested { .. } => msg::STOP_REQUESTED,
            GivingUp { .. } => msg::GIVING_UP,
            Stopped { .. } => msg::STOPPED,
            SignalIgnored { .. } => msg::SIGNAL_IGNORED,
            OrphanReaped { .. } => msg::ORPHAN_REAPED,
            NotifyIgnored { .. } => msg::NOTIFY_IGNORED,
            OsError { .. } => msg::OS_ERROR,
            WorkerOutput { .. } => msg::WORKER_OUTPUT,
            LogReopened { .. } => msg::LOG_REOPENED,
            Control { .. } => msg::CONTROL,
        }
    }

    pub fn level(&self) -> Level {
        use Record::*;
        match self {
            WorkerExited { next, .. } => match next {
                Next::Stopped(_) | Next::NotRestarted => Level::Info,
                Next::Restart { .. } | Next::SlotServed => Level::Warning,
                Next::GiveUp => Level::Error,
            },
            SpawnFailed { .. }
            | NotReady { .. }
            | WatchdogTimeout { .. }
            | ReloadAborted { .. } => Level::Error,
            GivingUp { .. } => Level::Critical,
            StopTimeout { .. } | OsError { .. } => Level::Warning,
            Control { error: Some(_), .. } => Level::Warning,
            WorkerStarted { .. } | OrphanReaped { .. } | NotifyIgnored { .. } => Level::Debug,
            _ => Level::Info,
        }
    }
}

/// `350ms`, `3.2s`, `2m05s`: durations as people read them in logs.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

fn worker(slot: SlotId, pid: Pid) -> String {
    format!("worker {slot} (pid {pid})")
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Record::*;
        match self {
            Started {
                pid,
                workers,
                version,
            } => write!(
                f,
                "rcluster {version} started (pid {pid}), {workers} workers"
            ),
            Listening { name, addr } => write!(f, "listening on {addr} ({name})"),
            WorkerSpawned {
                slot,
                pid,
                generation,
            } => write!(
                f,
                "{} spawned (generation {generation})",
                worker(*slot, *pid)
            ),
            WorkerStarted { slot, pid } => {
                write!(f, "{} started (exec succeeded)", worker(*slot, *pid))
            }
            WorkerReady {
                slot, pid, startup, ..
            } => write!(f, "{} ready after {}", worker(*slot, *pid), human(*startup)),
            WorkersReady { workers, startup } => {
                write!(f, "all {workers} workers ready after {}", human(*startup))
            }
            WorkerExited {
                slot,
                pid,
                exit,
                exec_error,
                uptime,
                next,
                killed_by_us,
                ..
            } => {
                write!(f, "{} ", worker(*slot, *pid))?;
                match exec_error {
                    Some(errno) => {
                        write!(f, "could not exec the command ({})", errno_name(*errno))?
                    }
                    None => write!(f, "{exit} after {}", human(*uptime))?,
                }
                if matches!(
                    exit,
                    Exit::Signaled {
                        signal: libc::SIGKILL,
                        ..
                    }
                ) && !killed_by_us
                {
                    f.write_str(" (not sent by rcluster: out of memory?)")?;
                }
                match next {
                    Next::Restart { delay, .. } if delay.is_zero() => {
                        f.write_str("; restarting now")
                    }
                    Next::Restart { delay, attempt } => {
                        write!(f, "; restarting in {} (attempt {attempt})", human(*delay))
                    }
                    Next::Stopped(why) => write!(f, "; stopped: {why}"),
                    Next::SlotServed => f.write_str("; not restarted: its slot still has a worker"),
                    Next::NotRestarted => f.write_str("; not restarted"),
                    Next::GiveUp => f.write_str("; giving up (--max-restarts)"),
                }
            }
            WorkerStatus { slot, pid, status } => {
                write!(f, "{} status: {status}", worker(*slot, *pid))
            }
            WorkerStopping { slot, pid } => write!(
                f,
                "{} said STOPPING=1; starting its replacement",
                worker(*slot, *pid)
            ),
            WorkerDraining { slot, pid, why } => {
                write!(f, "{} draining ({why})", worker(*slot, *pid))
            }
            SpawnFailed { slot, error } => write!(f, "could not start worker {slot}: {error}"),
            NotReady { slot, pid, timeout } => write!(
                f,
                "{} not ready within {} (--ready-timeout); killing it",
                worker(*slot, *pid),
                human(*timeout)
            ),
            WatchdogTimeout { slot, pid, timeout } => write!(
                f,
                "{} sent no WATCHDOG=1 for {}; sending SIGABRT and replacing it",
                worker(*slot, *pid),
                human(*timeout)
            ),
            StopTimeout { slot, pid, timeout } => write!(
                f,
                "{} still running {} after its stop signal (--stop-timeout); sending SIGKILL to its process group",
                worker(*slot, *pid),
                human(*timeout)
            ),
            ReloadStarted {
                generation,
                workers,
            } => write!(
                f,
                "reload started: replacing {workers} workers with generation {generation}"
            ),
            ReloadRetargeted { generation } => write!(
                f,
                "reload already running; it now replaces every worker with generation {generation}"
            ),
            ReloadComplete {
                generation,
                duration,
            } => write!(
                f,
                "reload complete: every worker is generation {generation}, in {}",
                human(*duration)
            ),
            ReloadAborted {
                generation,
                slot,
                cause,
                old_serving,
                ..
            } => write!(
                f,
                "reload aborted: the new worker {slot} (generation {generation}) {cause}; \
                 {old_serving} workers of older generations keep serving; send HUP to try again"
            ),
            Scaled { workers } => write!(f, "scaled to {workers} workers"),
            StopRequested { graceful, timeout } => {
                if *graceful {
                    write!(
                        f,
                        "graceful stop: workers drain for up to {} (send TERM again to stop now)",
                        human(*timeout)
                    )
                } else {
                    f.write_str("immediate stop: killing every worker")
                }
            }
            GivingUp {
                slot,
                crashes,
                max_restarts,
            } => write!(
                f,
                "giving up: worker {slot} exited {crashes} times in a row before --min-uptime \
                 (--max-restarts {max_restarts})"
            ),
            Stopped { code } => write!(f, "stopped (exit code {code})"),
            SignalIgnored { signal, why } => write!(f, "{signal} ignored: {why}"),
            OrphanReaped { pid, exit } => write!(f, "reaped orphan pid {pid}: {exit}"),
            NotifyIgnored { pid, why } => write!(f, "notify message from pid {pid} ignored: {why}"),
            OsError { op, error } => write!(f, "{op} failed: {error}"),
            WorkerOutput { slot, line, .. } => write!(f, "[{slot}] {line}"),
            LogReopened { path } => write!(f, "reopened the log file {path}"),
            Control { path, error: None } => write!(f, "control socket at {path}"),
            Control {
                path,
                error: Some(error),
            } => write!(
                f,
                "no control socket: {path}: {error} (rcluster status needs one; pass --control PATH)"
            ),
        }
    }
}

fn emit_slot(s: &mut dyn Serializer, slot: SlotId) -> slog::Result {
    s.emit_u64("slot", slot as u64)
}

fn emit_pid(s: &mut dyn Serializer, pid: Pid) -> slog::Result {
    s.emit_i32("pid", pid.as_raw())
}

fn emit_ms(s: &mut dyn Serializer, key: &'static str, d: Duration) -> slog::Result {
    s.emit_u64(key, d.as_millis() as u64)
}

fn emit_exit(s: &mut dyn Serializer, exit: Exit) -> slog::Result {
    match exit {
        Exit::Code(code) => s.emit_i32("code", code),
        Exit::Signaled {
            signal,
            core_dumped,
        } => {
            s.emit_str("signal", &signal_name(signal))?;
            s.emit_bool("core_dumped", core_dumped)
        }
    }
}

impl KV for Record {
    fn serialize(&self, _: &slog::Record<'_>, s: &mut dyn Serializer) -> slog::Result {
        use Record::*;
        match self {
            Started {
                pid,
                workers,
                version,
            } => {
                s.emit_u32("pid", *pid)?;
                s.emit_usize("workers", *workers)?;
                s.emit_str("version", version)
            }
            Listening { name, addr } => {
                s.emit_str("name", name)?;
                s.emit_str("addr", addr)
            }
            WorkerSpawned {
                slot,
                pid,
                generation,
            } => {
                emit_slot(s, *slot)?;
                emit_pid(s, *pid)?;
                s.emit_u64("generation", *generation)
            }
            WorkerReady {
                slot,
                pid,
                generation,
                startup,
            } => {
                emit_slot(s, *slot)?;
                emit_pid(s, *pid)?;
                s.emit_u64("generation", *generation)?;
                emit_ms(s, "startup_ms", *startup)
            }
            WorkersReady { workers, startup } => {
                s.emit_usize("workers", *workers)?;
                emit_ms(s, "startup_ms", *startup)
            }
            WorkerExited {
                slot,
                pid,
                generation,
                exit,
                exec_error,
                uptime,
                next,
                killed_by_us,
            } => {
                emit_slot(s, *slot)?;
                emit_pid(s, *pid)?;
                s.emit_u64("generation", *generation)?;
                emit_exit(s, *exit)?;
                if let Some(errno) = exec_error {
                    s.emit_str("exec_error", &errno_name(*errno))?;
                }
                emit_ms(s, "uptime_ms", *uptime)?;
                s.emit_bool("killed_by_rcluster", *killed_by_us)?;
                match next {
                    Next::Restart { delay, attempt } => {
                        s.emit_str("next", "restart")?;
                        emit_ms(s, "restart_in_ms", *delay)?;
                        s.emit_u32("attempt", *attempt)
                    }
                    Next::Stopped(why) => {
                        s.emit_str("next", "none")?;
                        s.emit_str("reason", &why.to_string())
                    }
                    Next::SlotServed | Next::NotRestarted => s.emit_str("next", "none"),
                    Next::GiveUp => s.emit_str("next", "give up"),
                }
            }
            WorkerStatus { slot, pid, status } => {
                emit_slot(s, *slot)?;
                emit_pid(s, *pid)?;
                s.emit_str("status", status)
            }
            WorkerStopping { slot, pid } | WorkerStarted { slot, pid } => {
                emit_slot(s, *slot)?;
                emit_pid(s, *pid)
            }
            WorkerDraining { slot, pid, why } => {
                emit_slot(s, *slot)?;
                emit_pid(s, *pid)?;
                s.emit_str("reason", &why.to_string())
            }
            SpawnFailed { slot, error } => {
                emit_slot(s, *slot)?;
                s.emit_str("error", error)
            }
            NotReady { slot, pid, timeout }
            | WatchdogTimeout { slot, pid, timeout }
            | StopTimeout { slot, pid, timeout } => {
                emit_slot(s, *slot)?;
                emit_pid(s, *pid)?;
                emit_ms(s, "timeout_ms", *timeout)
            }
            ReloadStarted {
                generation,
                workers,
            } => {
                s.emit_u64("generation", *generation)?;
                s.emit_usize("workers", *workers)
            }
            ReloadRetargeted { generation } => s.emit_u64("generation", *generation),
            ReloadComplete {
                generation,
                duration,
            } => {
                s.emit_u64("generation", *generation)?;
                emit_ms(s, "duration_ms", *duration)
            }
            ReloadAborted {
                generation,
                slot,
                pid,
                cause,
                old_serving,
            } => {
                s.emit_u64("generation", *generation)?;
                emit_slot(s, *slot)?;
                if let Some(pid) = pid {
                    emit_pid(s, *pid)?;
                }
                s.emit_str("cause", cause)?;
                s.emit_usize("old_serving", *old_serving)
            }
            Scaled { workers } => s.emit_usize("workers", *workers),
            StopRequested { graceful, timeout } => {
                s.emit_bool("graceful", *graceful)?;
                emit_ms(s, "timeout_ms", *timeout)
            }
            GivingUp {
                slot,
                crashes,
                max_restarts,
            } => {
                emit_slot(s, *slot)?;
                s.emit_u32("crashes", *crashes)?;
                s.emit_u32("max_restarts", *max_restarts)
            }
            Stopped { code } => s.emit_u8("code", *code),
            SignalIgnored { signal, why } => {
                s.emit_str("signal", signal)?;
                s.emit_str("reason", why)
            }
            OrphanReaped { pid, exit } => {
                emit_pid(s, *pid)?;
                emit_exit(s, *exit)
            }
            NotifyIgnored { pid, why } => {
                emit_pid(s, *pid)?;
                s.emit_str("reason", why)
            }
            OsError { op, error } => {
                s.emit_str("op", op)?;
                s.emit_str("error", error)
            }
            WorkerOutput {
                slot,
                pid,
                stream,
                line,
            } => {
                emit_slot(s, *slot)?;
                emit_pid(s, *pid)?;
                s.emit_str("stream", stream)?;
                s.emit_str("line", line)
            }
            LogReopened { path } => s.emit_str("path", path),
            Control { path, error } => {
                s.emit_str("path", path)?;
                match error {
                    Some(error) => s.emit_str("error", error),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_sentences_say_how_it_ended_and_what_comes_next() {
        let rec = Record::WorkerExited {
            slot: 2,
            pid: Pid::from_raw(4121),
            generation: 1,
            exit: Exit::Signaled {
                signal: libc::SIGKILL,
                core_dumped: false,
            },
            exec_error: None,
            uptime: Duration::from_millis(3200),
            next: Next::Restart {
                delay: Duration::ZERO,
                attempt: 0,
            },
            killed_by_us: false,
        };
        assert_eq!(
            rec.to_string(),
            "worker 2 (pid 4121) killed by SIGKILL after 3.2s (not sent by rcluster: out of memory?); restarting now"
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(350)), "350ms");
        assert_eq!(human(Duration::from_millis(3250)), "3.2s");
        assert_eq!(human(Duration::from_secs(125)), "2m05s");
    }
}
