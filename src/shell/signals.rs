//! The master's signals, read from a `signalfd` the poll loop watches, and
//! what each one asks for. The table is in docs/control.md and `rcluster --help`.
//!
//! The signals are blocked and read as data: the master installs no signal
//! handler at all. Nothing runs asynchronously in it, and a worker forked
//! from it (cluster mode) starts with every disposition at its default,
//! with nothing of the master's to undo.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::supervisor::event::MasterSignal;
use crate::vocab::{MASTER_SIGNALS, Pid};

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for &signal in MASTER_SIGNALS {
        if let Ok(signal) = Signal::try_from(signal) {
            set.add(signal);
        }
    }
    set
}

/// One signal received: which, and who sent it.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub signal: i32,
    pub sender: Pid,
}

/// The signals, blocked, and the fd they are read from.
#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the handled signals and opens the fd that receives them. One
    /// sent before this is pending and is read on the first wakeup.
    pub fn block() -> io::Result<Signals> {
        let set = handled();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    /// Every signal waiting, in the order the kernel gives them.
    pub fn pending(&self) -> Vec<Received> {
        let mut received = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            received.push(Received {
                signal: info.ssi_signo as i32,
                sender: Pid::from_raw(info.ssi_pid as i32),
            });
        }
        received
    }
}

impl AsRawFd for Signals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What a signal asks the supervisor for; `None` for the two the shell
/// answers itself: SIGCHLD (reap) and SIGUSR1 (reopen the log file).
pub fn classify(signal: i32) -> Option<MasterSignal> {
    match signal {
        libc::SIGHUP => Some(MasterSignal::Reload),
        libc::SIGTERM => Some(MasterSignal::Terminate),
        libc::SIGINT => Some(MasterSignal::Interrupt),
        libc::SIGQUIT => Some(MasterSignal::Quit),
        libc::SIGTTIN => Some(MasterSignal::ScaleUp),
        libc::SIGTTOU => Some(MasterSignal::ScaleDown),
        _ => None,
    }
}
