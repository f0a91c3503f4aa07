//! Errors that end the master, each with the exit code a script can act on:
//! 64 for bad usage, 71 for an OS refusal (bind, fork), 73 for a file it
//! cannot create, 126/127 for a command that cannot run (as shells do).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad flag or value; the message names it and the valid forms.
    #[error("{0}")]
    Usage(String),
    #[error("cannot listen on {addr}: {cause}")]
    Bind { addr: String, cause: String },
    #[error("command not found: {command} (check the path, or that it is on $PATH)")]
    CommandNotFound { command: String },
    #[error("cannot run {command}: {cause}")]
    NotExecutable { command: String, cause: String },
    #[error("cannot write the pid file {}: {source}", path.display())]
    PidFile { path: PathBuf, source: io::Error },
    #[error("{op} failed: {source}")]
    Os { op: String, source: io::Error },
    /// Cluster mode forks without exec: only the calling thread survives in
    /// the child, so the process must not have started others.
    #[error(
        "Cluster::run must be called before any other thread starts: this process has \
         {count} threads, and a forked worker would get only the calling one"
    )]
    Threads { count: usize },
    #[error("no such {kind}: {name} (check --user and --group)")]
    NoSuchUser { kind: &'static str, name: String },
    /// `--max-restarts` was used up; the message says which worker and how.
    #[error("{0}")]
    GaveUp(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::GaveUp(_) => 1,
            Error::Usage(_) => 64,
            Error::NoSuchUser { .. } => 67,
            Error::Threads { .. } => 70,
            Error::Bind { .. } | Error::Os { .. } => 71,
            Error::PidFile { .. } => 73,
            Error::NotExecutable { .. } => 126,
            Error::CommandNotFound { .. } => 127,
        }
    }

    pub fn os(op: impl Into<String>, source: io::Error) -> Error {
        Error::Os {
            op: op.into(),
            source,
        }
    }
}
