//! What to run and as whom, decided before anything is forked: the command
//! resolved against `PATH` ([`Command`]) and the user and groups workers run
//! as ([`Identity`]). A typo or an unknown user fails here, at start, with
//! its exit code, instead of as a restart loop later.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};

use crate::error::Error;

use super::child::Credentials;
use super::env::Value;

/// The program to run, resolved against `PATH` before anything is forked,
/// so a typo fails at once with 127 instead of a restart loop.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Command {
    pub program: CString,
    pub argv: Vec<CString>,
}

impl Command {
    /// The program's path, as resolved.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(self.program.as_bytes()))
    }

    /// The command's name as given, for messages.
    pub fn display(&self) -> String {
        self.argv
            .first()
            .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
            .unwrap_or_default()
    }
}

pub fn resolve(command: &[OsString]) -> Result<Command, Error> {
    resolve_in(command, None)
}

/// As [`resolve`], for a worker that starts in `dir` (`--chdir`): a
/// relative path (`./server`, `bin/server`) is found there.
pub fn resolve_in(command: &[OsString], dir: Option<&Path>) -> Result<Command, Error> {
    let name = command
        .first()
        .ok_or_else(|| Error::Usage("no command given".into()))?;
    let display = name.to_string_lossy().into_owned();
    let program = if name.as_bytes().contains(&b'/') {
        let path = match dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        };
        check_executable(&path, &display)?;
        path
    } else {
        search_path(name, &display)?
    };
    check_format(&program, &display)?;
    let cstring = |s: &OsStr| {
        CString::new(s.as_bytes())
            .map_err(|_| Error::Usage(format!("the command contains a NUL byte: {display}")))
    };
    Ok(Command {
        program: cstring(program.as_os_str())?,
        argv: command
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<_, _>>()?,
    })
}

fn check_executable(path: &Path, display: &str) -> Result<(), Error> {
    let not_executable = |cause: String| Error::NotExecutable {
        command: display.to_string(),
        cause,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::CommandNotFound {
            command: display.to_string(),
        }),
        Err(e) => Err(not_executable(e.to_string())),
        Ok(meta) if meta.is_dir() => Err(not_executable("it is a directory".into())),
        Ok(_) => access(path, AccessFlags::X_OK).map_err(|_| {
            not_executable(format!(
                "permission denied (make it executable: chmod +x {display})"
            ))
        }),
    }
}

/// What the kernel will refuse to exec, refused now: a file that is neither
/// a program nor a script (ENOEXEC), and a script whose `#!` interpreter is
/// missing (ENOENT) or may not run. A file we may not read is left to exec.
fn check_format(path: &Path, display: &str) -> Result<(), Error> {
    let mut head = [0u8; 256];
    let read = match std::fs::File::open(path).and_then(|mut f| io::Read::read(&mut f, &mut head)) {
        Ok(read) => read,
        Err(_) => return Ok(()),
    };
    let head = &head[..read];
    if head.starts_with(b"\x7fELF") {
        return Ok(());
    }
    let Some(line) = head.strip_prefix(b"#!") else {
        // binfmt_misc may run other formats (jars, other architectures).
        if binfmt_misc_in_use() {
            return Ok(());
        }
        return Err(Error::cannot_exec(display, libc::ENOEXEC));
    };
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let interpreter = line
        .split(|b| b.is_ascii_whitespace())
        .find(|word| !word.is_empty())
        .map(|word| PathBuf::from(OsStr::from_bytes(word)));
    let Some(interpreter) = interpreter else {
        return Err(Error::cannot_exec(display, libc::ENOEXEC));
    };
    let shown = interpreter.display();
    match std::fs::metadata(&interpreter) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::Missing {
            command: display.to_string(),
            cause: format!(
                "the interpreter its #! line names, {shown}, does not exist \
                 (install it, or correct the #! line)"
            ),
        }),
        Ok(meta) if meta.is_dir() || access(&interpreter, AccessFlags::X_OK).is_err() => {
            Err(Error::NotExecutable {
                command: display.to_string(),
                cause: format!("the interpreter its #! line names, {shown}, is not executable"),
            })
        }
        _ => Ok(()),
    }
}

/// Whether the kernel has extra binary formats registered.
fn binfmt_misc_in_use() -> bool {
    std::fs::read_dir("/proc/sys/fs/binfmt_misc").is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| !matches!(e.file_name().to_str(), Some("register" | "status")))
    })
}

fn search_path(name: &OsStr, display: &str) -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut refused = None;
    for dir in std::env::split_paths(&path) {
        let candidate = if dir.as_os_str().is_empty() {
            PathBuf::from(name)
        } else {
            dir.join(name)
        };
        if !candidate.is_file() {
            continue;
        }
        match check_executable(&candidate, display) {
            Ok(()) => return Ok(candidate),
            Err(e) => refused = refused.or(Some(e)),
        }
    }
    Err(refused.unwrap_or_else(|| Error::CommandNotFound {
        command: display.to_string(),
    }))
}

/// The user and groups workers run as (`--user`, `--group`), resolved
/// before anything is forked.
#[derive(Debug, Clone)]
pub struct Identity {
    pub credentials: Credentials,
    /// `USER`, `LOGNAME` and `HOME` for the worker, when a user is named.
    vars: Vec<(String, Value)>,
}

impl Identity {
    /// `None` when neither is given. A name that does not exist, or a
    /// master that may not switch users, is an error now, not a restart
    /// loop later.
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, Error> {
        use nix::unistd::{Gid, Group, Uid, User};
        if user.is_none() && group.is_none() {
            return Ok(None);
        }
        let no_such = |kind: &'static str, name: &str| Error::NoSuchUser {
            kind,
            name: name.to_string(),
        };
        let user = match user {
            None => None,
            Some(name) => {
                let found = match name.parse::<u32>() {
                    Ok(uid) => User::from_uid(Uid::from_raw(uid)),
                    Err(_) => User::from_name(name),
                };
                Some(found.ok().flatten().ok_or_else(|| no_such("user", name))?)
            }
        };
        let group = match group {
            None => None,
            Some(name) => {
                let found = match name.parse::<u32>() {
                    Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
                    Err(_) => Group::from_name(name),
                };
                Some(found.ok().flatten().ok_or_else(|| no_such("group", name))?)
            }
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Usage(
                "--user and --group need rcluster to run as root (it binds, then drops privileges)"
                    .into(),
            ));
        }
        let gid = group
            .as_ref()
            .map(|g| g.gid)
            .or(user.as_ref().map(|u| u.gid))
            .expect("a user or a group");
        let groups = match &user {
            Some(u) => {
                let name = CString::new(u.name.as_bytes()).map_err(|_| no_such("user", &u.name))?;
                nix::unistd::getgrouplist(&name, gid)
                    .map_err(|e| Error::os(format!("listing the groups of {}", u.name), e.into()))?
            }
            None => vec![gid],
        };
        let vars = user
            .as_ref()
            .map(|u| {
                let text = |k: &str, v: String| (k.to_string(), Value::Text(v));
                vec![
                    text("USER", u.name.clone()),
                    text("LOGNAME", u.name.clone()),
                    text("HOME", u.dir.to_string_lossy().into_owned()),
                ]
            })
            .unwrap_or_default();
        // SAFETY: getuid has no preconditions.
        let uid = user.map_or(unsafe { libc::getuid() }, |u| u.uid.as_raw());
        Ok(Some(Identity {
            credentials: Credentials {
                uid,
                gid: gid.as_raw(),
                groups: groups.into_iter().map(|g| g.as_raw()).collect(),
            },
            vars,
        }))
    }

    pub fn vars(&self) -> &[(String, Value)] {
        &self.vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_finds_commands_on_path_and_refuses_what_cannot_run() {
        let sh = resolve(&["sh".into()]).unwrap();
        assert!(sh.program.to_bytes().ends_with(b"/sh"));
        assert!(matches!(
            resolve(&["./does-not-exist".into()]),
            Err(Error::CommandNotFound { .. })
        ));
        assert!(matches!(
            resolve(&["no-such-command-xyz".into()]),
            Err(Error::CommandNotFound { .. })
        ));
        assert!(matches!(
            resolve(&["/".into()]),
            Err(Error::NotExecutable { .. })
        ));
    }

    #[test]
    fn resolve_refuses_what_the_kernel_cannot_exec() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rcluster-format-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path.into_os_string()
        };
        let no_shebang = file("plain", "echo hello\n");
        let no_interpreter = file("python4", "#!/usr/bin/python4\nprint(1)\n");
        let script = file("script", "#!/bin/sh\necho hi\n");
        let run = |path| {
            resolve(&[path])
                .map(|_| ())
                .map_err(|e| (e.exit_code(), e.to_string()))
        };
        if !binfmt_misc_in_use() {
            let (code, text) = run(no_shebang).unwrap_err();
            assert_eq!(code, 126, "{text}");
            assert!(
                text.contains("ENOEXEC") && text.contains("#!/bin/sh"),
                "{text}"
            );
        }
        let (code, text) = run(no_interpreter).unwrap_err();
        assert_eq!(code, 127, "{text}");
        assert!(text.contains("/usr/bin/python4"), "{text}");
        assert!(run(script).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
