//! The `rcluster` command: parse, run the master, and on failure print one
//! line (`rcluster: ...`) and exit with the error's code.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use rcluster::control::client;
use rcluster::launch::exec::ExecLauncher;
use rcluster::launch::shim::Shim;
use rcluster::launch::spawn::command::Identity;
use rcluster::launch::spawn::env::Value;
use rcluster::shell::log::Log;
use rcluster::shell::releases::Releases;
use rcluster::shell::setup::Setup;
use rcluster::shell::upgrade::{
    Binary,
    handover::{self, Handover},
};
use rcluster::start::cli::{self, Parsed};

fn main() -> ExitCode {
    rcluster::ensure_std_fds();
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    // A live upgrade: this image checks a hand-over, or goes on from one.
    let upgrade = match argv.get(1).and_then(|a| a.to_str()) {
        Some(handover::CHECK_ARG) => Some(Upgrade::Check),
        Some(arg) => arg
            .strip_prefix(handover::RESUME_ARG)
            .map(|fd| Upgrade::Resume(fd.parse().unwrap_or(-1))),
        None => None,
    };
    if upgrade.is_some() {
        argv.remove(1);
    }
    let config = match cli::parse(argv.clone()) {
        Ok(Parsed::Run(config)) => config,
        Ok(Parsed::Client(command)) => return client::run(command),
        Ok(Parsed::Check(plan)) => return rcluster::check::run(plan),
        Ok(Parsed::Print(text)) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&e),
    };
    let handover = match upgrade {
        None => None,
        Some(Upgrade::Check) => return check_handover(),
        Some(Upgrade::Resume(fd)) => match unsafe { Handover::read(fd) } {
            // SAFETY: the old image handed this descriptor over to us.
            Ok(handover) => Some(handover),
            Err(e) => return fail(&rcluster::Error::Usage(format!("upgrade: {e}"))),
        },
    };
    let log = match Log::new(
        config.log_format,
        config.log_level,
        config.log_file.as_deref(),
        &config.name,
    ) {
        Ok(log) => log,
        Err(e) => {
            let path = config
                .log_file
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display();
            let e = format!("rcluster: cannot open the log file {path}: {e}\n");
            let _ = std::io::stderr().write_all(e.as_bytes());
            return ExitCode::from(73);
        }
    };
    let outcome = match handover {
        Some(handover) => resume(&config, &log, handover),
        None => run(&config, &log, Binary::of_this_process(&argv)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

enum Upgrade {
    /// `--upgrade-check`: can this binary go on from the hand-over on stdin?
    Check,
    /// `--upgrade-resume=FD`: go on from the hand-over in FD.
    Resume(i32),
}

/// `--upgrade-check`: the command line parsed (done by the caller), the
/// hand-over on stdin read whole; the answer on stdout, and the exit code.
fn check_handover() -> ExitCode {
    // SAFETY: stdin is ours, and nothing else reads it.
    match unsafe { Handover::read(0) } {
        Ok(_) => {
            let _ = std::io::stdout().write_all(handover::check_answer().as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&rcluster::Error::Usage(e)),
    }
}

/// One line on stderr (clap's own message as it is), and the error's code.
/// A closed stderr changes only the line, never the code.
fn fail(e: &rcluster::Error) -> ExitCode {
    let text = match e {
        rcluster::Error::Cli(text) => text.clone(),
        e => format!("rcluster: {e}\n"),
    };
    let _ = std::io::stderr().write_all(text.as_bytes());
    ExitCode::from(e.exit_code())
}

/// The binary's master: everything that can be refused is checked before
/// anything is forked (the command, the user, the addresses), then the
/// workers are forked and exec'd.
fn run(
    config: &rcluster::start::config::Config,
    log: &Log,
    binary: Binary,
) -> Result<(), rcluster::Error> {
    // The first reading of --env-file: one that cannot be used stops
    // rcluster now (65, 66), as it stops a reload later.
    let env_file = config
        .env_file
        .as_deref()
        .map(rcluster::start::envfile::EnvSource::open)
        .transpose()
        .map_err(|e| rcluster::Error::EnvFile {
            message: e.message,
            unreadable: e.unreadable,
        })?;
    // Generation 1's release: --chdir and the command, resolved now.
    let releases = Releases::start(config.chdir.as_deref(), &config.command, env_file)?;
    let first = releases.get(1).expect("generation 1 is kept").clone();
    let identity = Identity::resolve(config.user.as_deref(), config.group.as_deref())?;
    let shim = shim(config)?;
    if let Some(shim) = &shim {
        shim.check(&first.command.path(), &first.command.display())?;
    }
    let owner = identity
        .as_ref()
        .map(|i| (i.credentials.uid, i.credentials.gid));
    let mut setup = Setup::new(config, log, owner)?;
    setup.releases = Some(releases);
    setup.binary = Some(binary);
    serve(config, setup, identity, shim, log)
}

/// The new image of an upgraded master: the same command line, and what
/// the old image handed over instead of a start.
fn resume(
    config: &rcluster::start::config::Config,
    log: &Log,
    mut handover: Handover,
) -> Result<(), rcluster::Error> {
    let identity = Identity::resolve(config.user.as_deref(), config.group.as_deref())?;
    let shim = shim(config)?;
    let binary = Binary {
        exe: handover.exe.clone(),
        argv0: handover.argv0.clone(),
        args: handover.args.clone(),
    };
    let releases = handover.releases.take().map(Releases::restore);
    let mut setup = Setup::resume(config, handover)?;
    setup.releases = releases;
    setup.binary = Some(binary);
    serve(config, setup, identity, shim, log)
}

fn shim(config: &rcluster::start::config::Config) -> Result<Option<Shim>, rcluster::Error> {
    config
        .shim
        .map(|mode| {
            Shim::new(mode).map_err(|source| rcluster::Error::Os {
                op: "preparing the shim (memfd_create)".into(),
                source,
            })
        })
        .transpose()
}

/// Starts (or goes on with) the workers: exec'd, as `setup` says.
fn serve(
    config: &rcluster::start::config::Config,
    mut setup: Setup,
    identity: Option<Identity>,
    shim: Option<Shim>,
    log: &Log,
) -> Result<(), rcluster::Error> {
    let mut vars = setup.worker_vars(true);
    // `rcluster notify --ready` for workers whose PATH lacks rcluster (a
    // Node app's `execFile` then fails without a word).
    if let Some(binary) = &setup.binary {
        let path = binary.exe.display().to_string();
        vars.push(("RCLUSTER_BIN".into(), Value::Text(path)));
    }
    // Node listens again on fd 3, with its own backlog (511) unless given
    // one: the recipes give it this.
    vars.push((
        "RCLUSTER_BACKLOG".into(),
        Value::Text(config.backlog.to_string()),
    ));
    let mut launcher = ExecLauncher::new(&setup.listener_fds(), vars, identity, config.capture());
    if let Some(shim) = shim {
        launcher = launcher.with_shim(shim, config.stop_signal);
    }
    // Whatever the workers start comes back to the master if orphaned, so
    // nothing they start can outlive them unnoticed.
    if let Err(e) = rcluster::shell::reap::become_subreaper() {
        let line = format!("rcluster: cannot become a child subreaper: {e}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    setup.trim_when_idle = true;
    rcluster::shell::serve(setup, launcher, log)
}
