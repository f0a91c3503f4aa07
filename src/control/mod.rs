//! What people and programs talk to: the control socket and its protocol
//! (`server.rs`), served in the master's loop without ever blocking it
//! (`endpoint.rs`, which the metrics socket shares); the client commands
//! (`client.rs`: `rcluster status|reload|scale|stop|ls|notify`); what
//! `status` says (`status.rs`, and `view.rs` for a person) and what
//! `/metrics` says (`metrics.rs`);
//! where masters put their sockets so clients find them (`rundir.rs`); and
//! what a worker uses, read from `/proc` when asked (`usage.rs`).
//!
//! The control plane reads the supervisor's state and asks for what a
//! signal would; it starts nothing itself.

pub mod client;
pub mod endpoint;
pub mod holder;
pub mod metrics;
pub mod rundir;
pub mod server;
pub mod status;
pub mod usage;
pub mod view;
