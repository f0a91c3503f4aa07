//! The `rcluster` command: parse, run the master, and on failure print one
//! line (`rcluster: ...`) and exit with the error's code.

use std::process::ExitCode;

use rcluster::cli::{self, Parsed};
use rcluster::client;
use rcluster::launch::exec::ExecLauncher;
use rcluster::log::Log;
use rcluster::setup::Setup;
use rcluster::spawn::command::{self, Identity};

fn main() -> ExitCode {
    rcluster::ensure_std_fds();
    let is_client = std::env::args_os()
        .nth(1)
        .is_some_and(|a| client::COMMANDS.iter().any(|c| a == *c));
    if is_client {
        return client::main(std::env::args_os());
    }
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
    let log = match Log::new(
        config.log_format,
        config.log_level,
        config.log_file.as_deref(),
    ) {
        Ok(log) => log,
        Err(e) => {
            let path = config
                .log_file
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display();
            eprintln!("rcluster: cannot open the log file {path}: {e}");
            return ExitCode::from(73);
        }
    };
    match run(&config, &log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rcluster: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The binary's master: everything that can be refused is checked before
/// anything is forked (the command, the user, the addresses), then the
/// workers are forked and exec'd.
fn run(config: &rcluster::config::Config, log: &Log) -> Result<(), rcluster::Error> {
    let command = command::resolve(&config.command)?;
    let identity = Identity::resolve(config.user.as_deref(), config.group.as_deref())?;
    let setup = Setup::new(config, log)?;
    let launcher = ExecLauncher::new(
        command,
        setup.listener_fds(),
        setup.worker_vars(true),
        identity,
        config.log_prefix,
    );
    // Parsing and binding are done: what they used need not stay resident.
    let _ = rcluster::trim::after_startup();
    rcluster::master::serve(setup, launcher, log)
}
