//! The command line: clap definitions, with an `RCLUSTER_*` environment
//! variable behind every option (for containers), turned into a `Config`
//! for the master, or into one of the commands that talk to a running
//! master (`client.rs`). A usage error is clap's whole message.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as _, FromArgMatches, Parser, ValueEnum, error::ErrorKind};

use crate::control::client;
use crate::error::Error;
use crate::launch::shim::Mode as ShimMode;
use crate::sockets::listen::{ListenSpec, UnixAccess};
use crate::start::config::{self, Config, Control, LogFormat};
use crate::start::file::ConfigFile;
use crate::start::layers;
use crate::supervisor::policy::{ReadyRule, RestartDelay};
use crate::supervisor::probe::ProbePolicy;
use crate::vocab::parse_duration;

const AFTER_HELP: &str = "\
Signals to the master:
  HUP         rolling reload: replace every worker, --reload-batch at a time, each
              old one drained only once its replacement is ready
  TERM, INT   graceful stop: workers drain up to --stop-timeout (a second INT, or QUIT,
              stops at once; a second TERM changes nothing)
  QUIT        immediate stop
  TTIN, TTOU  one worker more / less
  USR1        reopen --log-file
  USR2        live upgrade: the master re-executes its binary in place (same pid,
              sockets and workers), once the new binary has checked the hand-over

Talking to a running master (through its control socket):
  rcluster status [--json]     workers, generations, states, restarts
  rcluster ls                  every master of this user, one line each
  rcluster reload [--wait]     like HUP; --wait exits non-zero if the reload aborts
  rcluster rollback [--wait]   back to the release that served before, with a reload's safety
  rcluster scale N|+N|-N|auto  run N workers, N more, N fewer, one per CPU
  rcluster stop [--wait]       like TERM
  rcluster upgrade [--wait]    like USR2; --wait exits 1 if the new binary fails its check

Before production:
  rcluster check [OPTIONS] -- COMMAND   run it here on 127.0.0.1: does it lose requests
                                        on a reload, a crash or a stop, and which flag cures it

Each worker gets its listeners at fd 3, 4, ... with LISTEN_FDS, LISTEN_PID and
LISTEN_FDNAMES (systemd socket activation), RCLUSTER_WORKER_ID (its slot) and
RCLUSTER_GENERATION.

Example:
  rcluster --workers auto --listen 127.0.0.1:8080 -- node server.js";

/// A preforking master for network servers in any language: binds the
/// sockets once, runs one worker per CPU that inherits them, restarts
/// crashed workers, reloads with zero downtime on HUP and stops gracefully
/// on TERM.
#[derive(Debug, Parser)]
#[command(name = "rcluster", version, after_help = AFTER_HELP)]
#[command(
    override_usage = "rcluster [OPTIONS] -- COMMAND [ARGS...]\n       rcluster <status|ls|reload|rollback|scale|stop|upgrade|notify> [OPTIONS]\n       rcluster check [--duration DUR] [--json] [OPTIONS] -- COMMAND [ARGS...]"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    #[command(flatten)]
    Client(client::Command),
    /// Before production: run the server under rcluster on 127.0.0.1,
    /// crash, reload and stop it under load, and say whether it loses
    /// requests and which flag cures it (exit 0 reload-safe, 1 not, 2
    /// cannot run it)
    #[command(override_usage = "rcluster check [CHECK OPTIONS] [OPTIONS] -- COMMAND [ARGS...]")]
    Check(Box<CheckArgs>),
    /// The configuration file (--config): check one, or show the settings
    /// a master would run and where each comes from
    #[command(subcommand)]
    Config(ConfigSub),
}

#[derive(Debug, clap::Subcommand)]
enum ConfigSub {
    /// Check FILE as a reload reads it (nginx -t): exit 0 if it would
    /// apply, 1 with the line and key at fault. Addresses are not bound
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// The settings a master started with these options would run (the
    /// file of --config, RCLUSTER_* variables, flags), and where each
    /// value comes from: flag, variable, file (its line) or default.
    /// With neither --config nor a command: the running master's (found
    /// by --control, --name or --pid-file, as `status` finds it)
    #[command(
        override_usage = "rcluster config show [--config FILE] [OPTIONS] [-- COMMAND [ARGS...]]"
    )]
    Show {
        #[command(flatten)]
        run: Box<Args>,
    },
}

/// `rcluster check`: its own options, then the master's as for a run.
#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// About how long the check may take; most of it is reloads under load
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration,
          help_heading = "Check options")]
    duration: Duration,
    /// The report as JSON
    #[arg(long, help_heading = "Check options")]
    json: bool,
    /// What the server speaks: `http`, or `tcp` (connections only: whether
    /// each is accepted and closed cleanly)
    #[arg(long, value_enum, default_value_t = ProtocolArg::Http, help_heading = "Check options")]
    protocol: ProtocolArg,
    #[command(flatten)]
    run: Args,
}

/// The check's options, taken out of its arguments before they are the
/// checked master's.
const CHECK_VALUED: &[&str] = &["--duration", "--protocol"];
const CHECK_BARE: &[&str] = &["--json"];

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Http,
    Tcp,
}

/// The master's options.
#[derive(Debug, clap::Args)]
struct Args {
    /// Read the options from this TOML file, one key per long option
    /// (`workers = 4`, `stop-timeout = "30s"`, `command = ["./server"]`,
    /// variables under `[env]`); flags and RCLUSTER_* variables override
    /// it. Read again at every reload, which applies it
    #[arg(long, env = "RCLUSTER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// What this master is called (in `rcluster ls`, status and every log
    /// record; its control socket is NAME.sock); default: the command's
    /// name, or its script's (`node app.js` is `app`)
    #[arg(long, env = "RCLUSTER_NAME", value_name = "NAME", value_parser = parse_name)]
    name: Option<String>,

    /// How many workers: `auto` (the CPUs available to this process,
    /// cgroup-aware) or a number
    #[arg(short, long, env = "RCLUSTER_WORKERS", value_name = "auto|N",
          default_value = "auto", value_parser = parse_workers)]
    workers: usize,

    /// Address to listen on, repeatable: 127.0.0.1:8080, :8080 (all IPv4
    /// interfaces), [::1]:8080, unix:/path/app.sock; prefix NAME= to name it
    #[arg(
        short,
        long,
        env = "RCLUSTER_LISTEN",
        value_name = "[NAME=]ADDR",
        value_delimiter = ','
    )]
    listen: Vec<ListenSpec>,

    /// Mode of every unix: listener's file (systemd's SocketMode=): who may
    /// connect; 0666 lets a proxy of another user (nginx's www-data) in
    #[arg(long, env = "RCLUSTER_SOCKET_MODE", value_name = "MODE", default_value = "0666",
          value_parser = UnixAccess::parse_mode)]
    socket_mode: u32,

    /// Owner of every unix: listener's file (systemd's SocketUser=)
    #[arg(long, env = "RCLUSTER_SOCKET_USER", value_name = "USER")]
    socket_user: Option<String>,

    /// Group of every unix: listener's file (systemd's SocketGroup=), e.g.
    /// www-data with --socket-mode 0660
    #[arg(long, env = "RCLUSTER_SOCKET_GROUP", value_name = "GROUP")]
    socket_group: Option<String>,

    /// Listen backlog (capped by the kernel's net.core.somaxconn)
    #[arg(long, env = "RCLUSTER_BACKLOG", value_name = "N",
          default_value_t = config::DEFAULT_BACKLOG,
          value_parser = clap::value_parser!(u32).range(1..))]
    backlog: u32,

    /// How connections reach the workers: `shared` (one queue per address,
    /// every worker accepts from it) or `reuseport` (a queue per worker
    /// slot, SO_REUSEPORT, balanced by flow hash over the ready ones)
    #[arg(long, env = "RCLUSTER_BALANCE", value_enum, default_value_t = BalanceArg::Shared)]
    balance: BalanceArg,

    /// Signal a worker receives to stop (QUIT for nginx-style servers)
    #[arg(long, env = "RCLUSTER_STOP_SIGNAL", value_name = "SIG",
          default_value = "TERM", value_parser = parse_signal)]
    stop_signal: i32,

    /// How long a stopping worker may drain before SIGKILL
    #[arg(long, env = "RCLUSTER_STOP_TIMEOUT", value_name = "DUR",
          default_value = "30s", value_parser = parse_duration)]
    stop_timeout: Duration,

    /// A worker that lived this long is restarted at once; quicker crashes
    /// back off from 100ms, doubling, up to 10s
    #[arg(long, env = "RCLUSTER_MIN_UPTIME", value_name = "DUR",
          default_value = "1s", value_parser = parse_duration)]
    min_uptime: Duration,

    /// Give up (exit 1) after N quick crashes in a row of one worker;
    /// default: never give up
    #[arg(long, env = "RCLUSTER_MAX_RESTARTS", value_name = "N")]
    max_restarts: Option<u32>,

    /// The wait after a quick crash: FIRST, doubling with each quick crash
    /// in a row, up to MAX
    #[arg(long, env = "RCLUSTER_RESTART_DELAY", value_name = "FIRST[..MAX]",
          default_value = "100ms..10s", value_parser = parse_restart_delay)]
    restart_delay: RestartDelay,

    /// When a new worker counts as ready (a reload stops an old worker only
    /// then): `auto` (READY=1; for a server that never says it, waiting on
    /// its listeners after --min-uptime), `notify` (READY=1 only),
    /// `delay:DUR`, or `exec` (exec succeeded: protects only against a
    /// command that cannot run)
    #[arg(long, env = "RCLUSTER_READY", value_name = "MODE",
          default_value = "auto", value_parser = parse_ready)]
    ready: ReadyRule,

    /// A new worker not ready within this is killed; during a reload, the
    /// reload is aborted and the old workers keep serving
    #[arg(long, env = "RCLUSTER_READY_TIMEOUT", value_name = "DUR",
          default_value = "60s", value_parser = parse_duration)]
    ready_timeout: Duration,

    /// How long a reload's first new worker (its canary) must stay ready
    /// before any old worker stops; 0 turns the canary off
    #[arg(long, env = "RCLUSTER_MIN_READY", value_name = "DUR",
          default_value = "2s", value_parser = parse_duration)]
    min_ready: Duration,

    /// How many workers a reload replaces at a time once its canary has
    /// proven itself: `auto` (a quarter of the workers, at least one) or N
    #[arg(long, env = "RCLUSTER_RELOAD_BATCH", value_name = "auto|N",
          default_value = "auto", value_parser = parse_batch)]
    reload_batch: Batch,

    /// Replace a worker whose resident memory (with the processes it
    /// started) passes SIZE (512M, 2G): its successor first, then it drains;
    /// looked at every 5s
    #[arg(long, env = "RCLUSTER_MAX_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,

    /// Replace a worker after at most DUR (between DUR/2 and DUR, spread
    /// by slot and at random, so workers started together leave one by
    /// one): its successor first, then it drains
    #[arg(long, env = "RCLUSTER_MAX_AGE", value_name = "DUR", value_parser = parse_duration)]
    max_age: Option<Duration>,

    /// Probe each worker with `GET PATH` (/healthz): a new worker is ready
    /// only once it answers 2xx or 3xx, a reload whose new worker fails
    /// --probe-failures probes in a row is aborted, and a serving worker
    /// that fails them is replaced (docs/reloads.md, "Probes")
    #[arg(long, env = "RCLUSTER_PROBE", value_name = "PATH", value_parser = parse_probe_path)]
    probe: Option<String>,

    /// How often a serving worker is probed (a starting one, every 250ms)
    #[arg(long, env = "RCLUSTER_PROBE_PERIOD", value_name = "DUR",
          default_value = "10s", value_parser = parse_duration)]
    probe_period: Duration,

    /// How long a probe's answer may take
    #[arg(long, env = "RCLUSTER_PROBE_TIMEOUT", value_name = "DUR",
          default_value = "1s", value_parser = parse_duration)]
    probe_timeout: Duration,

    /// Probes failed in a row that fail a worker
    #[arg(long, env = "RCLUSTER_PROBE_FAILURES", value_name = "N",
          default_value_t = config::DEFAULT_PROBE_FAILURES,
          value_parser = clap::value_parser!(u32).range(1..))]
    probe_failures: u32,

    /// Kill and replace a ready worker that sends no WATCHDOG=1 for this
    /// long (workers get WATCHDOG_USEC and WATCHDOG_PID)
    #[arg(long, env = "RCLUSTER_WATCHDOG", value_name = "DUR", value_parser = parse_duration)]
    watchdog: Option<Duration>,

    /// Write the master's pid here (removed on exit)
    #[arg(long, env = "RCLUSTER_PID_FILE", value_name = "PATH")]
    pid_file: Option<PathBuf>,

    /// The control socket for `rcluster status|reload|scale|stop`, or
    /// `none`; default: NAME.sock in $XDG_RUNTIME_DIR/rcluster,
    /// /run/rcluster (root) or /tmp/rcluster-UID
    #[arg(long, env = "RCLUSTER_CONTROL", value_name = "PATH")]
    control: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (127.0.0.1:9100, or
    /// unix:/path), from the master's own loop
    #[arg(long, env = "RCLUSTER_METRICS", value_name = "ADDR")]
    metrics: Option<ListenSpec>,

    /// Variables for the workers from a dotenv file (KEY=value, comments,
    /// quotes), read again at every reload: a reload rolls out new values
    #[arg(long, env = "RCLUSTER_ENV_FILE", value_name = "PATH")]
    env_file: Option<PathBuf>,

    /// Start each generation's workers in DIR, resolved when the
    /// generation is made: a reload follows a `current` symlink switched
    /// to the next release (a relative command, `./server`, is found there
    /// too), while a crash's restart runs the release that serves
    #[arg(long, env = "RCLUSTER_CHDIR", value_name = "DIR")]
    chdir: Option<PathBuf>,

    /// Run the workers as this user (rcluster binds first, as root)
    #[arg(long, env = "RCLUSTER_USER", value_name = "USER")]
    user: Option<String>,

    /// Run the workers with this group (default: the user's)
    #[arg(long, env = "RCLUSTER_GROUP", value_name = "GROUP")]
    group: Option<String>,

    /// For a server that binds its own port (`app.listen(3000)`): its
    /// bind() to a --listen port (or to any port, with one listener) gets
    /// rcluster's socket instead; implies --http-drain. Not for statically
    /// linked servers (Go)
    #[arg(long, env = "RCLUSTER_ADOPT_BIND")]
    adopt_bind: bool,

    /// Drain for a server that cannot: on its stop signal, take it off the
    /// listeners, mark each connection's responses `Connection: close`
    /// (spread over 250ms), close idle connections after 500ms, and pass
    /// the signal on once none is left. Also counts each worker's responses
    /// by status class: a reload's canary answering clearly more 5xx than
    /// the serving workers fails
    #[arg(long, env = "RCLUSTER_HTTP_DRAIN")]
    http_drain: bool,

    /// Where each worker's stderr goes: `master` (through the master, which
    /// keeps its last lines for the exit record and `rcluster status`) or
    /// `direct` (the master's stderr, untouched)
    #[arg(long, env = "RCLUSTER_WORKER_STDERR", value_enum, default_value_t = WorkerStderr::Master)]
    worker_stderr: WorkerStderr,

    /// Read the workers' stdout and stderr and write them line by line,
    /// prefixed with the slot (`[2] ...`), or as JSON records
    #[arg(long, env = "RCLUSTER_LOG_PREFIX")]
    log_prefix: bool,

    /// Log here instead of stderr (worker lines too, with --log-prefix);
    /// reopened on SIGUSR1
    #[arg(long, env = "RCLUSTER_LOG_FILE", value_name = "PATH")]
    log_file: Option<PathBuf>,

    /// Log format on stderr
    #[arg(long, env = "RCLUSTER_LOG_FORMAT", value_enum, default_value_t = Format::Human)]
    log_format: Format,

    /// Least severe level logged
    #[arg(long, env = "RCLUSTER_LOG_LEVEL", value_enum, default_value_t = Level::Info)]
    log_level: Level,

    /// The server to run, and its arguments
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BalanceArg {
    Shared,
    Reuseport,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WorkerStderr {
    Master,
    Direct,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Level {
    Critical,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

/// What parsing the command line came to.
pub enum Parsed {
    Run(Box<Config>),
    /// A command for a running master.
    Client(client::Command),
    /// `rcluster check`.
    Check(crate::check::Plan),
    /// `--help`, `help [COMMAND]` or `--version`: print this and exit 0.
    Print(String),
    /// `rcluster config check`: said on stdout (exit 0) or stderr (exit 1).
    Verdict {
        text: String,
        ok: bool,
    },
}

pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Parsed, Error> {
    let raw: Vec<OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&raw) {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            return Ok(Parsed::Print(e.render().to_string()));
        }
        Err(e) => return Err(Error::Cli(with_tips(e).render().to_string())),
    };
    match cli.command {
        Some(Sub::Client(command)) => Ok(Parsed::Client(command)),
        Some(Sub::Check(_)) => {
            // The subcommand is the first argument: the rest is the run's,
            // as the user wrote it, for the checked master to parse again.
            let args =
                crate::check::strip(raw.get(2..).unwrap_or_default(), CHECK_VALUED, CHECK_BARE);
            let config = configure(&args, None, true)?;
            let Some(Sub::Check(check)) = cli.command else {
                unreachable!("matched above");
            };
            Ok(Parsed::Check(crate::check::Plan {
                args,
                listen_given: !config.listen.is_empty(),
                http_drain: config.shim.is_some(),
                adopt_bind: config.shim == Some(ShimMode::AdoptAndDrain),
                duration: check.duration,
                json: check.json,
                protocol: match check.protocol {
                    ProtocolArg::Http => crate::check::Protocol::Http,
                    ProtocolArg::Tcp => crate::check::Protocol::Tcp,
                },
            }))
        }
        Some(Sub::Config(ConfigSub::Check { file })) => Ok(check_file(&file)),
        // Neither a file nor a command: the running master's.
        Some(Sub::Config(ConfigSub::Show { run }))
            if run.config.is_none() && run.command.is_empty() =>
        {
            let target = client::Target::of(run.name, run.control, run.pid_file);
            Ok(Parsed::Client(client::Command::ConfigShow { target }))
        }
        Some(Sub::Config(ConfigSub::Show { .. })) => {
            let given = raw.get(3..).unwrap_or_default();
            let config = configure(given, None, false)?;
            let table = crate::control::view::config_table(&config.settings_json());
            Ok(Parsed::Print(table))
        }
        None => Ok(Parsed::Run(Box::new(configure(
            raw.get(1..).unwrap_or_default(),
            None,
            true,
        )?))),
    }
}

/// The master's options as a `Config`, from `given` (the run's arguments,
/// as typed), the `RCLUSTER_*` variables and the file `--config` names
/// (or `file`, as it was read before: a rollback's, an upgrade's).
pub fn configure(
    given: &[OsString],
    file: Option<ConfigFile>,
    need_command: bool,
) -> Result<Config, Error> {
    let command = run_command();
    let cli = |e: clap::Error| Error::Cli(with_tips(e).render().to_string());
    let first = command.clone().try_get_matches_from(given).map_err(cli)?;
    let file = match (file, first.get_one::<PathBuf>("config")) {
        (Some(file), _) => Some(file),
        (None, Some(path)) => Some(ConfigFile::read(path).map_err(|message| Error::Config {
            message,
            unreadable: true,
        })?),
        (None, None) => None,
    };
    let contents = file
        .as_ref()
        .map(|f| f.contents(|key| layers::kind_of(command, key)))
        .transpose()
        .map_err(|message| Error::Config {
            message,
            unreadable: false,
        })?
        .unwrap_or_default();
    let (argv, origins) = layers::merge(command, &first, file.as_ref().map(|f| (f, &contents)))
        .map_err(|message| Error::Config {
            message,
            unreadable: false,
        })?;
    let matches = command.clone().try_get_matches_from(&argv).map_err(cli)?;
    let args = Args::from_arg_matches(&matches).map_err(cli)?;
    if need_command && args.command.is_empty() {
        return Err(Error::Usage(
            "no command given: put the server after --, e.g. \
             rcluster --listen 127.0.0.1:8080 -- ./server (or command = [...] in --config)"
                .into(),
        ));
    }
    let mut config = config_of(args);
    config.settings = layers::settings(command, &matches, origins);
    config.given = given.to_vec();
    config.file_env = contents.env;
    config.file = file;
    Ok(config)
}

/// The master's options as clap sees them, built once: every reload
/// merges the file with the flags through it, and building it is most of
/// what a merge costs.
fn run_command() -> &'static clap::Command {
    static COMMAND: std::sync::OnceLock<clap::Command> = std::sync::OnceLock::new();
    COMMAND.get_or_init(|| {
        let mut command = Args::augment_args(clap::Command::new("rcluster").no_binary_name(true));
        command.build();
        command
    })
}

/// `rcluster config check FILE`.
fn check_file(path: &std::path::Path) -> Parsed {
    let given = [OsString::from("--config"), path.as_os_str().to_owned()];
    match configure(&given, None, false) {
        Ok(config) => {
            let file = config.file.as_ref().expect("read");
            let keys = config
                .settings
                .iter()
                .filter(|s| matches!(s.origin, layers::Origin::File(_)))
                .count();
            let command = if config.command.is_empty() {
                "no command (give it after --)".to_string()
            } else {
                "a command".to_string()
            };
            Parsed::Verdict {
                text: format!(
                    "{}: ok: {keys} settings, {} variables, {command}; version {}\n",
                    file.path.display(),
                    config.file_env.len(),
                    file.digest
                ),
                ok: true,
            }
        }
        Err(e) => Parsed::Verdict {
            text: match e {
                Error::Cli(text) => text,
                e => format!("rcluster: {e}\n"),
            },
            ok: false,
        },
    }
}

/// The master's options as a `Config`.
fn config_of(args: Args) -> Config {
    Config {
        name: args
            .name
            .unwrap_or_else(|| crate::control::rundir::default_name(&args.command)),
        workers: args.workers,
        listen: args
            .listen
            .into_iter()
            .map(|mut spec| {
                spec.access = UnixAccess {
                    mode: args.socket_mode,
                    user: args.socket_user.clone(),
                    group: args.socket_group.clone(),
                };
                spec
            })
            .collect(),
        backlog: args.backlog,
        reuseport: matches!(args.balance, BalanceArg::Reuseport),
        stop_signal: args.stop_signal,
        stop_timeout: args.stop_timeout,
        min_uptime: args.min_uptime,
        max_restarts: args.max_restarts,
        restart_delay: args.restart_delay,
        ready: args.ready,
        ready_timeout: args.ready_timeout,
        min_ready: args.min_ready,
        reload_batch: args.reload_batch.0,
        watchdog: args.watchdog,
        probe: args.probe.map(|path| ProbePolicy {
            path,
            period: args.probe_period,
            timeout: args.probe_timeout,
            failures: args.probe_failures,
        }),
        control: match args.control {
            Some(path) if path.as_os_str() == "none" => Control::Off,
            Some(path) => Control::At(path),
            None => Control::Default,
        },
        pid_file: args.pid_file,
        metrics: args.metrics,
        env_file: args.env_file,
        chdir: args.chdir,
        max_memory: args.max_memory,
        max_age: args.max_age,
        log_file: args.log_file,
        log_prefix: args.log_prefix,
        capture_stderr: matches!(args.worker_stderr, WorkerStderr::Master),
        shim: match (args.adopt_bind, args.http_drain) {
            (true, _) => Some(ShimMode::AdoptAndDrain),
            (false, true) => Some(ShimMode::Drain),
            (false, false) => None,
        },
        user: args.user,
        group: args.group,
        log_format: match args.log_format {
            Format::Human => LogFormat::Human,
            Format::Json => LogFormat::Json,
        },
        log_level: match args.log_level {
            Level::Critical => slog::Level::Critical,
            Level::Error => slog::Level::Error,
            Level::Warning => slog::Level::Warning,
            Level::Info => slog::Level::Info,
            Level::Debug => slog::Level::Debug,
            Level::Trace => slog::Level::Trace,
        },
        command: args.command,
        given: Vec::new(),
        file: None,
        file_env: Vec::new(),
        settings: Vec::new(),
    }
}

/// clap's error, plus the tip for the most common slip: the server's
/// command given without `--` before it.
fn with_tips(mut e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    let stray = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) if !arg.starts_with('-') => Some(arg.clone()),
        _ => None,
    };
    if e.kind() == ErrorKind::UnknownArgument
        && let Some(arg) = stray
    {
        let tip = format!("put the server and its arguments after --: rcluster [OPTIONS] -- {arg}");
        e.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![tip.into()]),
        );
    }
    e
}

/// `512M`, `2G`, `800K` (powers of 1024; `B`, `iB` optional) or bytes.
/// A probe's path: what follows the address in a URL.
fn parse_probe_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/')
        || s.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("a path is wanted, starting with / and without spaces: /healthz".into());
    }
    Ok(s.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    const FORMS: &str = "expected a size like 512M, 2G or 800K";
    let upper = s.trim().to_ascii_uppercase();
    let number = upper.trim_end_matches("IB").trim_end_matches('B');
    let (digits, unit) = match number.char_indices().last() {
        Some((i, 'K')) => (&number[..i], 1u64 << 10),
        Some((i, 'M')) => (&number[..i], 1 << 20),
        Some((i, 'G')) => (&number[..i], 1 << 30),
        Some((i, 'T')) => (&number[..i], 1 << 40),
        _ => (number, 1),
    };
    let value: f64 = digits.trim().parse().map_err(|_| FORMS.to_string())?;
    if !value.is_finite() || value <= 0.0 {
        return Err(FORMS.into());
    }
    let bytes = (value * unit as f64) as u64;
    // A bare number under a MiB is a unit forgotten: `512` meant 512M, and
    // as bytes it would recycle every worker at every look.
    if unit == 1 && bytes < 1 << 20 {
        return Err(format!(
            "{s} is {bytes} bytes, less than any server needs: give a unit, e.g. {s}M"
        ));
    }
    Ok(bytes)
}

fn parse_workers(s: &str) -> Result<usize, String> {
    let invalid = || {
        format!(
            "expected auto or a number from 1 to {}",
            config::MAX_WORKERS
        )
    };
    if s.eq_ignore_ascii_case("auto") {
        return Ok(num_cpus::get().max(1));
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=config::MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(invalid()),
    }
}

/// `--reload-batch`: `auto` (`None`: a quarter of the workers) or a number.
#[derive(Debug, Clone, Copy)]
struct Batch(Option<usize>);

fn parse_batch(s: &str) -> Result<Batch, String> {
    match s.parse::<usize>() {
        _ if s == "auto" => Ok(Batch(None)),
        Ok(n) if (1..=config::MAX_WORKERS).contains(&n) => Ok(Batch(Some(n))),
        _ => Err(format!(
            "expected auto or a number from 1 to {}",
            config::MAX_WORKERS
        )),
    }
}

fn parse_name(s: &str) -> Result<String, String> {
    if crate::control::rundir::valid_name(s) {
        Ok(s.to_string())
    } else {
        Err("expected up to 64 letters, digits, '_', '-' or '.' (not first)".into())
    }
}

/// `1s` (fixed), or `100ms..10s` (doubling from the first to the second).
fn parse_restart_delay(s: &str) -> Result<RestartDelay, String> {
    let invalid = || "expected FIRST or FIRST..MAX, e.g. 100ms..10s".to_string();
    let (first, max) = match s.split_once("..") {
        Some((first, max)) => (first, max),
        None => (s, s),
    };
    let first = humantime::parse_duration(first).map_err(|_| invalid())?;
    let max = humantime::parse_duration(max).map_err(|_| invalid())?;
    if first > max {
        return Err(format!("{s}: the first delay is longer than the longest"));
    }
    Ok(RestartDelay { first, max })
}

/// `exec`, `notify` or `delay:DUR`.
fn parse_ready(s: &str) -> Result<ReadyRule, String> {
    match s {
        "auto" => Ok(ReadyRule::Auto),
        "exec" => Ok(ReadyRule::Exec),
        "notify" => Ok(ReadyRule::Notify),
        _ => s
            .strip_prefix("delay:")
            .and_then(|d| humantime::parse_duration(d).ok())
            .map(ReadyRule::Delay)
            .ok_or_else(|| "expected auto, exec, notify or delay:DUR (e.g. delay:2s)".to_string()),
    }
}

/// `TERM`, `SIGTERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let invalid = || "expected a signal name such as TERM, QUIT or INT".to_string();
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|sig| sig as i32)
            .map_err(|_| invalid());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("800kB"), Ok(800 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(
            parse_size("512"),
            Err("512 is 512 bytes, less than any server needs: give a unit, e.g. 512M".into())
        );
        for bad in ["", "M", "-1M", "lots", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    fn parse_args(args: &[&str]) -> Result<Parsed, Error> {
        parse(
            std::iter::once("rcluster")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    fn config(args: &[&str]) -> Config {
        match parse_args(args) {
            Ok(Parsed::Run(config)) => *config,
            Ok(Parsed::Print(text)) => panic!("printed {text}"),
            Ok(Parsed::Client(command)) => panic!("a client command: {command:?}"),
            Ok(Parsed::Check(plan)) => panic!("a check: {plan:?}"),
            Ok(Parsed::Verdict { text, .. }) => panic!("a verdict: {text}"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn check_passes_the_run_options_on_without_its_own() {
        let Ok(Parsed::Check(plan)) = parse_args(&[
            "check",
            "--json",
            "-w",
            "2",
            "--duration=5s",
            "--http-drain",
            "--protocol",
            "tcp",
            "--",
            "srv",
            "--json",
        ]) else {
            panic!("not a check");
        };
        let args: Vec<_> = plan.args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args, ["-w", "2", "--http-drain", "--", "srv", "--json"]);
        assert!(plan.json && plan.http_drain && !plan.adopt_bind && !plan.listen_given);
        assert_eq!(plan.duration, Duration::from_secs(5));
        assert_eq!(plan.protocol, crate::check::Protocol::Tcp);
        let e = usage_error(&["check", "-w", "2"]);
        assert!(e.contains("no command given"), "{e}");
        let e = usage_error(&["check", "--duration", "soon", "--", "srv"]);
        assert!(e.contains("--duration"), "{e}");
    }

    fn usage_error(args: &[&str]) -> String {
        match parse_args(args) {
            Err(e @ (Error::Usage(_) | Error::Cli(_))) => e.to_string(),
            Err(e) => panic!("not a usage error: {e}"),
            Ok(_) => panic!("{args:?} parsed"),
        }
    }

    #[test]
    fn defaults_are_the_configs() {
        let c = config(&["--", "./server"]);
        let d = Config::defaults();
        assert!(c.workers >= 1);
        assert_eq!(c.backlog, d.backlog);
        assert_eq!(c.stop_signal, d.stop_signal);
        assert_eq!(c.stop_timeout, d.stop_timeout);
        assert_eq!(c.min_uptime, d.min_uptime);
        assert_eq!(c.max_restarts, d.max_restarts);
        assert_eq!(c.restart_delay, d.restart_delay);
        assert_eq!(c.ready, d.ready);
        assert_eq!(c.ready_timeout, d.ready_timeout);
        assert_eq!(c.reload_batch, d.reload_batch);
        assert_eq!(c.min_ready, d.min_ready);
        assert_eq!(c.watchdog, d.watchdog);
        assert_eq!(c.command, [OsString::from("./server")]);
    }

    #[test]
    fn values() {
        let c = config(&[
            "-w",
            "3",
            "-l",
            "web=127.0.0.1:0",
            "--listen",
            "unix:/tmp/x.sock",
            "--stop-signal",
            "quit",
            "--stop-timeout",
            "500ms",
            "--min-uptime",
            "2m",
            "--max-restarts",
            "3",
            "--",
            "node",
            "server.js",
        ]);
        assert_eq!(c.workers, 3);
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.stop_signal, libc::SIGQUIT);
        assert_eq!(c.stop_timeout, Duration::from_millis(500));
        assert_eq!(c.min_uptime, Duration::from_secs(120));
        assert_eq!(c.max_restarts, Some(3));
        assert_eq!(c.command.len(), 2);
    }

    #[test]
    fn readiness_options() {
        let c = config(&[
            "--ready",
            "delay:1500ms",
            "--ready-timeout",
            "5s",
            "--reload-batch",
            "2",
            "--watchdog",
            "10s",
            "--",
            "x",
        ]);
        assert_eq!(c.ready, ReadyRule::Delay(Duration::from_millis(1500)));
        assert_eq!(c.ready_timeout, Duration::from_secs(5));
        assert_eq!(c.reload_batch, Some(2));
        assert_eq!(
            config(&["--reload-batch", "auto", "--", "x"]).reload_batch,
            None
        );
        assert_eq!(c.watchdog, Some(Duration::from_secs(10)));
        assert_eq!(
            config(&["--ready", "notify", "--", "x"]).ready,
            ReadyRule::Notify
        );
        let e = usage_error(&["--ready", "soon", "--", "x"]);
        assert!(e.contains("exec, notify or delay:DUR"), "{e}");
        let e = usage_error(&["--reload-batch", "0", "--", "x"]);
        assert!(e.contains("from 1 to"), "{e}");
    }

    #[test]
    fn bad_values_name_the_input_and_the_valid_forms() {
        let e = usage_error(&["--workers", "0", "--", "x"]);
        assert!(
            e.contains("'0'") && e.contains("expected auto or a number"),
            "{e}"
        );
        let e = usage_error(&["--stop-timeout", "30", "--", "x"]);
        assert!(e.contains("500ms, 30s or 2m"), "{e}");
        let e = usage_error(&["--stop-signal", "NOPE", "--", "x"]);
        assert!(e.contains("TERM, QUIT"), "{e}");
        let e = usage_error(&["--bogus", "--", "x"]);
        assert!(e.contains("--bogus") && e.contains("Usage:"), "{e}");
        let e = usage_error(&["--listen", "8080", "--", "x"]);
        assert!(e.contains("127.0.0.1:8080"), "{e}");
        let e = usage_error(&["--workers", "2"]);
        assert!(e.contains("no command given"), "{e}");
    }

    #[test]
    fn signals_parse_in_every_usual_spelling() {
        for s in ["TERM", "SIGTERM", "term", "15"] {
            assert_eq!(parse_signal(s), Ok(libc::SIGTERM), "{s}");
        }
        assert!(parse_signal("99").is_err());
    }
}
