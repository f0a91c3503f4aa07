//! What a generation runs: its working directory and its command, resolved
//! when the generation is made (at start, at each reload, at a rollback),
//! with the env file's variables as they were then. A reload resolves
//! `--chdir` anew, so a `current` symlink switched to the next release is
//! followed then; every later start of that generation (a crash's restart)
//! runs the same files, whatever `current` points to by then.
//!
//! Pinned are the working directory, the program (however it was named:
//! `./server`, a path through `current`, a name found on a `PATH` entry
//! inside it) and the script an interpreter runs (`python3 app.py`): each
//! path's directories have their symlinks resolved once, and the worker is
//! given the pinned paths (the program's last component is kept as named,
//! so a virtualenv's `bin/python`, itself a symlink, still finds its
//! `pyvenv.cfg`). Before each start the files at those paths must still be
//! the ones recorded (device and inode): a file replaced since is refused
//! ([`Release::unchanged`]), rather than running other code under the
//! generation's name. One rewritten in place (the same inode) runs.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::sockets::listen::Named;
use crate::vocab::{ConfigFile, Generation};

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
    /// The same file (device and inode), whatever was written to it.
    pub fn same_file(&self, other: &FileId) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

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
    /// `--config`: the file as it was read for this generation (what a
    /// rollback to it restores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigFile>,
    /// What its configuration changed from the generation before it:
    /// `workers 4 → 8`, `command arguments changed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// The listeners its workers get at fd 3, 4, …, when its configuration
    /// says (`--config`); otherwise every listener the master started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Vec<Named>>,
    /// `--watchdog` as its configuration says (`--config`): its workers
    /// are told it in `WATCHDOG_USEC`. Without a file, the master's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<std::time::Duration>,
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
        let mut command = command::resolve_in(command, chdir.map(|_| dir.as_path()))?;
        let program = pin(&command.path());
        let executable = FileId::of(&program).map_err(|e| Error::NotExecutable {
            command: command.display(),
            cause: e.to_string(),
        })?;
        command.program = c_path(&program);
        // A program named by a path runs as the pinned path: an interpreter
        // that finds its files from its own name (a virtualenv's python)
        // finds this release's.
        if command.argv[0].as_bytes().contains(&b'/') {
            command.argv[0] = c_path(&program);
        }
        let script = script_position(&command.argv).and_then(|i| {
            let given = dir.join(OsStr::from_bytes(command.argv[i].as_bytes()));
            let path = pin(&given);
            let id = FileId::of(&path).ok().filter(|_| path.is_file())?;
            command.argv[i] = c_path(&path);
            Some((path, id))
        });
        Ok(Release {
            dir,
            chdir: chdir.is_some(),
            command,
            executable,
            script,
            env: Vec::new(),
            env_version: None,
            rollback_of: None,
            config: None,
            changed: Vec::new(),
            listeners: None,
            watchdog: None,
        })
    }

    /// Whether `other` runs the very same files: directory, program and
    /// script (the environment may still differ: that is a reload too).
    pub fn same_files(&self, other: &Release) -> bool {
        self.dir == other.dir
            && self.executable == other.executable
            && self.script.as_ref().map(|(_, id)| id) == other.script.as_ref().map(|(_, id)| id)
    }

    /// Whether `other` runs the same files with the same configuration
    /// file: a rollback goes to one that does not.
    pub fn same_as(&self, other: &Release) -> bool {
        self.same_files(other)
            && self.config.as_ref().map(|c| &c.digest) == other.config.as_ref().map(|c| &c.digest)
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
        self.unchanged()
    }

    /// The files at the pinned paths that are the recorded ones but were
    /// written to since (a new modification time).
    pub fn rewritten(&self) -> Vec<(&'static str, PathBuf)> {
        let program = self.command.path();
        std::iter::once(("program", program, self.executable))
            .chain(
                self.script
                    .iter()
                    .map(|(path, id)| ("script", path.clone(), *id)),
            )
            .filter(|(_, path, recorded)| {
                FileId::of(path).is_ok_and(|now| now.same_file(recorded) && now != *recorded)
            })
            .map(|(what, path, _)| (what, path))
            .collect()
    }

    /// Whether the program and the script at their pinned paths are the
    /// files recorded when the generation was made (device and inode):
    /// `Err` names the one replaced since. Checked before every start.
    pub fn unchanged(&self) -> Result<(), String> {
        let program = self.command.path();
        let files = std::iter::once(("program", &program, &self.executable))
            .chain(self.script.iter().map(|(path, id)| ("script", path, id)));
        for (what, path, recorded) in files {
            match FileId::of(path) {
                Ok(now) if now.same_file(recorded) => {}
                Ok(_) => {
                    return Err(format!(
                        "{what} {} was replaced since the generation was made (reload to run \
                         the new file)",
                        path.display()
                    ));
                }
                Err(e) => return Err(format!("{what} {}: {e}", path.display())),
            }
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

/// `path` with the symlinks of its directories resolved, its last
/// component as named; as given if its directory cannot be resolved.
fn pin(path: &Path) -> PathBuf {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_path_buf();
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    std::fs::canonicalize(parent).map_or_else(|_| path.to_path_buf(), |dir| dir.join(name))
}

fn c_path(path: &Path) -> CString {
    // A path from the file system, or from a command line that had no NUL.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// Interpreters whose first argument that is not an option is the file
/// they run.
const INTERPRETERS: &[&str] = &[
    "python", "python2", "python3", "pypy", "pypy3", "node", "nodejs", "bun", "ruby", "perl",
    "php", "sh", "bash", "dash", "zsh",
];

/// Options after which there is no script (the code is on the command
/// line, or a module is named): `python -c`, `python -m`, `node -e`.
const NO_SCRIPT: &[&str] = &["-c", "-m", "-e", "-E", "-p", "-r", "--eval", "--print", "-"];

/// Options that take the next argument as their value.
const WITH_VALUE: &[&str] = &["-X", "-W", "-I", "--require", "--import", "--loader"];

/// Where the script is in `argv`, when `argv[0]` is an interpreter this
/// knows (`python3.12` counts as `python3`).
fn script_position(argv: &[CString]) -> Option<usize> {
    let name = Path::new(OsStr::from_bytes(argv.first()?.as_bytes())).file_name()?;
    let name = name.to_str()?;
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    if !INTERPRETERS.contains(&name) && !INTERPRETERS.contains(&base) {
        return None;
    }
    let mut i = 1;
    while let Some(arg) = argv.get(i) {
        let arg = arg.to_str().ok()?;
        if NO_SCRIPT.contains(&arg) || arg == "--" && i + 1 >= argv.len() {
            return None;
        }
        if arg == "--" {
            return Some(i + 1);
        }
        if !arg.starts_with('-') {
            return Some(i);
        }
        i += if WITH_VALUE.contains(&arg) { 2 } else { 1 };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<CString> {
        words.iter().map(|w| CString::new(*w).unwrap()).collect()
    }

    #[test]
    fn the_script_is_the_first_argument_that_is_not_an_option() {
        let at = |words: &[&str]| script_position(&argv(words));
        assert_eq!(at(&["python3", "app.py"]), Some(1));
        assert_eq!(
            at(&["/usr/bin/python3.12", "-u", "app.py", "--port", "1"]),
            Some(2)
        );
        assert_eq!(at(&["python3", "-X", "dev", "app.py"]), Some(3));
        assert_eq!(at(&["node", "--require", "x", "server.js"]), Some(3));
        assert_eq!(at(&["python3", "-m", "http.server"]), None);
        assert_eq!(at(&["node", "-e", "1"]), None);
        assert_eq!(at(&["sh", "-c", "exec x"]), None);
        assert_eq!(at(&["./server", "config.yml"]), None, "not an interpreter");
        assert_eq!(at(&["gunicorn", "app:app"]), None);
    }

    #[test]
    fn a_path_is_pinned_through_its_directories_not_its_last_link() {
        let dir = std::env::temp_dir().join(format!("rcluster-pin-{}", std::process::id()));
        let release = dir.join("releases/1");
        std::fs::create_dir_all(release.join("bin")).unwrap();
        std::fs::write(release.join("bin/real"), "").unwrap();
        std::os::unix::fs::symlink("real", release.join("bin/python")).unwrap();
        std::os::unix::fs::symlink("releases/1", dir.join("current")).unwrap();
        let real_dir = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(
            pin(&dir.join("current/bin/python")),
            real_dir.join("releases/1/bin/python"),
            "the directory resolved, the last link kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
