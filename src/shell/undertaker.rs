//! What stops the workers when the master dies (`kill -9`, the OOM
//! killer, a bug): a graceful stop, not a reset.
//!
//! A worker learns of its master's death from the kernel: its parent-death
//! signal is the stop signal (`PR_SET_PDEATHSIG`), so it drains as it does
//! at a graceful stop, the requests it holds answered. What the kernel
//! cannot do is bound that drain: a worker that ignores the signal, or
//! drains for ever, would outlive its master. So at start the master forks
//! the undertaker, a small process that knows each worker's process group
//! (the master tells it, a line per spawn and per exit, through a pipe)
//! and waits on that pipe. When the master dies, the pipe ends: the
//! undertaker sends the stop signal to every group left, waits for them up
//! to `--stop-timeout`, and kills what remains, as the master's own stop
//! would. When the master exits cleanly its workers are gone, and so the
//! undertaker exits at once. A live upgrade hands the pipe over.
//!
//! The undertaker is forked, not exec'd: the master has one thread, so
//! the child may run any code; it closes every descriptor but the pipe and
//! stderr (a listener it kept would hold the port), and ignores the
//! terminal's signals (Ctrl-C reaches the master's process group).

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;

use crate::vocab::Pid;

/// The master's end of the pipe, and the undertaker's pid.
#[derive(Debug)]
pub struct Undertaker {
    pipe: OwnedFd,
    pub pid: Pid,
}

impl Undertaker {
    /// Forks the undertaker.
    pub fn start(stop_signal: i32, stop_timeout: Duration) -> io::Result<Undertaker> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // SAFETY: the master has one thread (no lock can be held by
        // another); the child runs `serve` and never returns.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                drop(write);
                serve(read, stop_signal, stop_timeout)
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(read);
                // A master that cannot write a line now (the undertaker
                // stopped reading) goes on: the line is lost, not the loop.
                nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
                Ok(Undertaker {
                    pipe: write,
                    pid: child,
                })
            }
        }
    }

    /// The one an earlier image of the master started (a live upgrade).
    ///
    /// # Safety
    /// `fd` must be the hand-over's, owned by nothing else.
    pub unsafe fn resume(fd: RawFd, pid: i32) -> io::Result<Undertaker> {
        // SAFETY: as the caller says.
        let pipe = unsafe { OwnedFd::from_raw_fd(fd) };
        crate::shell::upgrade::set_cloexec(fd, true)?;
        Ok(Undertaker {
            pipe,
            pid: Pid::from_raw(pid),
        })
    }

    /// A worker started: its process group is the undertaker's to stop.
    pub fn watch(&self, worker: Pid) {
        self.say(format!("+{worker}\n"));
    }

    /// A worker was reaped: its group is the master's business again.
    pub fn forget(&self, worker: Pid) {
        self.say(format!("-{worker}\n"));
    }

    pub fn fd(&self) -> RawFd {
        self.pipe.as_raw_fd()
    }

    fn say(&self, line: String) {
        let _ = nix::unistd::write(self.pipe.as_fd(), line.as_bytes());
    }
}

/// The undertaker's life: reads the groups until the pipe ends, then stops
/// what is left.
fn serve(read: OwnedFd, stop_signal: i32, stop_timeout: Duration) -> ! {
    // Only the pipe (as fd 3) and stdio stay open.
    // SAFETY: descriptors of this process only; nothing else runs.
    unsafe {
        if read.as_raw_fd() != 3 {
            libc::dup2(read.as_raw_fd(), 3);
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        // Told apart from the master in `ps -o comm` and `pgrep -x`.
        libc::prctl(libc::PR_SET_NAME, c"rcluster-undert".as_ptr());
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGTSTP,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // The master's blocked set came with the fork: cleared, so that a
        // SIGKILL or a signal not ignored above ends it as it would anyone.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    std::mem::forget(read);
    let groups = read_groups(3);
    if !groups.is_empty() {
        stop(&groups, stop_signal, stop_timeout);
    }
    // SAFETY: ends this process only.
    unsafe { libc::_exit(0) }
}

/// The groups still listed when the pipe ends.
fn read_groups(fd: RawFd) -> BTreeSet<i32> {
    let mut groups = BTreeSet::new();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reads into a local buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return groups;
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            apply(&mut groups, &line[..line.len() - 1]);
        }
    }
}

/// `+PID` adds a group, `-PID` removes one.
fn apply(groups: &mut BTreeSet<i32>, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let (sign, number) = text.split_at(text.len().min(1));
    match (sign, number.parse::<i32>()) {
        ("+", Ok(pid)) if pid > 1 => {
            groups.insert(pid);
        }
        ("-", Ok(pid)) => {
            groups.remove(&pid);
        }
        _ => {}
    }
}

/// The stop of a master that is gone: the stop signal to every group, then
/// `SIGKILL` to those whose leader has not exited by the deadline.
fn stop(groups: &BTreeSet<i32>, stop_signal: i32, stop_timeout: Duration) {
    let _ = writeln!(
        io::stderr(),
        "rcluster: the master is gone: stopping its {} worker{} ({}), killing what is left after {}s",
        groups.len(),
        if groups.len() == 1 { "" } else { "s" },
        crate::vocab::signal_name(stop_signal),
        stop_timeout.as_secs_f64()
    );
    let mut waiting: Vec<(i32, OwnedFd)> = Vec::new();
    for &pgid in groups {
        // Opened before the signal, so that the leader's exit is seen even
        // if it is fast.
        // SAFETY: pidfd_open only reads its arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pgid, 0) };
        // SAFETY: signalling a group the master told us is its worker's.
        unsafe { libc::kill(-pgid, stop_signal) };
        if fd >= 0 {
            // SAFETY: a fresh descriptor, ours alone.
            waiting.push((pgid, unsafe { OwnedFd::from_raw_fd(fd as RawFd) }));
        }
    }
    let deadline = Instant::now() + stop_timeout;
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut polled: Vec<libc::pollfd> = waiting
            .iter()
            .map(|(_, fd)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: a local array of pollfds.
        unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
        let exited: BTreeSet<RawFd> = polled
            .iter()
            .filter(|p| p.revents != 0)
            .map(|p| p.fd)
            .collect();
        waiting.retain(|(_, fd)| !exited.contains(&fd.as_raw_fd()));
    }
    for (pgid, _) in &waiting {
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_add_and_remove_groups_and_nonsense_is_ignored() {
        let mut groups = BTreeSet::new();
        for line in ["+41", "+42", "-41", "+1", "+x", "", "-", "*43"] {
            apply(&mut groups, line.as_bytes());
        }
        assert_eq!(groups, BTreeSet::from([42]));
    }
}
