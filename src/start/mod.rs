//! What a master is asked to do, before it does anything: the command line
//! (`cli.rs`, clap, `RCLUSTER_*` variables), the validated configuration
//! with every default (`config.rs`), and the `--env-file` format and the
//! rule for reading it again (`envfile.rs`).

pub mod cli;
pub mod config;
pub mod envfile;
