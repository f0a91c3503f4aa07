//! What a master is asked to do, before it does anything: the command line
//! (`cli.rs`, clap, `RCLUSTER_*` variables), the validated configuration
//! with every default (`config.rs`), the `--config` file (`file.rs`) and
//! which layer each setting comes from (`layers.rs`), and the `--env-file` format and the
//! rule for reading it again (`envfile.rs`).

pub mod changes;
pub mod cli;
pub mod config;
pub mod envfile;
pub mod file;
pub mod layers;
