//! The library for worker processes: take the listening sockets the master
//! (or systemd) passed, say when ready, and learn when to stop.
//!
//! A Rust server needs three lines to be a good rcluster worker:
//!
//! ```no_run
//! use rcluster::worker;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = worker::listeners()?.take_tcp(0)?;
//! let shutdown = worker::shutdown()?;
//! worker::ready()?;
//! while let Some(conn) = shutdown.accept(&listener)? {
//!     // serve `conn`; after the stop signal, `accept` returns `None`
//! #   drop(conn);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Everything here also works outside rcluster: under systemd socket
//! activation, or on its own (then `ready()` and friends do nothing and say
//! so).
//!
//! Not to be confused with the master's record of a worker
//! (`supervisor::slot::Worker`).

mod exit;
mod shutdown;

use std::io;
use std::time::Duration;

pub use crate::sockets::inherited::{
    LISTEN_FDS_START, Listeners, ListenersError, Which, listeners,
};
pub use crate::sockets::stream::{Accept, Listener, Stream};
pub use exit::{ExitReason, on_exit, set_exit_deadline};
pub use shutdown::{STOP_SIGNALS, Shutdown, Wait, shutdown};
pub(crate) use shutdown::{install as install_shutdown, restore_default_stop, take_over_stop};

/// Tells the master (or systemd) this worker is ready to serve: `READY=1`.
///
/// Returns whether a message was sent: `false`, doing nothing, when no
/// `NOTIFY_SOCKET` is set (the worker runs on its own).
pub fn ready() -> io::Result<bool> {
    crate::sockets::notify::notify("READY=1")
}

/// Says the worker is stopping on its own: `STOPPING=1`. Under rcluster its
/// replacement starts at once.
pub fn stopping() -> io::Result<bool> {
    crate::sockets::notify::notify("STOPPING=1")
}

/// A free-form status line the master logs: `STATUS=...`.
pub fn status(status: &str) -> io::Result<bool> {
    let line: String = status.chars().filter(|&c| c != '\n').collect();
    crate::sockets::notify::notify(&format!("STATUS={line}"))
}

/// A liveness ping: `WATCHDOG=1`. With `--watchdog DUR` a worker must send
/// one at least every DUR ([`watchdog_interval`] says how often to).
pub fn watchdog() -> io::Result<bool> {
    crate::sockets::notify::notify("WATCHDOG=1")
}

/// Half the watchdog timeout (`WATCHDOG_USEC`), as systemd recommends, if a
/// watchdog is set for this process (`WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    let pid: u32 = std::env::var("WATCHDOG_PID").ok()?.parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(Duration::from_micros(usec) / 2)
}

/// This worker's slot (`RCLUSTER_WORKER_ID`), if run by rcluster.
pub fn id() -> Option<usize> {
    std::env::var("RCLUSTER_WORKER_ID").ok()?.parse().ok()
}

/// This worker's generation (`RCLUSTER_GENERATION`), if run by rcluster.
pub fn generation() -> Option<u64> {
    std::env::var("RCLUSTER_GENERATION").ok()?.parse().ok()
}
