//! What rcluster reports: one typed [`Record`] per thing that happened, with
//! its stable name (the JSON `msg`, which tests and log pipelines match on)
//! and its level, both given by one table ([`Record::meta`]).
//!
//! Most records are the supervisor's decisions; the shell adds the few that
//! only it can see (binding, the control socket, a syscall that failed).
//! How a record reads, as a sentence or as JSON fields, is the logger's
//! business (`log/render.rs`).

use std::time::Duration;

use slog::Level;

use crate::vocab::{Exit, Generation, Pid, SlotId};

use super::slot::{ReadyBy, RecycleReason, StopReason};

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
    /// An address the configuration no longer has, closed once no worker
    /// that had it is left.
    ListenerClosed {
        name: String,
        addr: String,
    },
    /// `--metrics`: where `/metrics` is served.
    MetricsEndpoint {
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
        by: ReadyBy,
        /// A reload's canary: how long it must stay ready before the
        /// worker it replaces stops.
        hold: Option<Duration>,
    },
    /// The first `READY=1` under `--ready auto`: from now on new workers
    /// must say it.
    ReadinessLearned {
        slot: SlotId,
        pid: Pid,
    },
    /// Under `--ready DELAY`, a worker is ready by the timer although
    /// earlier ones said `READY=1`: logged once.
    ReadyByTimerOnly {
        slot: SlotId,
        pid: Pid,
        after: Duration,
    },
    /// A reload's canary stayed ready for `--min-ready`: the roll goes on,
    /// `batch` slots at a time.
    CanaryProven {
        slot: SlotId,
        pid: Pid,
        held: Duration,
        batch: usize,
    },
    /// A reload's new worker is idle and waits on none of its listeners
    /// `after` its start: it does not serve.
    NotServing {
        slot: SlotId,
        pid: Pid,
        after: Duration,
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
        /// The shim closed its last connection before the end
        /// ([`Worker::drained`](super::slot::Worker::drained)).
        drained: bool,
        /// The last line it wrote to stderr.
        last_line: Option<String>,
    },
    /// A worker's `STATUS=` changed (logged at most once a second per
    /// worker; `unlogged` changes came in between).
    WorkerStatus {
        slot: SlotId,
        pid: Pid,
        status: String,
        unlogged: u32,
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
        /// When earlier workers said `READY=1` and this one did not:
        /// whether a look found it waiting on its listeners.
        listening: Option<bool>,
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
    /// A reload started a slot's worker at once instead of after its
    /// crash-loop backoff.
    BackoffCut {
        slot: SlotId,
        was_due_in: Duration,
        generation: Generation,
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
    /// A reload that could not start; the workers of `serving` go on.
    ReloadRefused {
        cause: String,
        serving: Generation,
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
    /// Processes the workers left behind get the stop signal.
    StraysStopping {
        pids: Vec<Pid>,
        timeout: Duration,
    },
    /// They did not exit in time: `SIGKILL`.
    StrayKilled {
        pid: Pid,
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
    /// One turn of the master's loop took long enough to delay everything
    /// (respawns, reloads, `status`): what it was handling, to find why.
    SlowTurn {
        took: Duration,
        handled: String,
        /// The steps that took 100 ms or more, innermost first.
        steps: String,
    },
    /// Log lines that could not be written (a full disk, a reader that is
    /// gone or stalled), now that lines get through again.
    LogLost {
        lines: u64,
        error: String,
    },
    /// Where the control socket listens, or why there is none.
    Control {
        path: String,
        error: Option<String>,
    },
    /// A ready worker listens on TCP ports of its own, besides or instead
    /// of the sockets it was given: nobody who connects to rcluster's
    /// addresses reaches it there.
    OwnPorts {
        pid: Pid,
        ports: Vec<u16>,
        /// rcluster's own addresses, for the message.
        ours: Vec<String>,
    },
    /// A serving worker is replaced for its memory or age: its successor
    /// starts now; it drains once that one is ready.
    WorkerRecycled {
        slot: SlotId,
        pid: Pid,
        reason: RecycleReason,
    },
    /// A worker failed a probe: `streak` in a row of the `failures` that
    /// fail it.
    ProbeFailed {
        slot: SlotId,
        pid: Pid,
        cause: String,
        streak: u32,
        failures: u32,
    },
    /// A worker that failed probes passes again.
    ProbePassing {
        slot: SlotId,
        pid: Pid,
        after: u32,
    },
    /// The successor of worker `pid`, replaced for its probes, failed them
    /// too: no more workers are replaced for probes until one passes.
    ProbeReplacingPaused {
        slot: SlotId,
        pid: Pid,
        failing: usize,
        workers: usize,
    },
    /// A probe's answer could not be told from which worker (the shared
    /// queue): said once.
    ProbeUnattributed {
        outcome: String,
    },
    /// `--env-file` is not a regular file (`kind`): read once at start,
    /// its `count` variables go to every generation.
    EnvFileOnce {
        path: String,
        kind: &'static str,
        count: usize,
    },
    /// `--env-file` read again for a reload: the names of the variables
    /// it added, removed and changed (never their values). `emptied`: it
    /// had variables and has none now.
    EnvFileRead {
        path: String,
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
        emptied: bool,
    },
    /// The default control socket was taken; the master uses another.
    ControlMoved {
        from: String,
        to: String,
        why: String,
    },
    /// What a new generation runs: where its workers start, its command,
    /// and the program that command resolved to.
    Release {
        generation: Generation,
        dir: String,
        command: String,
        executable: String,
        /// The newest older generation that ran these very files (the
        /// environment may differ: that is a reload too).
        same_as: Option<Generation>,
        /// `rcluster rollback`: the generation whose release this repeats.
        rollback_of: Option<Generation>,
        /// `--config`: the file and its version.
        config: Option<(String, String)>,
        /// What its configuration changed: `workers 4 → 8`.
        changed: Vec<String>,
    },
    /// A file a generation runs was rewritten in place since the
    /// generation was made (the same inode, a new modification time): it
    /// runs as it is now. Said once per generation and file.
    ReleaseRewritten {
        generation: Generation,
        what: &'static str,
        path: String,
    },
    /// Without `--chdir`: the master's working directory was reached
    /// through a path (`$PWD`) that now leads elsewhere, so a reload runs
    /// the old files.
    WorkdirMoved {
        cwd: String,
        reached_as: String,
        now: String,
    },
    /// A server known to lose requests at every reload with these flags.
    LosesRequests {
        server: &'static str,
        cure: &'static str,
    },
    /// A live upgrade waits for the master to be quiet.
    UpgradeWaiting {
        why: String,
    },
    /// A new binary checks the hand-over.
    UpgradeChecking {
        exe: String,
    },
    /// A live upgrade was given up; nothing changed.
    UpgradeFailed {
        cause: String,
    },
    /// The new binary passed its check: the master's image is replaced.
    Upgrading {
        from: String,
        to: String,
        exe: String,
    },
    /// Said by the new image: it goes on from the hand-over.
    Upgraded {
        from: String,
        to: String,
        duration: Duration,
        workers: usize,
    },
}

/// A worker the master asked to drain that did not end cleanly: an exit
/// code other than 0, or a signal it did not handle (its stop signal's
/// default action). Requests in flight were probably lost. A `SIGKILL`
/// rcluster sent after `--stop-timeout` is told apart (`StopTimeout`), and
/// so is a server the shim drained: it closed every connection before it
/// handed the stop signal over, so the signal's default action found
/// nothing in flight.
pub fn unclean_drain(why: &StopReason, exit: &Exit, killed_by_us: bool, drained: bool) -> bool {
    let asked = matches!(
        why,
        StopReason::Replaced { .. }
            | StopReason::ScaledDown
            | StopReason::Shutdown
            | StopReason::Recycled(_)
    );
    let killed = killed_by_us
        && matches!(
            exit,
            Exit::Signaled {
                signal: libc::SIGKILL,
                ..
            }
        );
    asked && *exit != Exit::Code(0) && !killed && !drained
}

impl Record {
    /// The stable name (the JSON `msg`) and the level, one row per record.
    pub fn meta(&self) -> (&'static str, Level) {
        use Level::*;
        use Record::*;
        match self {
            Started { .. } => ("started", Info),
            Listening { .. } => ("listening", Info),
            ListenerClosed { .. } => ("listener closed", Info),
            MetricsEndpoint { .. } => ("metrics endpoint", Info),
            WorkerSpawned { .. } => ("worker spawned", Info),
            WorkerStarted { .. } => ("worker started", Debug),
            WorkerReady { .. } => ("worker ready", Info),
            WorkersReady { .. } => ("workers ready", Info),
            ReadinessLearned { .. } => ("readiness learned", Info),
            ReadyByTimerOnly { .. } => ("ready by timer only", Warning),
            CanaryProven { .. } => ("canary proven", Info),
            NotServing { .. } => ("worker not serving", Error),
            WorkerExited {
                next,
                exit,
                killed_by_us,
                drained,
                ..
            } => (
                "worker exited",
                match next {
                    Next::Stopped(why) if unclean_drain(why, exit, *killed_by_us, *drained) => {
                        Warning
                    }
                    Next::Stopped(_) | Next::NotRestarted => Info,
                    Next::Restart { .. } | Next::SlotServed => Warning,
                    Next::GiveUp => Error,
                },
            ),
            WorkerStatus { .. } => ("worker status", Info),
            WorkerStopping { .. } => ("worker stopping", Info),
            WorkerDraining { .. } => ("worker draining", Info),
            SpawnFailed { .. } => ("spawn failed", Error),
            NotReady { .. } => ("worker not ready", Error),
            WatchdogTimeout { .. } => ("watchdog timeout", Error),
            StopTimeout { .. } => ("stop timeout", Warning),
            ReloadStarted { .. } => ("reload started", Info),
            BackoffCut { .. } => ("backoff cut", Info),
            ReloadRetargeted { .. } => ("reload retargeted", Info),
            ReloadComplete { .. } => ("reload complete", Info),
            ReloadAborted { .. } => ("reload aborted", Error),
            ReloadRefused { .. } => ("reload aborted", Error),
            Scaled { .. } => ("scaled", Info),
            StopRequested { .. } => ("stop requested", Info),
            GivingUp { .. } => ("giving up", Critical),
            Stopped { .. } => ("stopped", Info),
            SignalIgnored { .. } => ("signal ignored", Info),
            OrphanReaped { .. } => ("orphan reaped", Debug),
            StraysStopping { .. } => ("strays stopping", Warning),
            StrayKilled { .. } => ("stray killed", Warning),
            NotifyIgnored { .. } => ("notify ignored", Debug),
            OsError { .. } => ("os error", Warning),
            WorkerOutput { .. } => ("worker output", Info),
            LogReopened { .. } => ("log reopened", Info),
            SlowTurn { .. } => ("master turn slow", Warning),
            LogLost { .. } => ("log lines lost", Warning),
            Control { error: None, .. } => ("control socket", Info),
            Control { error: Some(_), .. } => ("control socket", Warning),
            ControlMoved { .. } => ("control socket", Warning),
            OwnPorts { .. } => ("worker listens on its own port", Warning),
            WorkerRecycled { .. } => ("worker recycled", Info),
            ProbeFailed { .. } => ("probe failed", Warning),
            ProbePassing { .. } => ("probe passing", Info),
            ProbeUnattributed { .. } => ("probe unattributed", Warning),
            ProbeReplacingPaused { .. } => ("probe replacing paused", Error),
            EnvFileOnce { .. } => ("env file read once", Info),
            EnvFileRead { emptied, .. } => ("env file read", if *emptied { Warning } else { Info }),
            Release { .. } => ("release", Info),
            ReleaseRewritten { .. } => ("release rewritten", Warning),
            WorkdirMoved { .. } => ("working directory moved", Warning),
            LosesRequests { .. } => ("loses requests", Warning),
            UpgradeWaiting { .. } => ("upgrade waiting", Info),
            UpgradeChecking { .. } => ("upgrade checking", Info),
            UpgradeFailed { .. } => ("upgrade failed", Error),
            Upgrading { .. } => ("upgrading", Info),
            Upgraded { .. } => ("upgraded", Info),
        }
    }

    /// The stable name: the JSON `msg`.
    pub fn name(&self) -> &'static str {
        self.meta().0
    }

    pub fn level(&self) -> Level {
        self.meta().1
    }
}
