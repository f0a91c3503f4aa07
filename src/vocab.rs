//! The words every part of rcluster shares: which process ([`Pid`]), which
//! position ([`SlotId`]) and queue ([`Lane`]), which release
//! ([`Generation`]), how a process ended ([`Exit`]), what the notify
//! protocol carries ([`NotifyMsg`], [`ManagerState`]), a worker's output
//! streams ([`Stream`]), the master's signals, the largest worker count,
//! and how logs write signals, errnos and durations.
//!
//! A leaf: it imports nothing of the crate, so any module may use it.

use std::fmt;
use std::time::Duration;

pub use nix::unistd::Pid;

/// A worker's stable position, `0..workers`: what `RCLUSTER_WORKER_ID` says.
pub type SlotId = usize;

/// How many reloads a worker's configuration has seen; bumped by every `HUP`.
pub type Generation = u64;

/// One of a slot's two queues, with `--balance reuseport` (else always 0).
pub type Lane = u8;

/// More workers than this is a typo, not a deployment.
pub const MAX_WORKERS: usize = 4096;

/// Every signal the master handles (and a forked worker sets back to its
/// default).
pub const MASTER_SIGNALS: &[i32] = &[
    libc::SIGHUP,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCHLD,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// This build's version: the package's, and `+TAG` when built with
/// `RCLUSTER_BUILD_TAG=TAG` (a build told apart from another of the same
/// source, as a live upgrade's test needs).
pub fn version() -> &'static str {
    match option_env!("RCLUSTER_BUILD_TAG") {
        Some(tag) => {
            static TAGGED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            TAGGED.get_or_init(|| format!("{}+{tag}", env!("CARGO_PKG_VERSION")))
        }
        None => env!("CARGO_PKG_VERSION"),
    }
}

/// A message a worker sent over the sd_notify protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyMsg {
    Ready,
    Stopping,
    Watchdog,
    Status(String),
    /// `X_RCLUSTER_DRAINED=1`: rcluster's shim (`--http-drain`,
    /// `--adopt-bind`) closed the draining worker's last connection and is
    /// about to hand the stop signal to the server, which may die of it
    /// with nothing in flight.
    Drained,
    /// `X_RCLUSTER_RESPONSES=…`: the shim's counts of the responses the
    /// worker wrote, by status class.
    Responses(Responses),
}

/// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
pub type Responses = [u64; 5];

/// The classes' names, in [`Responses`]' order.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// What the service manager above rcluster (systemd) should be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagerState {
    Ready,
    Reloading,
    Stopping,
    /// A line for `systemctl status`: what serves, how the last reload
    /// ended.
    Status(String),
}

/// A worker's output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// How a process ended, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Exit {
    Code(i32),
    Signaled { signal: i32, core_dumped: bool },
}

impl Exit {
    /// `code 1`, `SIGKILL`: the short form `rcluster status` shows.
    pub fn short(&self) -> String {
        match *self {
            Exit::Code(code) => format!("code {code}"),
            Exit::Signaled { signal, .. } => signal_name(signal),
        }
    }
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

/// `2.2M`, `50.0M`: memory in binary megabytes, the unit `--max-memory`
/// takes (`50M` is 50 MiB), so that a limit reads back as it was written.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / f64::from(1 << 20))
}

/// `500ms`, `30s`, `2m`: a duration as people write it on a command line.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|_| "expected a duration such as 500ms, 30s or 2m".to_string())
}

/// `1 worker`, `4 workers`.
pub fn count(n: usize, noun: &str) -> String {
    match (n, noun.ends_with('s')) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        (_, false) => format!("{n} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(350)), "350ms");
        assert_eq!(human(Duration::from_millis(3250)), "3.2s");
        assert_eq!(human(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn names_not_numbers() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(count(1, "worker"), "1 worker");
        assert_eq!(count(2, "worker"), "2 workers");
    }
}

/// Which version of a file's text this is, as 16 hex digits: what
/// `status` shows of an env file and of a configuration file.
pub fn digest(text: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// `--config`: a configuration file as read for a generation (what a
/// rollback to it restores, and what `status` names). What it means is
/// the start-up's business (`start/file.rs`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigFile {
    /// As given, made absolute against where rcluster started.
    pub path: std::path::PathBuf,
    pub text: String,
    /// A hash of the text, as 16 hex digits: which version of the file.
    pub digest: String,
}

impl ConfigFile {
    pub fn of(path: std::path::PathBuf, text: String) -> ConfigFile {
        let digest = digest(&text);
        ConfigFile { path, text, digest }
    }

    /// `FILE:LINE`, for a message about what is on `line`.
    pub fn at(&self, line: usize) -> String {
        format!("{}:{line}", self.path.display())
    }
}
