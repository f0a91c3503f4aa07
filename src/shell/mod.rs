//! The shell around the pure supervisor: everything that makes a syscall
//! for the master. `setup.rs` opens and binds everything before the loop;
//! `master/` is the loop (sources become events, the supervisor answers
//! with actions, which are carried out), the only code that reads the
//! clock; around it, what the loop drives: the signals it reads
//! (`signals.rs`), children it reaps (`reap.rs`), the binary's releases
//! (`releases.rs`), the look at a booting
//! worker (`serving.rs`), the workers' output (`output.rs`), the log
//! (`log/`), the pid file (`pidfile.rs`) and the memory it gives back after
//! start-up (`trim.rs`).

pub mod log;
pub mod master;
pub mod output;
pub mod pidfile;
pub mod reap;
pub mod releases;
pub mod serving;
pub mod setup;
pub mod signals;
mod token;
pub mod trim;
pub mod undertaker;
pub mod upgrade;

pub use master::serve;
