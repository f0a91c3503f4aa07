//! The parts every started worker is made of, each in its own file: what it
//! runs and as whom (`command.rs`), the environment it gets (`env.rs`), and
//! the async-signal-safe code between `fork` and `exec` (`child.rs`). How
//! they are put together is `crate::launch`'s.

pub mod child;
pub mod command;
pub mod env;
