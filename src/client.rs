//! `rcluster status | reload | scale | stop`: the commands that talk to a
//! running master through its control socket (`control.rs`); and `rcluster
//! notify`, which a worker runs to speak to its master over
//! `NOTIFY_SOCKET`, as `systemd-notify` does.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::{Value, json};

use crate::config::default_control_path;
use crate::status;

/// Exit code when no master answers (sysexits' EX_UNAVAILABLE).
pub const NO_MASTER: u8 = 69;
/// `status` when the master answers but not every slot has a ready worker.
pub const NOT_ALL_READY: u8 = 3;
/// The master did not answer in time (sysexits' EX_TEMPFAIL).
pub const TIMED_OUT: u8 = 75;

/// How long a client waits for the answer, unless `--timeout` says.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long `reload --wait` and `stop --wait` wait, unless `--timeout` says:
/// a reload may take as long as its workers take to start.
const WAIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Where the master's control socket is.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The master's control socket (default: as the master's)
    #[arg(long, env = "RCLUSTER_CONTROL", value_name = "PATH", global = true)]
    control: Option<PathBuf>,
    /// The master's pid file: the default socket is beside it
    #[arg(long, env = "RCLUSTER_PID_FILE", value_name = "PATH", global = true)]
    pid_file: Option<PathBuf>,
    /// How long to wait for the answer (default 10s; 15m with --wait)
    #[arg(long, value_name = "DUR", value_parser = crate::vocab::parse_duration, global = true)]
    timeout: Option<Duration>,
}

/// The commands that talk to a running master.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Workers, generations, states, restarts; exits 3 if a slot has no
    /// ready worker (for readiness probes)
    Status {
        /// The raw JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Replace every worker, like HUP
    Reload {
        /// Wait until the reload completes; exit 1 if it aborts
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Run N workers
    Scale {
        /// How many workers the master should run
        #[arg(value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_WORKERS as u64))]
        workers: u64,
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
    /// Stop gracefully, like TERM
    Stop {
        /// Wait until the master has stopped
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
}

impl Target {
    fn path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| default_control_path(self.pid_file.as_deref()))
    }
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

/// Runs one command against the master and says how it went.
pub fn run(command: Command) -> ExitCode {
    if let Command::Notify {
        ready,
        stopping,
        status,
        pid,
        timeout,
    } = &command
    {
        return notify(*ready, *stopping, status.as_deref(), *pid, *timeout);
    }
    let (target, request, wait) = match &command {
        Command::Status { target, .. } => (target, json!({"cmd": "status"}), false),
        Command::Reload { wait, target } => (target, json!({"cmd": "reload", "wait": wait}), *wait),
        Command::Scale { workers, target } => {
            (target, json!({"cmd": "scale", "workers": workers}), false)
        }
        Command::Stop { wait, target } => (target, json!({"cmd": "stop", "wait": wait}), *wait),
        Command::Notify { .. } => unreachable!("handled above"),
    };
    let path = target.path();
    let timeout = target
        .timeout
        .unwrap_or(if wait { WAIT_TIMEOUT } else { TIMEOUT });
    let response = match ask(&path, &request, timeout) {
        Ok(response) => response,
        Err(Failed::NoMaster(e)) => {
            complain!(
                "rcluster: no master answers at {} ({e}); is it running? pass --control PATH",
                path.display()
            );
            return ExitCode::from(NO_MASTER);
        }
        Err(Failed::TimedOut) => {
            complain!(
                "rcluster: the master at {} did not answer within {}; pass --timeout to wait longer",
                path.display(),
                crate::vocab::human(timeout)
            );
            return ExitCode::from(TIMED_OUT);
        }
        Err(Failed::Broken(why)) => {
            complain!("rcluster: the master at {} {why}", path.display());
            return ExitCode::from(NO_MASTER);
        }
    };
    if response["ok"] != true {
        let error = response["error"]
            .as_str()
            .unwrap_or("the master refused the request");
        complain!("rcluster: {error}");
        return ExitCode::FAILURE;
    }
    match command {
        Command::Notify { .. } => {}
        Command::Status { json: true, .. } => {
            say!(
                "{}",
                serde_json::to_string_pretty(&response).unwrap_or_default()
            )
        }
        Command::Status { json: false, .. } => {
            let _ = std::io::stdout().write_all(status::table(&response).as_bytes());
        }
        Command::Reload { wait: true, .. } => say!(
            "reload complete: generation {} in {} ms",
            response["generation"],
            response["duration_ms"]
        ),
        Command::Reload { wait: false, .. } => {
            say!("reload started: generation {}", response["generation"])
        }
        Command::Scale { .. } => say!("scaling to {} workers", response["workers"]),
        Command::Stop { wait: true, .. } => say!("stopped"),
        Command::Stop { wait: false, .. } => say!("stopping"),
    }
    match command {
        Command::Status { .. } if response["master"]["all_ready"] != true => {
            ExitCode::from(NOT_ALL_READY)
        }
        _ => ExitCode::SUCCESS,
    }
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
    match crate::notify::notify_and_wait(&lines.join("\n"), timeout) {
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

/// Why no answer came.
enum Failed {
    /// Nothing to connect to.
    NoMaster(std::io::Error),
    /// Connected, but the whole answer did not come before the deadline.
    TimedOut,
    /// Connected, and the connection broke (the text says how).
    Broken(String),
}

/// Sends one request and reads the one-line response, all within `timeout`.
fn ask(path: &Path, request: &Value, timeout: Duration) -> Result<Value, Failed> {
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(path).map_err(Failed::NoMaster)?;
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let mut line = request.to_string();
    line.push('\n');
    let _ = stream.set_write_timeout(Some(timeout));
    // A master that refuses us answers before reading: the answer is worth
    // more than the error our write got.
    let written = stream.write_all(line.as_bytes());
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.contains(&b'\n') {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Err(Failed::TimedOut);
        };
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => return Err(Failed::TimedOut),
            Err(e) => return Err(Failed::Broken(format!("broke the connection: {e}"))),
        }
    }
    if response.is_empty() {
        return Err(Failed::Broken(match written {
            Err(e) => format!("refused the request: {e}"),
            Ok(()) => "closed the connection without answering".into(),
        }));
    }
    serde_json::from_slice(&response)
        .map_err(|e| Failed::Broken(format!("answered something that is not JSON: {e}")))
}
