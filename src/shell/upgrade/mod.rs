//! Upgrading the master in place (`SIGUSR2`, `rcluster upgrade`): the
//! binary it is read from, the check a new binary must pass, and the
//! `execve` that replaces the master's image while keeping its pid, its
//! sockets and its children.
//!
//! The order makes a bad binary harmless. First the new binary runs as a
//! child on a copy of the hand-over (`--upgrade-check`): a path that is
//! not executable, a binary that cannot start, crashes, hangs, predates
//! live upgrades or reads another format fails there, and the master that
//! asked serves on. Only a binary that said it can go on from the
//! hand-over is exec'd, in place, from the file checked (by descriptor,
//! not by path); an `execve` that fails returns, and the old image goes on
//! as before; a new image that fails before its loop turns runs the old
//! binary again (`fallback.rs`). The master's loop drives the check
//! (`shell/master/upgrade.rs`); nothing here blocks.

pub mod fallback;
pub mod handover;

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};

use crate::vocab::Pid;
use handover::{CHECK_ARG, RESUME_ARG};

/// How long a new binary may take to check the hand-over.
pub const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The master's binary and command line, as an upgrade runs them again.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Read again from disk at each upgrade: as the master was started,
    /// so a symlink switched to a new release leads to the new binary.
    pub exe: PathBuf,
    pub argv0: OsString,
    pub args: Vec<OsString>,
}

impl Binary {
    /// This process's binary, found as the shell that started it found it:
    /// a name with a `/` from the working directory, a bare name on `PATH`;
    /// `/proc/self/exe` (symlinks resolved) if that fails.
    pub fn of_this_process(argv: &[OsString]) -> Binary {
        let argv0 = argv.first().cloned().unwrap_or_default();
        let exe = find(Path::new(&argv0))
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from(&argv0));
        Binary {
            exe,
            argv0,
            args: argv.iter().skip(1).cloned().collect(),
        }
    }
}

fn find(name: &Path) -> Option<PathBuf> {
    if name.as_os_str().is_empty() {
        return None;
    }
    if name.as_os_str().as_bytes().contains(&b'/') {
        // `./rcluster` is `/srv/bin/rcluster`: `.` dropped, symlinks kept.
        let path = std::env::current_dir().ok()?.join(name);
        return Some(path.components().collect());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| std::fs::metadata(path).is_ok_and(|m| m.is_file()))
        .filter(|path| path.is_absolute())
}

/// A new binary checking the hand-over: its pid, the read end of its
/// stdout and stderr, and the binary itself, opened before the check ran:
/// the file exec'd is the file checked, whatever the path holds by then
/// (a deploy's `mv` between the two).
pub struct Check {
    pub pid: Pid,
    pub output: OwnedFd,
    pub exe: OwnedFd,
}

/// Runs `binary --upgrade-check ARGS…` with the hand-over on its stdin,
/// from the file opened now (`/proc/self/fd/N`, open in the child: a
/// script's interpreter opens it by that name too).
pub fn start_check(binary: &Binary, handover: &OwnedFd) -> io::Result<Check> {
    // Without close-on-exec until the check is spawned (the master has
    // one thread: no other child can inherit it meanwhile).
    let exe = nix::fcntl::open(&binary.exe, OFlag::O_RDONLY, nix::sys::stat::Mode::empty())?;
    let spawned = spawn_check(binary, handover, &exe);
    set_cloexec(exe.as_raw_fd(), true)?;
    let (pid, output) = spawned?;
    Ok(Check { pid, output, exe })
}

fn spawn_check(binary: &Binary, handover: &OwnedFd, exe: &OwnedFd) -> io::Result<(Pid, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let stdin = handover.try_clone()?;
    let child = Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()))
        .arg0(&binary.argv0)
        .arg(CHECK_ARG)
        .args(&binary.args)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(write.try_clone()?))
        .stderr(Stdio::from(write))
        .spawn()?;
    // Reaped by the master's loop, through its pidfd, never by `Child`.
    Ok((Pid::from_raw(child.id() as i32), read))
}

/// What a check wrote, up to 16 KiB (a check that says more is not one).
/// The pipe does not block: what is not there yet is not waited for.
pub fn read_output(fd: &OwnedFd) -> String {
    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(fd.as_fd(), &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Replaces this process's image with `exe` (the file checked), going on
/// from the hand-over in `handover`, with the descriptors `fds` kept open,
/// and this image's own binary kept open too, to go back to if the new
/// image cannot go on. Returns only if `execve` failed: then everything is
/// as it was.
pub fn exec(binary: &Binary, exe: &OwnedFd, handover: &OwnedFd, fds: &[RawFd]) -> io::Error {
    // Opened without close-on-exec: the new image owns it.
    let old = match nix::fcntl::open(
        "/proc/self/exe",
        OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(old) => old,
        Err(errno) => return io::Error::from(errno),
    };
    // `exe` stays open across the exec (a script's interpreter opens it
    // as /dev/fd/N); the new image closes it, told its number.
    let mut argv = vec![binary.argv0.clone()];
    let (h, e, x) = (handover.as_raw_fd(), old.as_raw_fd(), exe.as_raw_fd());
    argv.push(format!("{RESUME_ARG}{h},{e},{x}").into());
    argv.extend(binary.args.iter().cloned());
    let (argv, env) = match exec_strings(&argv) {
        Ok(strings) => strings,
        Err(e) => return e,
    };
    let kept: Vec<RawFd> = fds.iter().copied().chain([h, x]).collect();
    for &fd in &kept {
        let _ = set_cloexec(fd, false);
    }
    let error = match nix::unistd::fexecve(exe.as_fd(), &argv, &env) {
        Err(errno) => io::Error::from(errno),
        Ok(never) => match never {},
    };
    for &fd in &kept {
        let _ = set_cloexec(fd, true);
    }
    error
}

/// `argv` and this process's environment as `execve` takes them; the error
/// names which held a NUL byte.
pub(super) fn exec_strings(argv: &[OsString]) -> Result<(Vec<CString>, Vec<CString>), io::Error> {
    let cstrings = |items: &mut dyn Iterator<Item = OsString>| -> Option<Vec<CString>> {
        items.map(|s| CString::new(s.into_vec()).ok()).collect()
    };
    let argv = cstrings(&mut argv.iter().cloned())
        .ok_or_else(|| io::Error::other("a NUL byte in the command line"))?;
    let mut env = std::env::vars_os().map(|(k, v)| {
        let mut kv = k;
        kv.push("=");
        kv.push(v);
        kv
    });
    let env =
        cstrings(&mut env).ok_or_else(|| io::Error::other("a NUL byte in the environment"))?;
    Ok((argv, env))
}

/// Sets or clears a descriptor's close-on-exec flag.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: the descriptor stays open for the duration of the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// The system's monotonic clock, in ns: the same for every image.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
