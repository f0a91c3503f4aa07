//! How a `Record` reads: its fields (the JSON keys) and its sentence (the
//! human log), written by one match, [`render`], so that a record's two
//! renderings are side by side and a new record is one arm.
//!
//! Each renderer asks only for what it needs: the JSON one takes the fields
//! and skips the sentence, the human one the other way round.

use std::fmt::{self, Write as _};

use crate::supervisor::record::{Next, Record, unclean_drain};
use crate::supervisor::recycle::RecycleReason;
use crate::supervisor::slot::ReadyBy;
use crate::vocab::{Exit, count, errno_name, human};

use super::fields::Fields;
pub use super::fields::{LOGGER_KEYS, Out, Value};
use super::words::{next_text, ready_by, recycle_reason, stop_reason, worker};

/// Writes `record`'s fields and sentence to `out`.
pub fn render(record: &Record, out: &mut dyn Out) {
    use Record::*;
    let r = &mut Fields(out);
    match record {
        Started {
            pid,
            workers,
            version,
        } => {
            r.u64("pid", (*pid).into())
                .u64("workers", *workers as u64)
                .str("version", version);
            r.say(format_args!(
                "rcluster {version} started (pid {pid}), {}",
                count(*workers, "worker")
            ))
        }
        EnvFileOnce { path, kind, count } => {
            r.str("path", path)
                .str("kind", kind)
                .u64("variables", *count as u64);
            r.say(format_args!(
                "the env file {path} is {kind}: read once, at start; every generation gets \
                 its {}",
                crate::vocab::count(*count, "variable")
            ))
        }
        EnvFileRead {
            path,
            added,
            removed,
            changed,
            emptied,
        } => {
            r.str("path", path)
                .str("added", &added.join(","))
                .str("removed", &removed.join(","))
                .str("changed", &changed.join(","))
                .bool("emptied", *emptied);
            let list = |what: &str, names: &[String]| {
                (!names.is_empty()).then(|| format!("{what} {}", names.join(", ")))
            };
            let said: Vec<String> = [
                list("added", added),
                list("removed", removed),
                list("changed", changed),
            ]
            .into_iter()
            .flatten()
            .collect();
            let said = if said.is_empty() {
                "no variable changed".to_string()
            } else {
                said.join("; ")
            };
            let warning = if *emptied {
                " (it had variables and has none now: is it being rewritten?)"
            } else {
                ""
            };
            r.say(format_args!("env file {path} read: {said}{warning}"))
        }
        Release {
            generation,
            dir,
            command,
            executable,
            same_as,
            rollback_of,
            config,
            changed,
        } => {
            r.u64("generation", *generation)
                .str("dir", dir)
                .str("command", command)
                .str("executable", executable);
            if let Some(same) = same_as {
                r.u64("same_as", *same);
            }
            if let Some(of) = rollback_of {
                r.u64("rollback_of", *of);
            }
            if let Some((path, version)) = config {
                r.str("config", path).str("config_version", version);
            }
            if !changed.is_empty() {
                r.str("changed", &changed.join(", "));
            }
            let how = match (rollback_of, same_as) {
                (Some(of), _) => format!(" (a rollback to generation {of}'s release)"),
                (None, Some(same)) if !changed.is_empty() => {
                    format!(" (the very files generation {same} ran)")
                }
                (None, Some(same)) => format!(
                    " (the very files generation {same} ran: only the environment may differ)"
                ),
                (None, None) => String::new(),
            };
            let changed = if changed.is_empty() {
                String::new()
            } else {
                format!("; changed: {}", changed.join(", "))
            };
            r.say(format_args!(
                "generation {generation}: {dir}, {command}{how}{changed}"
            ))
        }
        ReleaseRewritten {
            generation,
            what,
            path,
        } => {
            r.u64("generation", *generation)
                .str("what", what)
                .str("path", path);
            r.say(format_args!(
                "generation {generation}'s {what} {path} was rewritten in place since the \
                 generation was made: its workers start with it as it is now (reload to make \
                 that a generation of its own)"
            ))
        }
        WorkdirMoved {
            cwd,
            reached_as,
            now,
        } => {
            r.str("cwd", cwd)
                .str("reached_as", reached_as)
                .str("now", now);
            r.say(format_args!(
                "the master's working directory is {cwd}, reached as {reached_as}, which now \
                 leads to {now}: the new workers start in {cwd} too; to follow {reached_as} at \
                 each reload, run rcluster with --chdir {reached_as}"
            ))
        }
        MetricsEndpoint { addr } => {
            r.str("addr", addr);
            r.say(format_args!("serving metrics at http://{addr}/metrics"))
        }
        Listening { name, addr } => {
            r.str("listener", name).str("addr", addr);
            r.say(format_args!("listening on {addr} ({name})"))
        }
        ListenerClosed { name, addr } => {
            r.str("listener", name).str("addr", addr);
            r.say(format_args!(
                "stopped listening on {addr} ({name}): no worker has it any more"
            ))
        }
        WorkerSpawned {
            slot,
            pid,
            generation,
        } => {
            r.slot(*slot).pid(*pid).u64("generation", *generation);
            r.say(format_args!(
                "{} spawned (generation {generation})",
                worker(*slot, *pid)
            ))
        }
        WorkerStarted { slot, pid } => {
            r.slot(*slot).pid(*pid);
            r.say(format_args!(
                "{} started (exec succeeded)",
                worker(*slot, *pid)
            ))
        }
        WorkerReady {
            slot,
            pid,
            generation,
            startup,
            by,
            hold,
        } => {
            let words = ready_by(by, *pid);
            r.slot(*slot)
                .pid(*pid)
                .u64("generation", *generation)
                .ms("startup_ms", *startup)
                .str("ready_by", by.name());
            if let ReadyBy::Notify { sender } = by {
                r.put("sender", Value::I64(sender.as_raw().into()));
            }
            if let Some(hold) = hold {
                r.ms("hold_ms", *hold);
            }
            let hold = match hold {
                Some(hold) => format!(
                    "; the reload's canary: the worker it replaces stops once it has \
                     stayed ready {} (--min-ready)",
                    human(*hold)
                ),
                None => String::new(),
            };
            r.say(format_args!(
                "{} ready after {} ({words}){hold}",
                worker(*slot, *pid),
                human(*startup)
            ))
        }
        ReadinessLearned { slot, pid } => {
            r.slot(*slot).pid(*pid);
            r.say(format_args!(
                "{} said READY=1: from now on a new worker is ready only when it says \
                 so (within --ready-timeout), not after --min-uptime",
                worker(*slot, *pid)
            ))
        }
        ReadyByTimerOnly { slot, pid, after } => {
            r.slot(*slot).pid(*pid).ms("after_ms", *after);
            r.say(format_args!(
                "{} is ready only because --ready {} passed: earlier workers said READY=1 and \
                 this one did not (is its notify call failing? `rcluster notify` may not be on \
                 its PATH: use $RCLUSTER_BIN); every start waits out the timer (said once)",
                worker(*slot, *pid),
                human(*after)
            ))
        }
        CanaryProven {
            slot,
            pid,
            held,
            batch,
        } => {
            r.slot(*slot)
                .pid(*pid)
                .ms("held_ms", *held)
                .u64("batch", *batch as u64);
            r.say(format_args!(
                "{} stayed ready {}: the reload goes on, {} at a time",
                worker(*slot, *pid),
                human(*held),
                count(*batch, "worker")
            ))
        }
        NotServing { slot, pid, after } => {
            r.slot(*slot).pid(*pid).ms("after_ms", *after);
            r.say(format_args!(
                "{} is alive but idle and not waiting on its listeners {} after it started: \
                 it does not serve; stopping it",
                worker(*slot, *pid),
                human(*after)
            ))
        }
        WorkersReady { workers, startup } => {
            r.u64("workers", *workers as u64).ms("startup_ms", *startup);
            let all = match workers {
                1 => "the worker is".to_string(),
                n => format!("all {n} workers are"),
            };
            r.say(format_args!("{all} ready after {}", human(*startup)))
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
            drained,
            last_line,
        } => {
            r.slot(*slot)
                .pid(*pid)
                .u64("generation", *generation)
                .exit(*exit);
            if let Some(errno) = exec_error {
                r.str("exec_error", &errno_name(*errno));
            }
            r.ms("uptime_ms", *uptime)
                .bool("killed_by_rcluster", *killed_by_us)
                .bool("drained", *drained);
            if let Some(line) = last_line {
                r.str("last_line", line);
            }
            match next {
                Next::Restart { delay, attempt } => {
                    r.str("next", "restart")
                        .ms("restart_in_ms", *delay)
                        .u64("attempt", (*attempt).into());
                }
                Next::Stopped(why) => {
                    r.str("next", "none").str("reason", &stop_reason(why));
                }
                Next::SlotServed | Next::NotRestarted => {
                    r.str("next", "none");
                }
                Next::GiveUp => {
                    r.str("next", "give up");
                }
            }
            let how = match exec_error {
                Some(errno) => format!("could not exec the command ({})", errno_name(*errno)),
                None => format!("{exit} after {}", human(*uptime)),
            };
            let sigkill = matches!(
                exit,
                Exit::Signaled {
                    signal: libc::SIGKILL,
                    ..
                }
            );
            let not_ours = if sigkill && !killed_by_us {
                " (not sent by rcluster: out of memory?)"
            } else if *drained && *exit != Exit::Code(0) {
                // The shim's hand-over: the server's own end of the signal.
                ", once the drain had closed all its connections"
            } else {
                ""
            };
            // What it said last, for an end nobody asked for, or a drain
            // that did not end cleanly.
            let unclean = match next {
                Next::Stopped(why) => unclean_drain(why, exit, *killed_by_us, *drained),
                _ => false,
            };
            let said = match (last_line, next) {
                _ if unclean => format!(
                    "; it did not exit cleanly while draining, so requests in flight were \
                     probably lost{}",
                    last_line
                        .as_ref()
                        .map(|l| format!("; its last line on stderr: {l}"))
                        .unwrap_or_default()
                ),
                (Some(line), Next::Restart { .. } | Next::SlotServed | Next::GiveUp) => {
                    format!("; its last line on stderr: {line}")
                }
                _ => String::new(),
            };
            r.say(format_args!(
                "{} {how}{not_ours}; {}{said}",
                worker(*slot, *pid),
                next_text(next)
            ))
        }
        WorkerStatus {
            slot,
            pid,
            status,
            unlogged,
        } => {
            r.slot(*slot)
                .pid(*pid)
                .str("status", status)
                .u64("unlogged", (*unlogged).into());
            let unlogged = match unlogged {
                0 => String::new(),
                n => format!(" ({n} earlier changes not logged)"),
            };
            r.say(format_args!(
                "{} status: {status}{unlogged}",
                worker(*slot, *pid)
            ))
        }
        WorkerStopping { slot, pid } => {
            r.slot(*slot).pid(*pid);
            r.say(format_args!(
                "{} said STOPPING=1; starting its replacement",
                worker(*slot, *pid)
            ))
        }
        WorkerDraining { slot, pid, why } => {
            let why = stop_reason(why);
            r.slot(*slot).pid(*pid).str("reason", &why);
            r.say(format_args!("{} draining ({why})", worker(*slot, *pid)))
        }
        SpawnFailed { slot, error } => {
            r.slot(*slot).str("error", error);
            r.say(format_args!("could not start worker {slot}: {error}"))
        }
        NotReady {
            slot,
            pid,
            timeout,
            listening,
        } => {
            r.slot(*slot).pid(*pid).ms("timeout_ms", *timeout);
            let hint = match listening {
                Some(true) => {
                    "; it waits on its listeners but never said READY=1, which earlier workers \
                     did (is its notify call still there, and `rcluster` on its PATH?)"
                }
                Some(false) => "; earlier workers said READY=1, this one never did",
                None => "",
            };
            if let Some(listening) = listening {
                r.bool("listening", *listening);
            }
            r.say(format_args!(
                "{} not ready within {} (--ready-timeout); killing it{hint}",
                worker(*slot, *pid),
                human(*timeout)
            ))
        }
        WatchdogTimeout { slot, pid, timeout } => {
            r.slot(*slot).pid(*pid).ms("timeout_ms", *timeout);
            r.say(format_args!(
                "{} sent no WATCHDOG=1 for {}; sending SIGABRT and replacing it",
                worker(*slot, *pid),
                human(*timeout)
            ))
        }
        StopTimeout { slot, pid, timeout } => {
            r.slot(*slot).pid(*pid).ms("timeout_ms", *timeout);
            r.say(format_args!(
                "{} still running {} after its stop signal (--stop-timeout); \
                 sending SIGKILL to its process group",
                worker(*slot, *pid),
                human(*timeout)
            ))
        }
        ReloadStarted {
            generation,
            workers,
        } => {
            r.u64("generation", *generation)
                .u64("workers", *workers as u64);
            r.say(format_args!(
                "reload started: replacing {} with generation {generation}",
                count(*workers, "worker")
            ))
        }
        BackoffCut {
            slot,
            was_due_in,
            generation,
        } => {
            r.slot(*slot)
                .ms("was_due_in_ms", *was_due_in)
                .u64("generation", *generation);
            r.say(format_args!(
                "worker {slot} was to restart in {} (crash-loop backoff); \
                 starting generation {generation} now, with a fresh backoff",
                human(*was_due_in)
            ))
        }
        ReloadRetargeted { generation } => {
            r.u64("generation", *generation);
            r.say(format_args!(
                "reload already running; it now replaces every worker with generation {generation}"
            ))
        }
        ReloadComplete {
            generation,
            duration,
        } => {
            r.u64("generation", *generation)
                .ms("duration_ms", *duration);
            r.say(format_args!(
                "reload complete: every worker is generation {generation}, in {}",
                human(*duration)
            ))
        }
        ReloadAborted {
            generation,
            slot,
            pid,
            cause,
            old_serving,
        } => {
            r.u64("generation", *generation).slot(*slot);
            if let Some(pid) = pid {
                r.pid(*pid);
            }
            r.str("cause", cause)
                .u64("old_serving", *old_serving as u64);
            r.say(format_args!(
                "reload aborted: the new worker {slot} (generation {generation}) {cause}; \
                 {} of older generations keep serving; send HUP to try again",
                count(*old_serving, "worker")
            ))
        }
        Scaled { workers } => {
            r.u64("workers", *workers as u64);
            r.say(format_args!("scaled to {}", count(*workers, "worker")))
        }
        StopRequested { graceful, timeout } => {
            r.bool("graceful", *graceful).ms("timeout_ms", *timeout);
            if *graceful {
                r.say(format_args!(
                    "graceful stop: workers drain for up to {} (press Ctrl-C again, or send QUIT, to stop now)",
                    human(*timeout)
                ))
            } else {
                r.say(format_args!("immediate stop: killing every worker"))
            }
        }
        GivingUp {
            slot,
            crashes,
            max_restarts,
        } => {
            r.slot(*slot)
                .u64("crashes", (*crashes).into())
                .u64("max_restarts", (*max_restarts).into());
            r.say(format_args!(
                "giving up: worker {slot} exited {crashes} times in a row before --min-uptime \
                 (--max-restarts {max_restarts})"
            ))
        }
        Stopped { code } => {
            r.u64("code", (*code).into());
            r.say(format_args!("stopped (exit code {code})"))
        }
        SignalIgnored { signal, why } => {
            r.str("signal", signal).str("reason", why);
            r.say(format_args!("{signal} ignored: {why}"))
        }
        OrphanReaped { pid, exit } => {
            r.pid(*pid).exit(*exit);
            r.say(format_args!("reaped orphan pid {pid}: {exit}"))
        }
        StraysStopping { pids, timeout } => {
            let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            r.str("pids", &list.join(",")).ms("timeout_ms", *timeout);
            r.say(format_args!(
                "{} the workers started outlived them (pid {}); stopping them, SIGKILL after {}",
                count(pids.len(), "process"),
                list.join(", "),
                human(*timeout)
            ))
        }
        StrayKilled { pid } => {
            r.pid(*pid);
            r.say(format_args!(
                "process {pid}, left behind by a worker, did not stop; sent SIGKILL to it and its group"
            ))
        }
        NotifyIgnored { pid, why } => {
            r.pid(*pid).str("reason", why);
            r.say(format_args!("notify message from pid {pid} ignored: {why}"))
        }
        OwnPorts { pid, ports, ours } => {
            let list =
                |items: &mut dyn Iterator<Item = String>| items.collect::<Vec<_>>().join(", ");
            let ports = list(&mut ports.iter().map(u16::to_string));
            let ours = list(&mut ours.iter().cloned());
            r.pid(*pid).str("ports", &ports).str("listen", &ours);
            r.say(format_args!(
                "worker (pid {pid}) listens on port {ports}, a socket of its own, not only on the \
                 one rcluster passed it ({ours}): clients of port {ports} bypass rcluster, and \
                 no other worker can bind it; have the server use fd 3 (LISTEN_FDS), or run \
                 rcluster with --adopt-bind (docs/servers.md: \"A server that binds its own port\")"
            ))
        }
        WorkerRecycled { slot, pid, reason } => {
            r.slot(*slot).pid(*pid).str("reason", reason.name());
            if let RecycleReason::Memory { rss, limit } = reason {
                r.u64("rss_bytes", *rss).u64("limit_bytes", *limit);
            }
            if let RecycleReason::Age { limit } = reason {
                r.ms("age_limit_ms", *limit);
            }
            r.say(format_args!(
                "{} recycled ({}): its successor starts now; it drains once that one is ready",
                worker(*slot, *pid),
                recycle_reason(reason)
            ))
        }
        ProbeFailed {
            slot,
            pid,
            cause,
            streak,
            failures,
        } => {
            r.slot(*slot)
                .pid(*pid)
                .str("cause", cause)
                .u64("streak", u64::from(*streak))
                .u64("failures", u64::from(*failures));
            r.say(format_args!(
                "{} failed its probe: {cause} ({streak} of {failures} in a row)",
                worker(*slot, *pid)
            ))
        }
        ProbeUnattributed { outcome } => {
            r.str("outcome", outcome);
            r.say(format_args!(
                "a probe ({outcome}) could not be told from which worker: none held its \
                 connection when it ended (not accepted in time, or closed right after the \
                 answer). Under the shared queue a probe is judged by the worker holding it, so \
                 the server must keep an HTTP/1.1 connection open after answering; \
                 --balance reuseport steers each probe instead (said once)"
            ))
        }
        ProbePassing { slot, pid, after } => {
            r.slot(*slot).pid(*pid).u64("after", u64::from(*after));
            r.say(format_args!(
                "{} passes its probe again, after {}",
                worker(*slot, *pid),
                count(*after as usize, "failure")
            ))
        }
        ProbeReplacingPaused {
            slot,
            pid,
            failing,
            workers,
        } => {
            r.slot(*slot)
                .pid(*pid)
                .u64("failing", *failing as u64)
                .u64("workers", *workers as u64);
            r.say(format_args!(
                "the successor of {}, replaced for failing its probes, failed them too                  ({failing} of {} failing): the cause is not one worker's (a service they all                  need?); no more workers are replaced for their probes until a probe passes                  again, and the workers keep serving",
                worker(*slot, *pid),
                count(*workers, "worker")
            ))
        }
        ReloadRefused { cause, serving } => {
            r.str("cause", cause).u64("generation", *serving);
            r.say(format_args!(
                "reload aborted before it started: {cause}; generation {serving} keeps serving"
            ))
        }
        OsError { op, error } => {
            r.str("op", op).str("error", error);
            r.say(format_args!("{op} failed: {error}"))
        }
        WorkerOutput {
            slot,
            pid,
            stream,
            line,
        } => {
            r.slot(*slot)
                .pid(*pid)
                .str("stream", stream)
                .str("line", line);
            r.say(format_args!("[{slot}] {line}"))
        }
        ControlMoved { from, to, why } => {
            r.str("path", to).str("taken", from).str("error", why);
            r.say(format_args!(
                "control socket at {to}: {from} is taken ({why})"
            ))
        }
        LosesRequests { server, cure } => {
            r.str("server", server).str("cure", cure);
            r.say(format_args!(
                "{server} closes idle keep-alive connections at once when told to stop: without \
                 {cure} it loses requests at every reload; run rcluster with {cure}"
            ))
        }
        UpgradeWaiting { why } => {
            r.str("why", why);
            r.say(format_args!("upgrade waits: {why}"))
        }
        UpgradeChecking { exe } => {
            r.str("exe", exe);
            r.say(format_args!("upgrade: checking that {exe} can take over"))
        }
        UpgradeFailed { cause } => {
            r.str("cause", cause);
            r.say(format_args!(
                "upgrade failed: {cause}; this master serves on with its workers"
            ))
        }
        Upgrading { from, to, exe } => {
            r.str("from", from).str("to", to).str("exe", exe);
            r.say(format_args!(
                "upgrading rcluster {from} to {to} ({exe}) in place: same pid, same workers"
            ))
        }
        Upgraded {
            from,
            to,
            duration,
            workers,
        } => {
            r.str("from", from)
                .str("to", to)
                .ms("duration_ms", *duration)
                .u64("workers", *workers as u64);
            r.say(format_args!(
                "upgraded rcluster {from} to {to} in {}; {workers} workers kept",
                human(*duration)
            ))
        }
        LogLost { lines, error } => {
            r.u64("lines", *lines).str("error", error);
            let why = if error.is_empty() {
                "its reader was too slow".to_string()
            } else {
                error.clone()
            };
            r.say(format_args!(
                "{} could not be written ({why}); they are lost",
                count(*lines as usize, "log line")
            ))
        }
        LogReopened { path } => {
            r.str("path", path);
            r.say(format_args!("reopened the log file {path}"))
        }
        SlowTurn {
            took,
            handled,
            steps,
        } => {
            r.ms("took_ms", *took)
                .str("handled", handled)
                .str("steps", steps);
            let within = if steps.is_empty() {
                String::new()
            } else {
                format!(" (the slow steps, innermost first: {steps})")
            };
            r.say(format_args!(
                "the master was busy for {} handling {handled}{within}: nothing else was done \
                 meanwhile",
                human(*took)
            ))
        }
        Control { path, error } => {
            r.str("path", path);
            match error {
                None => r.say(format_args!("control socket at {path}")),
                Some(error) => {
                    r.str("error", error);
                    r.say(format_args!(
                        "no control socket: {path}: {error} \
                         (rcluster status needs one; pass --control PATH)"
                    ))
                }
            }
        }
    }
}

/// A record's sentence, for people.
pub fn sentence(record: &Record) -> String {
    struct Sentence(String);
    impl Out for Sentence {
        fn field(&mut self, _: &'static str, _: Value<'_>) {}
        fn sentence(&mut self, text: fmt::Arguments<'_>) {
            // Writing to a String cannot fail.
            let _ = self.0.write_fmt(text);
        }
    }
    let mut out = Sentence(String::new());
    render(record, &mut out);
    out.0
}

/// A record's fields, as slog key-values: the JSON log's keys.
impl slog::KV for Record {
    fn serialize(&self, _: &slog::Record<'_>, s: &mut dyn slog::Serializer) -> slog::Result {
        struct Fields<'s> {
            s: &'s mut dyn slog::Serializer,
            result: slog::Result,
        }
        impl Out for Fields<'_> {
            fn field(&mut self, key: &'static str, value: Value<'_>) {
                if self.result.is_err() {
                    return;
                }
                self.result = match value {
                    Value::U64(v) => self.s.emit_u64(key, v),
                    Value::I64(v) => self.s.emit_i64(key, v),
                    Value::Bool(v) => self.s.emit_bool(key, v),
                    Value::Str(v) => self.s.emit_str(key, v),
                };
            }
            fn sentence(&mut self, _: fmt::Arguments<'_>) {}
        }
        let mut out = Fields { s, result: Ok(()) };
        render(self, &mut out);
        out.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::slot::StopReason;
    use crate::vocab::Pid;
    use std::time::Duration;

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
            drained: false,
            last_line: None,
        };
        assert_eq!(
            sentence(&rec),
            "worker 2 (pid 4121) killed by SIGKILL after 3.2s (not sent by rcluster: out of memory?); restarting now"
        );
        // Asked to drain, it failed: requests were probably lost.
        let exited = |code, last_line: Option<&str>| Record::WorkerExited {
            slot: 2,
            pid: Pid::from_raw(4121),
            generation: 1,
            exit: Exit::Code(code),
            exec_error: None,
            uptime: Duration::from_millis(3200),
            next: Next::Stopped(StopReason::Replaced { by: 2 }),
            killed_by_us: false,
            drained: false,
            last_line: last_line.map(String::from),
        };
        let drained = exited(1, Some("close tcp: use of closed network connection"));
        assert_eq!(drained.level(), slog::Level::Warning);
        assert!(
            sentence(&drained).ends_with(
                "; it did not exit cleanly while draining, so requests in flight were probably \
                 lost; its last line on stderr: close tcp: use of closed network connection"
            ),
            "{}",
            sentence(&drained)
        );
        assert_eq!(exited(0, None).level(), slog::Level::Info);
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        let one = Record::Started {
            pid: 1,
            workers: 1,
            version: "0",
        };
        assert!(sentence(&one).ends_with(", 1 worker"), "{}", sentence(&one));
        let ready = Record::WorkersReady {
            workers: 1,
            startup: Duration::from_millis(3),
        };
        assert_eq!(sentence(&ready), "the worker is ready after 3ms");
    }

    #[test]
    fn a_release_says_where_and_what_and_a_moved_directory_names_the_fix() {
        let release = |same_as, rollback_of| Record::Release {
            generation: 2,
            dir: "/srv/app/releases/2".into(),
            command: "python3 server.py".into(),
            executable: "/usr/bin/python3".into(),
            same_as,
            rollback_of,
            config: None,
            changed: Vec::new(),
        };
        assert_eq!(
            sentence(&release(None, None)),
            "generation 2: /srv/app/releases/2, python3 server.py"
        );
        assert!(
            sentence(&release(Some(1), None))
                .ends_with("(the very files generation 1 ran: only the environment may differ)")
        );
        assert!(
            sentence(&release(None, Some(1))).ends_with("(a rollback to generation 1's release)")
        );
        let moved = Record::WorkdirMoved {
            cwd: "/srv/app/releases/1".into(),
            reached_as: "/srv/app/current".into(),
            now: "/srv/app/releases/2".into(),
        };
        assert_eq!(
            sentence(&moved),
            "the master's working directory is /srv/app/releases/1, reached as /srv/app/current, \
             which now leads to /srv/app/releases/2: the new workers start in \
             /srv/app/releases/1 too; to follow /srv/app/current at each reload, run rcluster \
             with --chdir /srv/app/current"
        );
    }
}
