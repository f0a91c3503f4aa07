//! Collecting exited children, one at a time: the caller handles each exit
//! before it reaps the next, so a decision about one exit never targets a
//! pid that was already reaped (and could already belong to someone else).
//!
//! Each worker has a pidfd ([`open`]) that becomes readable when it exits,
//! so its exit is collected by pid ([`pid`]), at a cost that does not grow
//! with the number of children; `waitpid(-1)` scans every child the kernel
//! knows of, which made a reload of N workers cost N² in the kernel.
//! [`any`] is for the rest: orphans the master inherits (as PID 1), and
//! workers on a kernel without pidfds. SIGCHLD coalesces (two children
//! dying together may raise it once), so it means "reap until nothing is
//! left", never "reap one".

use std::os::fd::{FromRawFd, OwnedFd};

use crate::launch::spawn::fds;
use crate::vocab::{Exit, Pid};

/// A pidfd for a child: readable once it has exited. `None` on kernels
/// before 5.3 (the caller falls back to SIGCHLD). It lives as long as the
/// worker: kept above the fds a start copies.
pub fn open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: plain syscall; the fd it returns (close-on-exec) is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // SAFETY: a new fd nothing else owns.
    (fd >= 0).then(|| fds::above_floor(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// The next exited child, if one is waiting: `waitpid(-1, WNOHANG)`.
pub fn any() -> Option<(Pid, Exit)> {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a valid pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            match decode(status) {
                Some(exit) => return Some((Pid::from_raw(pid), exit)),
                // Stopped or continued: not an exit.
                None => continue,
            }
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // 0: children remain but none has exited; ECHILD: no children at all.
        return None;
    }
}

/// Reaps one known child if it has exited. Cluster mode reaps only its own
/// workers: the host program may own other children.
pub fn pid(pid: Pid) -> Option<Exit> {
    let mut status = 0;
    // SAFETY: plain syscall with a valid pointer.
    let got = unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::WNOHANG) };
    if got == pid.as_raw() {
        decode(status)
    } else {
        None
    }
}

/// Makes the master a child subreaper: processes its workers started come
/// back to it when their parent dies, instead of going to PID 1, so none
/// can slip away by double-forking.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The master's children, as the kernel lists them (its workers, and any
/// process that came back to it).
pub fn children() -> Vec<Pid> {
    let me = std::process::id();
    std::fs::read_to_string(format!("/proc/self/task/{me}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// Whether `pid` was started by one of `workers`: it still carries the
/// environment that worker was given (`LISTEN_PID=<worker>`). A process
/// that cleared its environment is not recognized (it is stopped when the
/// master stops).
pub fn started_by(pid: Pid, workers: &[Pid]) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    env.split(|&b| b == 0)
        .filter_map(|var| var.strip_prefix(b"LISTEN_PID="))
        .any(|value| {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .is_some_and(|p| workers.contains(&Pid::from_raw(p)))
        })
}

fn decode(status: i32) -> Option<Exit> {
    if libc::WIFEXITED(status) {
        Some(Exit::Code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(Exit::Signaled {
            signal: libc::WTERMSIG(status),
            core_dumped: libc::WCOREDUMP(status),
        })
    } else {
        None
    }
}
