//! The `rcluster` command: parse, run the master, and on failure print one
//! line (`rcluster: ...`) and exit with the error's code.

use std::process::ExitCode;

use rcluster::cli::{self, Parsed};

fn main() -> ExitCode {
    rcluster::ensure_std_fds();
    let config = match cli::parse(std::env::args_os()) {
        Ok(Parsed::Run(config)) => config,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rcluster: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let log = rcluster::log::Log::new(config.log_format, config.log_level);
    match rcluster::master::run(&config, &log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rcluster: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
