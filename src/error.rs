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
    /// What clap says about a command line it could not parse, whole
    /// (the argument, the usage, its tips): printed as it is.
    #[error("{0}")]
    Cli(String),
    #[error("cannot listen on {addr}: {cause}")]
    Bind { addr: String, cause: String },
    #[error("command not found: {command} (check the path, or that it is on $PATH)")]
    CommandNotFound { command: String },
    /// Something the command needs is missing (its `#!` interpreter).
    #[error("cannot run {command}: {cause}")]
    Missing { command: String, cause: String },
    #[error("cannot run {command}: {cause}")]
    NotExecutable { command: String, cause: String },
    #[error("cannot write the pid file {}: {source}", path.display())]
    PidFile { path: PathBuf, source: io::Error },
    /// A path rcluster would bind a socket at holds something else; only a
    /// socket nothing answers on is ever replaced.
    #[error(
        "cannot use {} for {purpose}: it is {what}, and rcluster replaces only a socket that \
         nothing answers on; remove it or pick another path",
        path.display()
    )]
    PathTaken {
        path: PathBuf,
        purpose: &'static str,
        what: &'static str,
    },
    /// The pid file names a master that runs.
    #[error(
        "the pid file {} names pid {pid}, an rcluster master that is running; stop it, or \
         give this one another --pid-file",
        path.display()
    )]
    PidFileInUse { path: PathBuf, pid: u32 },
    #[error("{op} failed: {source}")]
    Os { op: String, source: io::Error },
    /// Cluster mode forks without exec: only the calling thread survives in
    /// the child, so the process must not have started others.
    #[error(
        "Cluster::run must be called before any other thread starts: this process has \
         {count} threads, and a forked worker would get only the calling one"
    )]
    Threads { count: usize },
    /// `--env-file` cannot be read (66) or parsed (65) at start.
    #[error("{message}")]
    EnvFile { message: String, unreadable: bool },
    /// `--config` cannot be read (66), or holds a mistake (65): the
    /// message names the file, the line and the key.
    #[error("{message}")]
    Config { message: String, unreadable: bool },
    #[error("no such {kind}: {name} (check --user and --group)")]
    NoSuchUser { kind: &'static str, name: String },
    /// `--chdir` does not lead to a directory (66, as a missing input).
    #[error("--chdir {}: no such directory (check the path, and where its symlinks point)", given.display())]
    NoDirectory { given: PathBuf },
    /// `--max-restarts` was used up; the message says which worker and how.
    #[error("{0}")]
    GaveUp(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::GaveUp(_) => 1,
            Error::EnvFile {
                unreadable: true, ..
            }
            | Error::Config {
                unreadable: true, ..
            }
            | Error::NoDirectory { .. } => 66,
            Error::EnvFile {
                unreadable: false, ..
            }
            | Error::Config {
                unreadable: false, ..
            } => 65,
            Error::Usage(_) | Error::Cli(_) => 64,
            Error::NoSuchUser { .. } => 67,
            Error::Threads { .. } => 70,
            Error::Bind { .. } | Error::Os { .. } => 71,
            Error::PidFile { .. } | Error::PathTaken { .. } | Error::PidFileInUse { .. } => 73,
            Error::NotExecutable { .. } => 126,
            Error::CommandNotFound { .. } | Error::Missing { .. } => 127,
        }
    }

    /// Exec of `command` failed with `errno` for a reason that will not go
    /// away: one line saying what is wrong and how to fix it.
    pub fn cannot_exec(command: &str, errno: i32) -> Error {
        let command = command.to_string();
        let name = crate::vocab::errno_name(errno);
        match errno {
            libc::ENOENT => Error::Missing {
                command,
                cause: format!("it, or the interpreter its #! line names, does not exist ({name})"),
            },
            libc::ENOEXEC => Error::NotExecutable {
                command,
                cause: format!(
                    "it is neither a program nor a script with a #! line ({name}); \
                     make its first line name the interpreter, e.g. #!/bin/sh"
                ),
            },
            libc::EACCES | libc::EPERM => Error::NotExecutable {
                command,
                cause: format!(
                    "permission denied ({name}): make it executable (chmod +x) and check \
                     that its file system is not mounted noexec"
                ),
            },
            _ => Error::NotExecutable {
                command,
                cause: format!("exec failed ({name})"),
            },
        }
    }

    pub fn os(op: impl Into<String>, source: io::Error) -> Error {
        Error::Os {
            op: op.into(),
            source,
        }
    }
}
