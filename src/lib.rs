//! rcluster: a preforking master/worker runtime for network servers.
//!
//! The `rcluster` binary binds the listening sockets once, runs one worker
//! per CPU that inherits them, restarts crashed workers with backoff,
//! replaces every worker without dropping a request on `SIGHUP`, and stops
//! gracefully on `SIGTERM`. Workers may be written in any language: they
//! take their sockets the systemd way and may say "ready" the systemd way.
//!
//! This library is for Rust programs: [`worker`] is for a server run by
//! rcluster (or systemd): it takes the inherited sockets, says ready, and
//! handles the stop signal. [`Cluster`] makes a program its own cluster,
//! forking workers that run a closure, like Node's `cluster` module.
//!
//! # What a worker receives
//!
//! | variable | value |
//! |---|---|
//! | `LISTEN_FDS` | how many listeners, at fds 3, 4, … |
//! | `LISTEN_PID` | the worker's own pid (systemd checks it; so does [`worker::listeners`]) |
//! | `LISTEN_FDNAMES` | the listeners' names, `:`-separated (`tcp-0` unless named) |
//! | `RCLUSTER_WORKER_ID` | the worker's slot, `0..workers`, stable across restarts |
//! | `RCLUSTER_GENERATION` | bumped by every reload |
//! | `NOTIFY_SOCKET` | where [`worker::ready`] sends `READY=1` |
//! | `WATCHDOG_USEC`, `WATCHDOG_PID` | with `--watchdog` |
//!
//! and, for servers written for other managers, `SERVER_STARTER_PORT`,
//! `SERVER_STARTER_GENERATION`, `EINHORN_FD_COUNT`, `EINHORN_FD_<n>` and
//! `NODE_APP_INSTANCE`.
//!
//! How the code is laid out is in `ARCHITECTURE.md`, beside the README.

pub mod cluster;
pub mod worker;

pub use cluster::{Cluster, ClusterBuilder, Workers};
pub use error::Error;
pub use supervisor::policy::ReadyRule;

// The parts of the binary (see ARCHITECTURE.md). Public so `main.rs` can
// reach them; not a stable API.
#[doc(hidden)]
pub mod check;
#[doc(hidden)]
pub mod control;
pub mod error;
#[doc(hidden)]
pub mod launch;
#[doc(hidden)]
pub mod shell;
pub(crate) mod sockets;
#[doc(hidden)]
pub mod start;
pub(crate) mod supervisor;
pub(crate) mod vocab;

/// Opens `/dev/null` on any of fds 0, 1 and 2 that is closed, so a socket
/// bound later can never land there and become a worker's stdin.
#[doc(hidden)]
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: fcntl on a small integer only queries it.
        let closed = unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1;
        if closed {
            // SAFETY: open returns the lowest free fd, which is `fd`; it is
            // deliberately left open for the life of the process.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}
