//! The validated configuration of a master, and every default in one place.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::launch::Capture;
use crate::launch::shim::Mode as ShimMode;
use crate::sockets::listen::ListenSpec;
use crate::start::file::ConfigFile;
use crate::start::layers::{Origin, Setting};
use crate::supervisor::policy::{Balance, Policy, ReadyRule, RestartDelay};
use crate::supervisor::probe::ProbePolicy;
use crate::supervisor::recycle::RecyclePolicy;

/// A seed for the `--max-age` jitter, from the kernel.
fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most the buffer's length.
    unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    u64::from_ne_bytes(seed)
}

pub const DEFAULT_BACKLOG: u32 = 2048;
/// `None`: a quarter of the workers, at least one (`--reload-batch auto`).
pub const DEFAULT_RELOAD_BATCH: Option<usize> = None;
/// How long a reload's canary must stay ready (`--min-ready`). 2 s, not 1:
/// a release that dies 900 ms after READY=1 left a 1 s hold only 100 ms of
/// margin, and a busy machine that starves the canary that long let it
/// pass as proven.
pub const DEFAULT_MIN_READY: Duration = Duration::from_secs(2);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MIN_UPTIME: Duration = Duration::from_secs(1);
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the workers' memory is looked at, with `--max-memory` only.
pub const MEMORY_CHECK: Duration = Duration::from_secs(5);
/// `--probe-period`, `--probe-timeout`, `--probe-failures`: Kubernetes'
/// defaults for a probe.
pub const DEFAULT_PROBE_PERIOD: Duration = Duration::from_secs(10);
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_PROBE_FAILURES: u32 = 3;

/// `--balance reuseport`: how long a worker steered away from (replaced or
/// scaled away) goes on accepting, to empty what was queued for it.
pub const RETIRE_GRACE: Duration = Duration::from_millis(250);
pub use crate::vocab::MAX_WORKERS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Where the control socket goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Off,
    /// In the user's runtime directory, as `NAME.sock` (see `rundir.rs`);
    /// if that is taken, `NAME-<pid>.sock`.
    Default,
    /// `--control PATH`: it must work.
    At(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Config {
    /// What the master is called: in its control socket's name, its status
    /// and every log record.
    pub name: String,
    pub workers: usize,
    pub listen: Vec<ListenSpec>,
    pub backlog: u32,
    /// `--balance reuseport`: a listening socket per slot for each TCP
    /// address (`balance.rs`).
    pub reuseport: bool,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub min_uptime: Duration,
    pub max_restarts: Option<u32>,
    pub restart_delay: RestartDelay,
    pub ready: ReadyRule,
    pub ready_timeout: Duration,
    pub min_ready: Duration,
    pub reload_batch: Option<usize>,
    pub watchdog: Option<Duration>,
    pub pid_file: Option<PathBuf>,
    pub control: Control,
    /// `--metrics ADDR`: where `/metrics` is served.
    pub metrics: Option<ListenSpec>,
    /// `--env-file`: read at start and at every reload.
    pub env_file: Option<PathBuf>,
    /// `--chdir`: where each generation's workers start, its symlinks
    /// resolved when the generation is made.
    pub chdir: Option<PathBuf>,
    /// `--max-memory`: resident bytes of a worker's process tree.
    pub max_memory: Option<u64>,
    pub max_age: Option<Duration>,
    pub log_format: LogFormat,
    pub log_level: slog::Level,
    pub log_file: Option<PathBuf>,
    /// Workers' stdout and stderr through the master, prefixed by slot.
    pub log_prefix: bool,
    /// Workers' stderr through the master (the default), so that it keeps
    /// their last lines.
    pub capture_stderr: bool,
    /// `--probe` and its settings.
    pub probe: Option<ProbePolicy>,
    /// `--adopt-bind` or `--http-drain`: the shim in every worker.
    pub shim: Option<ShimMode>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub command: Vec<OsString>,
    /// The run's arguments as typed (without the program's name): a
    /// reload merges them with the file again (`layers.rs`).
    pub given: Vec<OsString>,
    /// `--config`: the file as read for this configuration.
    pub file: Option<ConfigFile>,
    /// The file's `[env]`: variables for the workers (the env file's win).
    pub file_env: Vec<(String, String)>,
    /// Every setting in force, and where it came from.
    pub settings: Vec<Setting>,
}

impl Config {
    /// Every default (the command line spells the same ones as text, and
    /// its tests check that they agree). No listeners, no command, one
    /// worker, no control socket.
    pub fn defaults() -> Config {
        Config {
            name: "rcluster".into(),
            workers: 1,
            listen: Vec::new(),
            backlog: DEFAULT_BACKLOG,
            reuseport: false,
            stop_signal: libc::SIGTERM,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            min_uptime: DEFAULT_MIN_UPTIME,
            max_restarts: None,
            restart_delay: RestartDelay::default(),
            ready: ReadyRule::Auto,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            min_ready: DEFAULT_MIN_READY,
            reload_batch: DEFAULT_RELOAD_BATCH,
            watchdog: None,
            pid_file: None,
            control: Control::Off,
            metrics: None,
            env_file: None,
            chdir: None,
            max_memory: None,
            max_age: None,
            log_format: LogFormat::Human,
            log_level: slog::Level::Info,
            log_file: None,
            log_prefix: false,
            capture_stderr: true,
            probe: None,
            shim: None,
            user: None,
            group: None,
            command: Vec::new(),
            given: Vec::new(),
            file: None,
            file_env: Vec::new(),
            settings: Vec::new(),
        }
    }

    /// Where `key`'s value came from.
    pub fn origin(&self, key: &str) -> Option<Origin> {
        let setting = self.settings.iter().find(|s| s.key == key)?;
        Some(setting.origin.clone())
    }

    /// Every setting in force and where it came from, and the file's
    /// variables by name (their values may be secrets): for `status` and
    /// `rcluster config show`.
    pub fn settings_json(&self) -> serde_json::Value {
        let settings: Vec<serde_json::Value> = self
            .settings
            .iter()
            .map(|s| {
                serde_json::json!({
                    "key": s.key, "values": s.values, "origin": s.origin.to_string(),
                })
            })
            .collect();
        let env: Vec<&str> = self
            .file_env
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        serde_json::json!({
            "file": self.file.as_ref().map(|f| serde_json::json!({
                "path": f.path.display().to_string(), "version": f.digest,
            })),
            "settings": settings,
            "env": env,
        })
    }

    /// Which of each worker's streams go through the master.
    pub fn capture(&self) -> Capture {
        Capture {
            stdout: self.log_prefix,
            stderr: self.log_prefix || self.capture_stderr,
            prefixed: self.log_prefix,
        }
    }

    /// A server known to lose requests at every reload with these flags,
    /// and the flag that cures it: uvicorn closes idle keep-alive
    /// connections at once on SIGTERM (156 keep-alive and 26 close
    /// requests lost in 4 reloads without `--http-drain`). Only when the
    /// command is plainly uvicorn (`uvicorn …`, `python -m uvicorn …`).
    pub fn known_to_lose_requests(&self) -> Option<(&'static str, &'static str)> {
        let name = |arg: &std::ffi::OsString| {
            std::path::Path::new(arg)
                .file_name()
                .is_some_and(|n| n == "uvicorn")
        };
        let uvicorn = self.command.first().is_some_and(name)
            || self
                .command
                .windows(2)
                .any(|w| w[0] == "-m" && w[1] == "uvicorn");
        (uvicorn && self.shim.is_none()).then_some(("uvicorn", "--http-drain"))
    }

    /// The part of the configuration the supervisor decides with.
    pub fn policy(&self) -> Policy {
        Policy {
            workers: self.workers,
            stop_signal: self.stop_signal,
            stop_timeout: self.stop_timeout,
            min_uptime: self.min_uptime,
            max_restarts: self.max_restarts,
            restart_delay: self.restart_delay,
            ready: self.ready,
            ready_timeout: self.ready_timeout,
            min_ready: self.min_ready,
            reload_batch: self.reload_batch,
            watchdog: self.watchdog,
            recycle: RecyclePolicy {
                max_memory: self.max_memory,
                max_age: self.max_age,
                memory_check: MEMORY_CHECK,
                seed: random_seed(),
            },
            balance: self.reuseport.then_some(Balance {
                retire_grace: RETIRE_GRACE,
            }),
            probe: self.probe.clone(),
        }
    }
}
