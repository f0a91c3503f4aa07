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
    Signals::new(HANDLED)
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
