//! `rcluster status | reload | rollback | scale | stop | ls`: the commands that talk to
//! running masters through their control sockets (`server.rs`); and
//! `rcluster notify`, which a worker runs to speak to its master over
//! `NOTIFY_SOCKET`, as `systemd-notify` does.
//!
//! A master is found by `--control PATH`, or among the user's masters (the
//! control sockets in the runtime directory, `rundir.rs`) by `--name`, by
//! `--pid-file`, or as the only one; never by guessing among several.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::{Value, json};

use crate::control::rundir;
use crate::control::server::{self as control, ScaleTo};
use crate::control::view;
use crate::vocab::human;

/// Exit code when no master answers (sysexits' EX_UNAVAILABLE).
pub const NO_MASTER: u8 = 69;
/// `status` when the master answers but not every slot has a ready worker.
pub const NOT_ALL_READY: u8 = 3;
/// The master did not answer in time (sysexits' EX_TEMPFAIL).
pub const TIMED_OUT: u8 = 75;
/// Several masters could be meant (sysexits' EX_USAGE).
pub const WHICH_ONE: u8 = 64;

/// How long a client waits for the answer, unless `--timeout` says.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long `reload --wait` and `stop --wait` wait, unless `--timeout` says:
/// a reload may take as long as its workers take to start.
const WAIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Which master.
#[derive(Debug, Default, clap::Args)]
pub struct Target {
    /// The master called NAME (see `rcluster ls`)
    #[arg(long, env = "RCLUSTER_NAME", value_name = "NAME")]
    name: Option<String>,
    /// The master's control socket
    #[arg(long, env = "RCLUSTER_CONTROL", value_name = "PATH")]
    control: Option<PathBuf>,
    /// The master whose pid this file holds
    #[arg(long, env = "RCLUSTER_PID_FILE", value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// How long to wait for the answer (default 10s, or 15m for a command
    /// that waits)
    #[arg(long, value_name = "DUR", value_parser = crate::vocab::parse_duration)]
    timeout: Option<Duration>,
}

impl Target {
    /// The master a run's options name: by its control socket, its name
    /// or its pid file.
    pub fn of(name: Option<String>, control: Option<PathBuf>, pid_file: Option<PathBuf>) -> Target {
        Target {
            name,
            control,
            pid_file,
            timeout: None,
        }
    }
}

/// The commands that talk to running masters.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Workers, generations, states, restarts; exits 3 if a slot has no
    /// ready worker (for readiness probes)
    Status {
        /// The raw JSON
        #[arg(long)]
        json: bool,
        /// One slot in detail: its worker, and the last lines on stderr of
        /// the worker before it and of this one
        #[arg(long, value_name = "N")]
        slot: Option<usize>,
        #[command(flatten)]
        target: Target,
    },
    /// Every master of this user, one line each, like pm2 ls
    Ls {
        /// As JSON
        #[arg(long)]
        json: bool,
    },
    /// Replace every worker, like HUP
    Reload {
        /// Wait until the reload completes; exit 1 if it aborts
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Replace every worker with an earlier generation's release (its
    /// directory, command and environment as they were), with a reload's
    /// safety; by default the release that served before the serving one
    Rollback {
        /// Wait until the rollback completes; exit 1 if it aborts
        #[arg(long)]
        wait: bool,
        /// This generation's release (see `rcluster status`)
        #[arg(long, value_name = "GENERATION", value_parser = clap::value_parser!(u64).range(1..))]
        to: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Replace the master itself with its binary as it is now on disk,
    /// in place (same pid, same sockets, same workers), like USR2
    Upgrade {
        /// Wait until the new binary runs the master; exit 1 if the
        /// upgrade fails (the old one then serves on)
        #[arg(long)]
        wait: bool,
        /// Then replace every worker too, as a reload does
        #[arg(long)]
        reload: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Run N workers (+N: N more, -N: N fewer, auto: one per CPU)
    Scale {
        /// How many workers the master should run: 8, +1, -2 or auto
        #[arg(value_name = "N", allow_hyphen_values = true, value_parser = ScaleTo::parse)]
        workers: ScaleTo,
        #[command(flatten)]
        target: Target,
    },
    /// Stop gracefully, like TERM
    Stop {
        /// Wait until the master has stopped
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
    /// From a worker: tell its master over NOTIFY_SOCKET, and wait until the
    /// master has read it (for servers that cannot send a datagram, such as
    /// Node)
    Notify {
        /// READY=1: the worker can serve
        #[arg(long)]
        ready: bool,
        /// STOPPING=1: the worker is stopping on its own
        #[arg(long)]
        stopping: bool,
        /// STATUS=TEXT: a line the master logs
        #[arg(long, value_name = "TEXT")]
        status: Option<String>,
        /// MAINPID=PID: the worker this speaks for (it must be the worker
        /// that started this command, or an ancestor of it)
        #[arg(long, value_name = "PID")]
        pid: Option<u32>,
        /// How long to wait for the master to read the message
        #[arg(long, value_name = "DUR", default_value = "5s", value_parser = crate::vocab::parse_duration)]
        timeout: Duration,
    },
    /// `rcluster config show` with no file and no command: the running
    /// master's configuration in force.
    #[command(skip)]
    ConfigShow { target: Target },
}

/// A line on stdout; a reader that went away (`| head -1`) is no error.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A line on stderr, likewise.
macro_rules! complain {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Runs one command and says how it went.
pub fn run(command: Command) -> ExitCode {
    let (target, request, wait) = match &command {
        Command::Notify {
            ready,
            stopping,
            status,
            pid,
            timeout,
        } => return notify(*ready, *stopping, status.as_deref(), *pid, *timeout),
        Command::Ls { json } => return ls(*json),
        Command::Status {
            target,
            slot: Some(slot),
            ..
        } => (target, json!({"cmd": "status", "slot": slot}), false),
        Command::Status { target, .. } | Command::ConfigShow { target } => {
            (target, json!({"cmd": "status"}), false)
        }
        Command::Reload { wait, target } => (target, json!({"cmd": "reload", "wait": wait}), *wait),
        Command::Rollback { wait, to, target } => (
            target,
            json!({"cmd": "rollback", "wait": wait, "to": to}),
            *wait,
        ),
        Command::Upgrade {
            wait,
            reload,
            target,
        } => return upgrade(*wait, *reload, target),
        Command::Scale { workers, target } => (target, workers.json(), false),
        Command::Stop { wait, target } => (target, json!({"cmd": "stop", "wait": wait}), *wait),
    };
    let response = match ask(target, &request, wait) {
        Ok(response) => response,
        Err(code) => return code,
    };
    if response["ok"] != true {
        let error = response["error"]
            .as_str()
            .unwrap_or("the master refused the request");
        complain!("rcluster: {error}");
        return ExitCode::FAILURE;
    }
    say_answer(&command, &response);
    match command {
        Command::Status { .. } if response["master"]["all_ready"] != true => {
            ExitCode::from(NOT_ALL_READY)
        }
        _ => ExitCode::SUCCESS,
    }
}

fn verb(command: &Command) -> &'static str {
    match command {
        Command::Rollback { .. } => "rollback",
        _ => "reload",
    }
}

/// `: /srv/app/releases/2, python3 server.py`, for a master that knows
/// its releases.
fn release_text(release: &Value) -> String {
    match (release["dir"].as_str(), release["command"].as_str()) {
        (Some(dir), Some(command)) => {
            let of = match release["rollback_of"].as_u64() {
                Some(of) => format!(" (generation {of}'s release)"),
                None => String::new(),
            };
            format!(": {dir}, {command}{of}")
        }
        _ => String::new(),
    }
}

/// Says what the master answered, in the command's words.
fn say_answer(command: &Command, response: &Value) {
    match command {
        Command::Status { json: true, .. } => {
            say!(
                "{}",
                serde_json::to_string_pretty(&response).unwrap_or_default()
            )
        }
        Command::Status {
            json: false,
            slot: None,
            ..
        } => {
            let _ = std::io::stdout().write_all(view::table(response).as_bytes());
        }
        Command::Status {
            json: false,
            slot: Some(_),
            ..
        } => {
            let _ = std::io::stdout().write_all(view::slot_view(response).as_bytes());
        }
        Command::ConfigShow { .. } => {
            let table = view::config_table(&response["master"]["config"]);
            let _ = std::io::stdout().write_all(table.as_bytes());
        }
        Command::Reload { wait: true, .. } | Command::Rollback { wait: true, .. } => say!(
            "{} complete: generation {} in {} ms{}",
            verb(command),
            response["generation"],
            response["duration_ms"],
            release_text(&response["release"])
        ),
        Command::Reload { wait: false, .. } | Command::Rollback { wait: false, .. } => say!(
            "{} started: generation {}{}",
            verb(command),
            response["generation"],
            release_text(&response["release"])
        ),
        Command::Scale { .. } if response["from"] == response["workers"] => {
            say!("already at {} workers", response["workers"])
        }
        Command::Scale { .. } => match response["from"].as_u64() {
            Some(from) => say!("scaling from {from} to {} workers", response["workers"]),
            None => say!("scaling to {} workers", response["workers"]),
        },
        Command::Stop { wait: true, .. } => say!("stopped"),
        Command::Stop { wait: false, .. } => say!("stopping"),
        Command::Ls { .. } | Command::Notify { .. } | Command::Upgrade { .. } => {}
    }
}

/// `rcluster upgrade`: asked, then (`wait`) watched through `status` until
/// the new image answers, or the master says the attempt failed. The
/// control socket stays open across the `execve`: a `status` sent then
/// waits in its queue for the new image.
fn upgrade(wait: bool, reload: bool, target: &Target) -> ExitCode {
    let request = json!({"cmd": "upgrade", "reload": reload});
    let answer = match ask(target, &request, false) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    if answer["ok"] != true {
        let error = answer["error"].as_str().unwrap_or("the master refused");
        complain!("rcluster: upgrade refused: {error}");
        return ExitCode::FAILURE;
    }
    let exe = answer["exe"].as_str().unwrap_or("?");
    if !wait {
        say!("upgrade started: {exe}");
        return ExitCode::SUCCESS;
    }
    let (attempt, done) = (answer["attempt"].as_u64(), answer["done"].as_u64());
    let Ok(path) = find(target) else {
        return ExitCode::from(NO_MASTER);
    };
    let pid = answer["pid"].as_i64().unwrap_or_default();
    let deadline = Instant::now() + target.timeout.unwrap_or(WAIT_TIMEOUT);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let status = match control::ask(&path, &json!({"cmd": "status"}), TIMEOUT) {
            Ok(status) => status,
            // The control socket stays open across the exec: nobody
            // listening, and no process, means the master died.
            Err(control::Failed::NoMaster(_)) if !alive(pid) => {
                complain!(
                    "rcluster: the master (pid {pid}) died during the upgrade; its workers are \
                     stopped within --stop-timeout; see its log for why"
                );
                return ExitCode::from(NO_MASTER);
            }
            Err(_) => continue,
        };
        let master = &status["master"];
        let upgrades = &master["upgrades"];
        if upgrades["done"].as_u64() > done {
            let last = &upgrades["last"];
            say!(
                "upgrade complete: rcluster {} to {} in {} ms; pid {}, {} workers kept{}",
                last["from"].as_str().unwrap_or("?"),
                master["version"].as_str().unwrap_or("?"),
                last["duration_ms"],
                master["pid"],
                status["workers"]
                    .as_array()
                    .map_or(0, |rows| rows.iter().filter(|w| w["pid"].is_i64()).count()),
                if reload { "; reload started" } else { "" }
            );
            return ExitCode::SUCCESS;
        }
        if upgrades["failed"]["attempt"].as_u64() == attempt {
            let cause = upgrades["failed"]["cause"].as_str().unwrap_or("?");
            complain!("rcluster: upgrade failed: {cause}; the master serves on with its workers");
            return ExitCode::FAILURE;
        }
    }
    complain!("rcluster: the upgrade did not finish in time; see rcluster status and the log");
    ExitCode::from(TIMED_OUT)
}

/// Whether process `pid` runs (a zombie does not). 0, an answer from a
/// master that did not say its pid, counts as running.
fn alive(pid: i64) -> bool {
    if pid <= 0 {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// The master `target` names, asked `request`: its answer, or (having
/// said why on stderr) the exit code.
fn ask(target: &Target, request: &Value, wait: bool) -> Result<Value, ExitCode> {
    let path = find(target).map_err(|(code, message)| {
        complain!("rcluster: {message}");
        ExitCode::from(code)
    })?;
    let timeout = target
        .timeout
        .unwrap_or(if wait { WAIT_TIMEOUT } else { TIMEOUT });
    let (code, why) = match control::ask(&path, request, timeout) {
        Ok(response) => return Ok(response),
        Err(control::Failed::NoMaster(e)) => (
            NO_MASTER,
            format!(
                "no master answers at {} ({e}); is it running? see rcluster ls",
                path.display()
            ),
        ),
        Err(control::Failed::TimedOut) => (
            TIMED_OUT,
            format!(
                "the master at {} did not answer within {}; it is running but busy, or \
                 stopped (SIGSTOP); pass --timeout to wait longer",
                path.display(),
                human(timeout)
            ),
        ),
        Err(control::Failed::Busy) => (
            TIMED_OUT,
            format!(
                "the master at {} is running, but too busy to take a client just now (its \
                 queue is full); try again",
                path.display()
            ),
        ),
        // It took the connection: it runs.
        Err(control::Failed::Broken(why)) => (
            TIMED_OUT,
            format!("the master at {} {why}; try again", path.display()),
        ),
    };
    complain!("rcluster: {why}");
    Err(ExitCode::from(code))
}

/// A master found in the runtime directory.
struct Found {
    path: PathBuf,
    status: Value,
}

impl Found {
    fn name(&self) -> &str {
        self.status["master"]["name"].as_str().unwrap_or("-")
    }

    fn pid(&self) -> u64 {
        self.status["master"]["pid"].as_u64().unwrap_or_default()
    }
}

/// Every master of this user that answers, by name.
fn discover() -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(rundir::location()) else {
        return Vec::new();
    };
    let mut found: Vec<Found> = entries
        .flatten()
        .filter(|e| {
            use std::os::unix::fs::FileTypeExt;
            e.file_type().is_ok_and(|t| t.is_socket())
        })
        .filter_map(|e| {
            let path = e.path();
            let status =
                control::ask(&path, &json!({"cmd": "status"}), control::PROBE_TIMEOUT).ok()?;
            status["master"]["pid"]
                .is_u64()
                .then_some(Found { path, status })
        })
        .collect();
    found.sort_by(|a, b| (a.name(), a.pid()).cmp(&(b.name(), b.pid())));
    found
}

/// The control socket of the master `target` means, or the exit code and
/// line saying why there is none, or which ones there are.
fn find(target: &Target) -> Result<PathBuf, (u8, String)> {
    if let Some(path) = &target.control {
        return Ok(path.clone());
    }
    let pid = match &target.pid_file {
        None => None,
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| {
                (
                    NO_MASTER,
                    format!("cannot read the pid file {}: {e}", file.display()),
                )
            })?;
            Some(text.trim().parse::<u64>().map_err(|_| {
                (
                    NO_MASTER,
                    format!("the pid file {} holds no pid", file.display()),
                )
            })?)
        }
    };
    let all = discover();
    let total = all.len();
    let mut candidates: Vec<Found> = all
        .into_iter()
        .filter(|f| target.name.as_deref().is_none_or(|n| f.name() == n))
        .filter(|f| pid.is_none_or(|p| f.pid() == p))
        .collect();
    let dir = rundir::location();
    match candidates.len() {
        1 => Ok(candidates.remove(0).path),
        0 => {
            let which = match (&target.name, pid) {
                (Some(name), _) => format!("named {name}"),
                (None, Some(pid)) => format!("with pid {pid}"),
                (None, None) => "at all".into(),
            };
            let others = if total > 0 {
                format!("; {total} other(s) do (see rcluster ls)")
            } else {
                String::new()
            };
            Err((
                NO_MASTER,
                format!(
                    "no master of this user runs {which} (looked in {}{others}); \
                     pass --control PATH for one elsewhere",
                    dir.display()
                ),
            ))
        }
        _ => {
            let list: Vec<String> = candidates
                .iter()
                .map(|f| format!("{} (pid {})", f.name(), f.pid()))
                .collect();
            Err((
                WHICH_ONE,
                format!(
                    "{} masters run: {}; say which with --name NAME or --control PATH",
                    candidates.len(),
                    list.join(", ")
                ),
            ))
        }
    }
}

/// `rcluster ls`: every master of this user.
fn ls(json: bool) -> ExitCode {
    let found = discover();
    if json {
        let list: Vec<Value> = found
            .iter()
            .map(|f| {
                let m = &f.status["master"];
                json!({
                    "name": f.name(),
                    "pid": f.pid(),
                    "control": f.path,
                    "workers": m["workers"],
                    "ready": ready_workers(&f.status),
                    "generation": m["generation"],
                    "uptime_ms": m["uptime_ms"],
                    "stopping": m["stopping"],
                })
            })
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    if found.is_empty() {
        say!(
            "no master of this user runs (looked in {})",
            rundir::location().display()
        );
        return ExitCode::SUCCESS;
    }
    let mut rows = vec![["name", "pid", "ready", "gen", "uptime", "control"].map(String::from)];
    for f in &found {
        let m = &f.status["master"];
        rows.push([
            f.name().to_string(),
            f.pid().to_string(),
            format!("{}/{}", ready_workers(&f.status), m["workers"]),
            m["generation"].to_string(),
            m["uptime_ms"]
                .as_u64()
                .map(|ms| human(Duration::from_millis(ms)))
                .unwrap_or_default(),
            f.path.display().to_string(),
        ]);
    }
    let _ = std::io::stdout()
        .write_all(view::columns(&rows, &[false, true, true, true, true, false]).as_bytes());
    ExitCode::SUCCESS
}

/// How many slots have a ready worker.
fn ready_workers(status: &Value) -> usize {
    let mut slots: Vec<u64> = status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["state"] == "ready")
        .filter_map(|w| w["slot"].as_u64())
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots.len()
}

/// `rcluster notify`: one message, then wait until the master has read it
/// (so the message is still traceable to this process's worker).
fn notify(
    ready: bool,
    stopping: bool,
    status: Option<&str>,
    pid: Option<u32>,
    timeout: Duration,
) -> ExitCode {
    let mut lines = Vec::new();
    if ready {
        lines.push("READY=1".to_string());
    }
    if stopping {
        lines.push("STOPPING=1".to_string());
    }
    if let Some(status) = status {
        lines.push(format!("STATUS={}", status.replace('\n', " ")));
    }
    if let Some(pid) = pid {
        lines.push(format!("MAINPID={pid}"));
    }
    if lines.is_empty() {
        complain!("rcluster: nothing to say: pass --ready, --stopping or --status");
        return ExitCode::from(64);
    }
    match crate::sockets::notify::notify_and_wait(&lines.join("\n"), timeout) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            complain!(
                "rcluster: NOTIFY_SOCKET is not set: this process was not started by rcluster or systemd"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            complain!("rcluster: telling the master over NOTIFY_SOCKET failed: {e}");
            ExitCode::FAILURE
        }
    }
}
