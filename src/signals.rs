//! The master's signals: registered with signal-hook-mio (a self-pipe the
//! poll loop watches; the handlers do nothing we write), and what each one
//! asks for. The table is in the README and `rcluster --help`.

use std::io;

use signal_hook_mio::v1_0::Signals;

use crate::supervisor::event::MasterSignal;

/// Every signal the master handles.
pub const HANDLED: &[i32] = &[
    libc::SIGHUP,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCHLD,
    libc::SIGUSR1,
];

pub fn register() -> io::Result<Signals> {
    registering(HANDLED, || Signals::new(HANDLED))
}

/// Runs `register` with `signals` blocked in this thread, so that one
/// arriving while its handler is being installed waits (pending) until
/// the handler can act on it. signal-hook installs the OS handler a moment
/// before the action it runs is visible to it; a signal in that moment
/// would otherwise be lost, and a worker would miss its TERM.
pub fn registering<T>(signals: &[i32], register: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    for &signal in signals {
        if let Ok(signal) = Signal::try_from(signal) {
            set.add(signal);
        }
    }
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))?;
    let registered = register();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    registered
}

/// What a signal asks the supervisor for; `None` for the two the shell
/// answers itself: SIGCHLD (reap) and SIGUSR1 (reopen the log file).
pub fn classify(signal: i32) -> Option<MasterSignal> {
    match signal {
        libc::SIGHUP => Some(MasterSignal::Reload),
        libc::SIGTERM | libc::SIGINT => Some(MasterSignal::Stop),
        libc::SIGQUIT => Some(MasterSignal::StopNow),
        libc::SIGTTIN => Some(MasterSignal::ScaleUp),
        libc::SIGTTOU => Some(MasterSignal::ScaleDown),
        _ => None,
    }
}
