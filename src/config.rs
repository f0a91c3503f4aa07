//! The validated configuration of a master, and every default in one place.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::listen::ListenSpec;
use crate::supervisor::event::{Policy, ReadyRule};

pub const DEFAULT_BACKLOG: u32 = 2048;
pub const DEFAULT_RELOAD_BATCH: usize = 1;
/// More workers than this is a typo, not a deployment.
pub const MAX_WORKERS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub workers: usize,
    pub listen: Vec<ListenSpec>,
    pub backlog: u32,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub min_uptime: Duration,
    pub max_restarts: Option<u32>,
    pub ready: ReadyRule,
    pub ready_timeout: Duration,
    pub reload_batch: usize,
    pub watchdog: Option<Duration>,
    pub pid_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_level: slog::Level,
    pub command: Vec<OsString>,
}

impl Config {
    /// The part of the configuration the supervisor decides with.
    pub fn policy(&self) -> Policy {
        Policy {
            workers: self.workers,
            stop_signal: self.stop_signal,
            stop_timeout: self.stop_timeout,
            min_uptime: self.min_uptime,
            max_restarts: self.max_restarts,
            ready: self.ready,
            ready_timeout: self.ready_timeout,
            reload_batch: self.reload_batch,
            watchdog: self.watchdog,
        }
    }
}
