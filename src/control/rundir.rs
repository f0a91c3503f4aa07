//! Where a user's masters put their control sockets, so that clients can
//! find them: `$XDG_RUNTIME_DIR/rcluster`, `/run/rcluster` for root, else
//! `$TMPDIR/rcluster-<uid>`; one `NAME.sock` per master, and each master's
//! notify socket in a directory of its own. The directory is the user's
//! (owned by them, not a symlink, mode 0711): nobody else can list it or
//! plant a file in it. Others may pass through it, to a notify directory
//! that belongs to the workers' user (`--user`); the control sockets are
//! the owner's alone (mode 0600, and the peer's uid is checked).
//!
//! Also what a master is called ([`default_name`]) when `--name` is not
//! given: the command's file name, or the script's for an interpreter.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The directory, created if missing; an error if it exists and is not
/// this user's alone.
pub fn dir() -> io::Result<PathBuf> {
    let dir = location();
    match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check(&dir)?;
    // Made 0700 by an earlier version: workers of another user could not
    // reach their notify socket.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    Ok(dir)
}

/// Where the directory is, without creating it.
pub fn location() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && xdg.is_absolute()
        && xdg.is_dir()
    {
        return xdg.join("rcluster");
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 && Path::new("/run").is_dir() {
        return PathBuf::from("/run/rcluster");
    }
    std::env::temp_dir().join(format!("rcluster-{uid}"))
}

/// The directory must be a real directory owned by this user, that no one
/// else may list or write: otherwise another user could have made it, and
/// could read or replace what is put in it.
fn check(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let problem = if !meta.is_dir() {
        Some("it is not a directory".to_string())
    } else if meta.uid() != uid {
        Some(format!("it belongs to uid {}, not {uid}", meta.uid()))
    } else if meta.permissions().mode() & 0o066 != 0 {
        Some(format!(
            "others may list or write it (mode {:o}; it must be 711 or 700)",
            meta.permissions().mode() & 0o777
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not safe: {problem}", dir.display()),
        )),
    }
}

/// Names go into file names: letters, digits, `_`, `-` and `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// Programs that run a script given as an argument: the master is named
/// for the script (`node app.js` → `app`).
const INTERPRETERS: &[&str] = &[
    "node", "nodejs", "bun", "deno", "python", "python2", "python3", "pypy", "pypy3", "ruby",
    "perl", "php", "java", "lua", "sh", "bash", "dash", "zsh",
];

/// What a master is called without `--name`: the command's file name
/// (`./server` → `server`), or for an interpreter, its script's stem
/// (`python3 -m app` → `app`, `node dist/main.js` → `main`); through
/// `env VAR=x` wrappers.
pub fn default_name(command: &[OsString]) -> String {
    let mut words = command
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .peekable();
    let mut program = words.next().unwrap_or_default();
    while file_name(&program) == "env" {
        match words.find(|w| !w.contains('=') && !w.starts_with('-')) {
            Some(next) => program = next,
            None => break,
        }
    }
    let mut name = file_name(&program);
    let interpreter = name.split(['.', '-']).next().unwrap_or_default();
    let interpreter = interpreter.trim_end_matches(|c: char| c.is_ascii_digit());
    if INTERPRETERS.contains(&interpreter) || INTERPRETERS.contains(&name.as_str()) {
        // `-c CODE` names no file; `-m module` and `-jar file` are the app.
        let mut script = None;
        while let Some(word) = words.next() {
            match word.as_str() {
                "-c" | "-e" => break,
                "-m" | "-jar" => {
                    script = words.next();
                    break;
                }
                w if w.starts_with('-') => {}
                _ => {
                    script = Some(word);
                    break;
                }
            }
        }
        if let Some(script) = script {
            name = stem(&script);
        }
    }
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let name = name.trim_start_matches('.');
    if name.is_empty() {
        "rcluster".into()
    } else {
        name.into()
    }
}

fn file_name(word: &str) -> String {
    Path::new(word)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `dist/main.js` → `main`; also a module (`app.main` → `app`).
fn stem(word: &str) -> String {
    Path::new(word)
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(words: &[&str]) -> String {
        default_name(&words.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn a_master_is_named_for_its_program_or_script() {
        assert_eq!(name(&["./server", "--port", "1"]), "server");
        assert_eq!(name(&["/usr/bin/hello"]), "hello");
        assert_eq!(name(&["node", "dist/main.js"]), "main");
        assert_eq!(name(&["node", "--enable-source-maps", "app.js"]), "app");
        assert_eq!(name(&["python3", "examples/python/server.py"]), "server");
        assert_eq!(name(&["python3.11", "-m", "myapp"]), "myapp");
        assert_eq!(
            name(&["python3", "-m", "uvicorn", "--fd", "3", "app:app"]),
            "uvicorn"
        );
        assert_eq!(name(&["env", "PORT=1", "node", "api.js"]), "api");
        assert_eq!(name(&["sh", "-c", "exec ./x"]), "sh");
        assert_eq!(name(&["java", "-jar", "shop.jar"]), "shop");
        assert_eq!(name(&["bundle"]), "bundle");
        assert_eq!(name(&["./my server"]), "my-server");
        assert_eq!(name(&[]), "rcluster");
    }

    #[test]
    fn names_fit_in_file_names() {
        assert!(valid_name("api-v2.eu_1"));
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
