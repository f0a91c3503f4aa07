//! What a generation runs: its working directory and its command, resolved
//! when the generation is made (at start, at each reload, at a rollback),
//! with the env file's variables as they were then. A reload resolves
//! `--chdir` anew, so a `current` symlink switched to the next release is
//! followed then; every later start of that generation (a crash's restart)
//! runs the same files, whatever `current` points to by then.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::vocab::Generation;

use super::spawn::command::{self, Command};

/// Which file, exactly: a path can be replaced under the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    /// Modification time, in nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl FileId {
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let meta = std::fs::metadata(path)?;
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

/// One generation's release.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Release {
    /// Where its workers start: `--chdir` with every symlink resolved, or
    /// the master's own working directory.
    pub dir: PathBuf,
    /// Whether the workers change to `dir` (`--chdir`), or inherit it.
    pub chdir: bool,
    pub command: Command,
    /// The program `command` resolved to.
    pub executable: FileId,
    /// The file an interpreter runs (`python3 server.py`): the command's
    /// first argument, if it names a file.
    pub script: Option<(PathBuf, FileId)>,
    /// The env file's variables as they were read for this release.
    pub env: Vec<(String, String)>,
    /// The env file's version then (a hash of its bytes).
    pub env_version: Option<String>,
    /// The generation whose release this one repeats (`rcluster rollback`).
    pub rollback_of: Option<Generation>,
}

impl Release {
    /// Resolves `chdir` (made absolute by the caller) and `command` as a
    /// new generation would run them now. `Err`: one line that says what
    /// is missing.
    pub fn resolve(chdir: Option<&Path>, command: &[OsString]) -> Result<Release, Error> {
        let dir = match chdir {
            Some(path) => std::fs::canonicalize(path)
                .ok()
                .filter(|p| p.is_dir())
                .ok_or_else(|| Error::NoDirectory {
                    given: path.to_path_buf(),
                })?,
            None => std::env::current_dir()
                .map_err(|e| Error::os("reading the working directory", e))?,
        };
        let command = command::resolve_in(command, chdir.map(|_| dir.as_path()))?;
        let executable = FileId::of(&command.path()).map_err(|e| Error::NotExecutable {
            command: command.display(),
            cause: e.to_string(),
        })?;
        let script = command
            .argv
            .get(1)
            .map(|arg| dir.join(OsStr::from_bytes(arg.as_bytes())))
            .filter(|path| path.is_file())
            .and_then(|path| Some((path.clone(), FileId::of(&path).ok()?)));
        Ok(Release {
            dir,
            chdir: chdir.is_some(),
            command,
            executable,
            script,
            env: Vec::new(),
            env_version: None,
            rollback_of: None,
        })
    }

    /// Whether `other` runs the very same files: directory, program and
    /// script (the environment may still differ: that is a reload too).
    pub fn same_files(&self, other: &Release) -> bool {
        self.dir == other.dir
            && self.executable == other.executable
            && self.script.as_ref().map(|(_, id)| id) == other.script.as_ref().map(|(_, id)| id)
    }

    /// Whether its files are still there, for a rollback: `Err` says which
    /// is gone.
    pub fn still_there(&self) -> Result<(), String> {
        if !self.dir.is_dir() {
            return Err(format!("{} no longer exists", self.dir.display()));
        }
        let program = self.command.path();
        if !program.exists() {
            return Err(format!("{} no longer exists", program.display()));
        }
        Ok(())
    }

    /// The command as given, for messages: `python3 server.py`.
    pub fn command_line(&self) -> String {
        let words: Vec<String> = self
            .command
            .argv
            .iter()
            .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
            .collect();
        words.join(" ")
    }
}
