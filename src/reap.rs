//! Collecting exited children: `waitpid(-1, WNOHANG)` until nothing is left.
//!
//! SIGCHLD coalesces (two children dying together may raise it once), so one
//! signal means "reap everything that is ready", never "reap one". Waiting
//! for any pid also reaps orphans reparented to us when rcluster is PID 1.

use crate::supervisor::event::{Exit, Pid};

pub fn reap_all() -> Vec<(Pid, Exit)> {
    let mut reaped = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a valid pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            if let Some(exit) = decode(status) {
                reaped.push((Pid::from_raw(pid), exit));
            }
            continue;
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // 0: children remain but none has exited; ECHILD: no children at all.
        return reaped;
    }
}

/// Reaps one known child if it has exited. Cluster mode reaps only its own
/// workers: the host program may own other children.
pub fn reap_pid(pid: Pid) -> Option<Exit> {
    let mut status = 0;
    // SAFETY: plain syscall with a valid pointer.
    let got = unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::WNOHANG) };
    if got == pid.as_raw() {
        decode(status)
    } else {
        None
    }
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
