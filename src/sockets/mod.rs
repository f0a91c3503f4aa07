//! The sockets: the listening ones the master binds or adopts and hands to
//! workers (`listen.rs`), one per slot and lane with `--balance reuseport`
//! and how new connections are steered over them (`balance.rs`), the
//! sockets a process inherited by the systemd protocol (`inherited.rs`,
//! which the worker library also reads), the notify protocol both ways
//! (`notify.rs`), which process holds which port (`portcheck.rs`), and a
//! listener of either kind for servers that serve both (`stream.rs`).
//!
//! Nothing here knows the supervisor: what crosses is plain words
//! (`crate::vocab`).

pub mod balance;
pub mod inherited;
pub mod listen;
pub mod notify;
pub mod portcheck;
pub mod probe;
pub mod stream;
