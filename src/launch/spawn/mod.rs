//! The parts every started worker is made of, each in its own file: what it
//! runs and as whom (`command.rs`), the environment it gets (`env.rs`), the
//! async-signal-safe code between `fork` and `exec` (`child.rs`), and where
//! the master keeps its fds so that a start copies few (`fds.rs`). How
//! they are put together is `crate::launch`'s.

pub mod child;
pub mod command;
pub mod env;
pub mod fds;

use std::io;

use crate::vocab::errno_name;

/// A call that failed while a worker was being started, named: `fork`
/// does not fail with EMFILE, the `pipe2` before it does.
#[derive(Debug)]
pub struct CallFailed {
    pub call: &'static str,
    pub source: io::Error,
}

impl CallFailed {
    /// Names `call` as the one that failed with an error.
    pub fn during(call: &'static str) -> impl FnOnce(io::Error) -> CallFailed {
        move |source| CallFailed { call, source }
    }
}

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.source.raw_os_error() {
            Some(errno) => write!(f, "{} failed: {}", self.call, errno_name(errno)),
            None => write!(f, "{} failed: {}", self.call, self.source),
        }
    }
}
