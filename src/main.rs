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
    Binary, fallback,
    handover::{self, Handover},
};
use rcluster::start::cli::{self, Parsed};

fn main() -> ExitCode {
    rcluster::ensure_std_fds();
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    // A live upgrade: this image checks a hand-over, or goes on from one.
    let upgrade = Upgrade::of(&mut argv);
    if let Some(Upgrade::Resume {
        fd,
        old_exe: Some(old),
        ..
    }) = &upgrade
    {
        // SAFETY: the old image handed these descriptors over to us alone.
        // Without a way back, a failure exits as it did before there was one.
        let _ = unsafe { fallback::arm(*fd, *old) };
    }
    let or_fail = |e: &rcluster::Error| or_fail(e, &argv);
    // The old image again, after a failed upgrade: it serves on whatever
    // else fails (a log file it cannot open: stderr then).
    let back_again = matches!(
        &upgrade,
        Some(Upgrade::Resume {
            failed: Some(_),
            ..
        })
    );
    let handover = match read_handover(&upgrade) {
        Ok(handover) => handover,
        Err(e) if matches!(upgrade, Some(Upgrade::Check)) => return fail(&e),
        Err(e) => return or_fail(&e),
    };
    let parsed = parse(&argv, handover.as_ref());
    let config = match parsed {
        Ok(Parsed::Run(config)) => config,
        Ok(Parsed::Client(command)) => return client::run(command),
        Ok(Parsed::Check(plan)) => return rcluster::check::run(plan),
        Ok(Parsed::Print(text)) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Verdict { text, ok: true }) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Verdict { text, ok: false }) => {
            let _ = std::io::stderr().write_all(text.as_bytes());
            return ExitCode::FAILURE;
        }
        Err(e) => return or_fail(&e),
    };
    if let Some(Upgrade::Check) = upgrade {
        let _ = std::io::stdout().write_all(handover::check_answer().as_bytes());
        return ExitCode::SUCCESS;
    }
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
            if fallback::can_go_back() {
                let e = format!("opening the log file {path}: {e}");
                return or_fail(&rcluster::Error::Usage(e));
            }
            if back_again
                && let Ok(log) = Log::new(config.log_format, config.log_level, None, &config.name)
            {
                let e = format!("rcluster: cannot open the log file {path}: {e}; logging here\n");
                let _ = std::io::stderr().write_all(e.as_bytes());
                log
            } else {
                let e = format!("rcluster: cannot open the log file {path}: {e}\n");
                let _ = std::io::stderr().write_all(e.as_bytes());
                return ExitCode::from(73);
            }
        }
    };
    let outcome = match handover {
        Some(handover) => resume(&config, &log, handover),
        None => run(&config, &log, Binary::of_this_process(&argv)),
    };
    if let Err(e) = &outcome {
        return or_fail(e);
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// The hand-over first: with --config, the new image runs the file as the
/// newest generation read it, not as it is now. An edit takes effect by a
/// reload, never by an upgrade, and a file half-edited cannot fail one.
fn read_handover(upgrade: &Option<Upgrade>) -> Result<Option<Handover>, rcluster::Error> {
    match upgrade {
        None => Ok(None),
        // SAFETY: stdin is ours, and nothing else reads it.
        Some(Upgrade::Check) => unsafe { Handover::read(0) }
            .map(Some)
            .map_err(rcluster::Error::Usage),
        // SAFETY: the old image handed this descriptor over to us.
        Some(Upgrade::Resume { fd, failed, .. }) => match unsafe { Handover::read(*fd) } {
            Ok(mut handover) => {
                fallback::keep(&handover.fds());
                handover.failed.clone_from(failed);
                Ok(Some(handover))
            }
            Err(e) => Err(rcluster::Error::Usage(format!("upgrade: {e}"))),
        },
    }
}

/// The command line; with a hand-over of a master run with --config, the
/// file as it was in force.
fn parse(argv: &[OsString], handover: Option<&Handover>) -> Result<Parsed, rcluster::Error> {
    let in_force = handover.and_then(|h| h.releases.as_ref()?.config_in_force());
    match in_force {
        Some(file) => cli::configure(argv.get(1..).unwrap_or_default(), Some(file.clone()), true)
            .map(|config| Parsed::Run(Box::new(config))),
        None => cli::parse(argv.to_vec()),
    }
}

enum Upgrade {
    /// `--upgrade-check`: can this binary go on from the hand-over on stdin?
    Check,
    /// `--upgrade-resume=FD[,EXE]`: go on from the hand-over in FD; EXE is
    /// the old image's binary, to go back to. With `--upgrade-failed=CAUSE`
    /// after it: this is the old image again, the new one could not go on.
    Resume {
        fd: i32,
        old_exe: Option<i32>,
        failed: Option<String>,
    },
}

impl Upgrade {
    /// Takes the upgrade's arguments out of `argv`, if any.
    fn of(argv: &mut Vec<OsString>) -> Option<Upgrade> {
        let first = argv.get(1).and_then(|a| a.to_str())?.to_string();
        let upgrade = if first == handover::CHECK_ARG {
            Upgrade::Check
        } else {
            let mut fds = first.strip_prefix(handover::RESUME_ARG)?.split(',');
            let fd = fds.next().unwrap_or_default();
            let old_exe = fds.next().and_then(|old| old.parse().ok());
            // This image's own binary, exec'd by its descriptor: not ours
            // to keep.
            if let Some(new_exe) = fds.next().and_then(|new| new.parse::<i32>().ok()) {
                // SAFETY: the old image left it open for the exec alone.
                unsafe { libc::close(new_exe) };
            }
            let failed = argv
                .get(2)
                .and_then(|a| a.to_str())
                .and_then(|a| a.strip_prefix(handover::FAILED_ARG))
                .map(String::from);
            if failed.is_some() {
                argv.remove(2);
            }
            Upgrade::Resume {
                fd: fd.parse().unwrap_or(-1),
                old_exe,
                failed,
            }
        };
        argv.remove(1);
        Some(upgrade)
    }
}

/// Fails as `fail` does; but a new image that can still go back runs the
/// old one again instead, which serves on (`upgrade --wait` says why).
fn or_fail(e: &rcluster::Error, argv: &[OsString]) -> ExitCode {
    if !fallback::can_go_back() {
        return fail(e);
    }
    let cause = e.to_string();
    let line = format!(
        "rcluster: the upgraded image cannot go on: {cause}; running the previous one again\n"
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    let (argv0, args) = argv.split_first().expect("argv[0]");
    let error = fallback::go_back(argv0, args, &cause);
    let line = format!("rcluster: cannot run the previous image again: {error}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    fail(e)
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
    let mut releases = Releases::start(config.chdir.as_deref(), &config.command, env_file)?;
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
    releases.configured(config, setup.listener_names());
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
    // For the tests: a new image that fails after the exec, while the file
    // this names exists (the old image, run again, ignores it).
    if handover.failed.is_none()
        && let Some(flag) = std::env::var_os("RCLUSTER_TEST_FAIL_RESUME")
        && std::path::Path::new(&flag).exists()
    {
        let why = "failing as RCLUSTER_TEST_FAIL_RESUME asks (a test)";
        return Err(rcluster::Error::Usage(why.into()));
    }
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
    let mut vars = setup.worker_vars(false);
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
    let mut launcher = ExecLauncher::new(setup.listener_names(), vars, identity, config.capture())
        .dying_with(config.stop_signal);
    if let Some(shim) = shim {
        launcher = launcher.with_shim(shim, config.stop_signal);
    }
    // Whatever the workers start comes back to the master if orphaned, so
    // nothing they start can outlive them unnoticed.
    if let Err(e) = rcluster::shell::reap::become_subreaper() {
        let line = format!("rcluster: cannot become a child subreaper: {e}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    setup.own_memory = true;
    rcluster::shell::serve(setup, launcher, log)
}
