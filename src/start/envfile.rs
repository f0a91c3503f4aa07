//! `--env-file PATH`: variables for the workers in the dotenv format that
//! Node and Python tools read (`KEY=value`, `# comments`, quotes,
//! `export`, `${VAR}`). Parsing is dotenvy's.
//!
//! The rule ([`EnvSource`]): a regular file is read at start and again at
//! every reload, so that a reload rolls out new configuration; a file that
//! is not regular (a pipe from `<(sops -d secrets.env)`, a FIFO, a device)
//! is read once, at start, and every generation gets those variables. At a
//! reload the master never blocks on the file: it opens it without
//! blocking, and one that is no longer a regular file, is over
//! [`MAX_BYTES`], cannot be read or parsed stops the reload.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// An env file larger than this is not one (a log file, a disk image).
pub const MAX_BYTES: u64 = 1 << 20;

/// Where the workers' variables come from, and how they are read again.
#[derive(Debug, Clone)]
pub struct EnvSource {
    pub path: PathBuf,
    /// Not a regular file at start: what it held then, for every reload.
    pub once: Option<(&'static str, EnvFile)>,
}

impl EnvSource {
    /// Reads the file at start (before the loop, so waiting on a pipe's
    /// writer is what the user asked for).
    pub fn open(path: &Path) -> Result<(EnvSource, EnvFile), EnvFileError> {
        let file = std::fs::File::open(path).map_err(|e| unreadable(path, &e.to_string()))?;
        let kind = kind(&file, path)?;
        let env = read_from(file, path)?;
        let once = (kind != "a regular file").then(|| (kind, env.clone()));
        let source = EnvSource {
            path: path.to_path_buf(),
            once,
        };
        Ok((source, env))
    }

    /// Reads it again for a reload, without blocking; a file read once
    /// gives what it gave at start.
    pub fn reread(&self) -> Result<EnvFile, EnvFileError> {
        if let Some((_, env)) = &self.once {
            return Ok(env.clone());
        }
        let path = &self.path;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| unreadable(path, &e.to_string()))?;
        match kind(&file, path)? {
            "a regular file" => read_from(file, path),
            other => Err(unreadable(
                path,
                &format!("it is {other} now, not the regular file it was at start"),
            )),
        }
    }
}

/// What kind of file `file` is, in words; an error for one that holds no
/// variables (a directory) or is over [`MAX_BYTES`].
/// The kinds of file an env file may be, as [`EnvSource::once`] names
/// them.
const KINDS: [&str; 4] = ["a regular file", "a pipe or FIFO", "a device", "a socket"];

/// A kind's name as a previous image of the master wrote it down.
pub fn kind_named(name: &str) -> &'static str {
    KINDS.into_iter().find(|k| *k == name).unwrap_or(KINDS[1])
}

fn kind(file: &std::fs::File, path: &Path) -> Result<&'static str, EnvFileError> {
    let meta = file
        .metadata()
        .map_err(|e| unreadable(path, &e.to_string()))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(unreadable(path, "it is a directory"));
    }
    if kind.is_file() && meta.len() > MAX_BYTES {
        return Err(unreadable(
            path,
            &format!("it is {} bytes, over the limit of 1 MiB", meta.len()),
        ));
    }
    Ok(if kind.is_file() {
        KINDS[0]
    } else if kind.is_fifo() {
        KINDS[1]
    } else if kind.is_char_device() || kind.is_block_device() {
        KINDS[2]
    } else {
        KINDS[3]
    })
}

fn unreadable(path: &Path, why: &str) -> EnvFileError {
    EnvFileError {
        message: format!("cannot read the env file {}: {why}", path.display()),
        unreadable: true,
    }
}

/// Reads at most [`MAX_BYTES`] (a stream that goes on is refused) and
/// parses.
fn read_from(file: std::fs::File, path: &Path) -> Result<EnvFile, EnvFileError> {
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(path, &e.to_string()))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(unreadable(path, "it holds more than 1 MiB"));
    }
    let text = String::from_utf8(bytes).map_err(|_| unreadable(path, "it is not UTF-8 text"))?;
    parse(path, &text)
}

/// The names a reload adds, removes and changes: never the values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    pub fn between(old: &[(String, String)], new: &[(String, String)]) -> Changes {
        let value = |vars: &[(String, String)], key: &str| {
            vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        };
        let mut changes = Changes::default();
        for (key, new_value) in new {
            match value(old, key) {
                None => changes.added.push(key.clone()),
                Some(old_value) if old_value != *new_value => changes.changed.push(key.clone()),
                Some(_) => {}
            }
        }
        for (key, _) in old {
            if value(new, key).is_none() {
                changes.removed.push(key.clone());
            }
        }
        changes
    }
}

/// One reading of the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnvFile {
    /// In file order; a key given twice keeps its last value.
    pub vars: Vec<(String, String)>,
    /// Which version of the file this is: a hash of its bytes, as 16 hex
    /// digits (shown per generation in `rcluster status --json`).
    pub version: String,
}

/// Why the file cannot be used: one line naming it, and the line of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    pub message: String,
    /// The file could not be read at all (rather than parsed).
    pub unreadable: bool,
}

fn parse(path: &Path, text: &str) -> Result<EnvFile, EnvFileError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        let (key, value) = item.map_err(|e| EnvFileError {
            message: describe(path, text, &e),
            unreadable: false,
        })?;
        vars.retain(|(k, _)| *k != key);
        vars.push((key, value));
    }
    Ok(EnvFile {
        vars,
        version: crate::vocab::digest(text),
    })
}

/// `PATH line N: what is wrong`, as far as the error can tell. dotenvy
/// reports the statement (several lines for a quoted value that goes on)
/// and the character where parsing stopped.
fn describe(path: &Path, text: &str, e: &dotenvy::Error) -> String {
    let dotenvy::Error::LineParse(statement, at) = e else {
        return format!("the env file {} cannot be parsed: {e}", path.display());
    };
    let first = statement.lines().next().unwrap_or_default().trim_end();
    let start = text.lines().position(|l| l.trim_end() == first);
    // The statement's own line end is not a line more.
    let statement = statement.trim_end();
    let at = (*at).min(statement.len());
    let within = statement[..at].matches('\n').count();
    let line = |n: usize| start.map_or(String::new(), |s| format!(" line {}", s + n + 1));
    if at >= statement.len() && unclosed_quote(statement) {
        return format!(
            "the env file {}{} cannot be parsed: a quote opened there is never closed: {first}",
            path.display(),
            line(0)
        );
    }
    let bad = statement.lines().nth(within).unwrap_or(first).trim_end();
    format!(
        "the env file {}{} cannot be parsed: {bad}",
        path.display(),
        line(within)
    )
}

/// Whether a statement's value opens a quote that nothing closes (the
/// last line of a file, or one that swallowed the lines after it).
fn unclosed_quote(statement: &str) -> bool {
    let Some((_, value)) = statement.split_once('=') else {
        return false;
    };
    let value = value.trim_start();
    match value.chars().next() {
        Some(quote @ ('"' | '\'')) => !value[1..].contains(quote),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "rcluster-envfile-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_what_dotenv_tools_read() {
        let path = file("# a comment\nA=1\nexport B=\"two words\"\nC='x=y'\nA=3\n\n");
        let env = EnvSource::open(&path).unwrap().1;
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            env.vars,
            [
                ("B".to_string(), "two words".to_string()),
                ("C".to_string(), "x=y".to_string()),
                ("A".to_string(), "3".to_string()),
            ]
        );
        assert_eq!(env.version.len(), 16);
    }

    #[test]
    fn a_broken_line_is_named() {
        let path = file("GOOD=1\nBAD LINE HERE\n");
        let e = EnvSource::open(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(!e.unreadable);
        assert!(e.message.contains(" line 2 "), "{}", e.message);
        assert!(e.message.contains("BAD LINE HERE"), "{}", e.message);
        let path = file("GOOD=1\nLEVEL=\"info\nPORT=1\n");
        let e = EnvSource::open(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(
            e.message.ends_with(
                " line 2 cannot be parsed: a quote opened there is never closed: LEVEL=\"info"
            ),
            "{}",
            e.message
        );
        // On the last line, too: its line, and why.
        let path = file("A=1\nB=2\nC=\"x\n");
        let e = EnvSource::open(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(
            e.message
                .ends_with(" line 3 cannot be parsed: a quote opened there is never closed: C=\"x"),
            "{}",
            e.message
        );
        let e = EnvSource::open(Path::new("/nonexistent/.env")).unwrap_err();
        assert!(e.unreadable && e.message.contains("/nonexistent/.env"));
    }

    #[test]
    fn a_pipe_is_read_once_and_a_file_that_changes_kind_or_size_is_refused() {
        let dir =
            std::env::temp_dir().join(format!("rcluster-envfile-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A pipe: read at start, the same at every reread.
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&write_end, b"A=1\n").unwrap();
        drop(write_end);
        let pipe = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&read_end)
        );
        let (source, env) = EnvSource::open(Path::new(&pipe)).unwrap();
        assert_eq!(
            source.once.as_ref().map(|(kind, _)| *kind),
            Some("a pipe or FIFO")
        );
        assert_eq!(source.reread().unwrap().vars, env.vars);
        // A regular file that becomes a FIFO, a directory, too big or gone.
        let path = dir.join(".env");
        std::fs::write(&path, "A=1\n").unwrap();
        let (source, _) = EnvSource::open(&path).unwrap();
        assert!(source.once.is_none());
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = source.reread().unwrap_err();
        assert!(e.message.contains("a pipe or FIFO now"), "{}", e.message);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(source.reread().unwrap_err().message.contains("a directory"));
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, vec![0u8; 2 << 20]).unwrap();
        assert!(
            source
                .reread()
                .unwrap_err()
                .message
                .contains("over the limit of 1 MiB")
        );
        std::fs::remove_file(&path).unwrap();
        assert!(
            source
                .reread()
                .unwrap_err()
                .message
                .contains("No such file")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn changes_name_the_variables_never_their_values() {
        let vars = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let changes = Changes::between(
            &vars(&[("A", "1"), ("B", "secret"), ("C", "x")]),
            &vars(&[("A", "1"), ("B", "other"), ("D", "new")]),
        );
        assert_eq!(changes.added, ["D"]);
        assert_eq!(changes.removed, ["C"]);
        assert_eq!(changes.changed, ["B"]);
    }
}
