//! The reload benchmark: what users of a process manager care about, measured
//! under load on 127.0.0.1 with rcluster (release build) and `hello`.
//!
//! - `steady`: throughput and latency percentiles with N workers;
//! - `reload`: K rolling reloads under load: time from HUP to the first new
//!   worker ready and to `reload complete`, requests served and failed by
//!   class, latency of the requests that overlapped a reload (the roll
//!   itself: `--min-ready 0`, no canary hold; from HUP until the last
//!   replaced worker has exited, its clients reconnected);
//! - `defaults`: reload time with the default flags (a canary held for
//!   `--min-ready`, then a quarter of the workers at a time) of `hello`,
//!   which says READY=1, and of a worker that says nothing, at 2, 8 and 64
//!   workers;
//! - `crash`: `kill -9` of a random worker every S ms under load: time to the
//!   replacement exec'd and ready, failures, the longest silence;
//! - `scale`: reload and restart cost at 8, 64, 256 and 1024 workers of a worker
//!   that only says ready: per-worker reload time, master CPU per reload,
//!   master RSS;
//! - `idle`: the master's RSS, CPU ticks and wakeups over 10 s of nothing;
//! - `stderr`: a worker writing 100 MB/s, then as fast as it can, to stderr
//!   through the master and straight out: bytes delivered, master CPU;
//! - `upgrade`: K live upgrades of the master (`USR2`) under load, then K
//!   reloads of the same cluster under the same load: USR2 to the new
//!   image answering its control socket, failures, latency during each;
//! - `memory`: the master's RSS with the default flags and 4 workers, after
//!   3 reloads, a status and a metrics scrape;
//! - `balance` (not in the default run): `--balance shared` against
//!   `reuseport` with hello, Node and Python workers burning 2 ms of CPU a
//!   request: each worker's share and latency at 30/60/90% of capacity.
//!   `--balance reuseport` runs the other scenarios in that mode;
//! - `probes` (not in the default run): the master's CPU time with
//!   `--probe` every 100 ms against without, 4 and 16 workers, shared and
//!   reuseport, under keep-alive load;
//! - `config` (not in the default run): reloads of a 4-worker cluster
//!   under keep-alive load from flags, from a `--config` file read again
//!   unchanged, and from one each reload changes (arguments, a variable,
//!   an address added and removed): failures, reload time, master CPU.
//!
//! Each runs in keep-alive and `Connection: close` modes where it applies.
//! `--start-cmd`, `--reload-cmd` and `--addr` drive another process manager
//! with the same load and report (steady and reload only).
//!
//! The load generator and HTTP client here are also the integration tests'
//! (they include this module); some items are used only by one of the two.
#![allow(dead_code)]

pub mod config;
pub mod goals;
pub mod memory;
pub mod probes;
pub mod procfs;
pub mod report;
pub mod scenarios;
pub mod stats;
pub mod target;
pub mod upgrade;

// The HTTP client and load generator are the library's (`rcluster check`
// drives servers with them too).
pub use rcluster::check::{http, load};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use report::Report;
use scenarios::{Mode, Server};
use target::Bins;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Steady,
    Reload,
    Defaults,
    Crash,
    Scale,
    Idle,
    Stderr,
    Upgrade,
    Memory,
    Balance,
    Probes,
    Config,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Balance {
    Shared,
    Reuseport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Modes {
    KeepAlive,
    Close,
    Both,
}

/// cargo bench --bench reload [-- OPTIONS]
#[derive(Debug, Parser)]
#[command(name = "reload-bench")]
struct Args {
    /// Scenarios to run, comma-separated
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "steady,reload,defaults,crash,scale,idle,stderr,upgrade,memory"
    )]
    scenario: Vec<Scenario>,
    /// A few seconds per scenario (what the test suite runs)
    #[arg(long)]
    quick: bool,
    /// Worker counts for steady and reload, comma-separated (crash uses the
    /// first)
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// Client connections, one thread each
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Reloads in the reload scenario
    #[arg(long)]
    reloads: Option<usize>,
    /// Count at least this many ms from each HUP as "during" (the window
    /// is otherwise HUP to the last replaced worker's exit): to compare
    /// drains of different lengths over the same window
    #[arg(long, default_value_t = 0)]
    window_at_least: u64,
    /// Client connection mode
    #[arg(long, value_enum, default_value_t = Modes::Both)]
    mode: Modes,
    /// Where the JSON and SVG go (default: target/bench)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use the binaries in this directory (rcluster, examples/hello,
    /// examples/test_worker) instead of building release ones
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Another process manager: the command that starts it...
    #[arg(long, requires_all = ["reload_cmd", "addr"])]
    start_cmd: Option<String>,
    /// ...the command that reloads it (returns when the reload is done)...
    #[arg(long, requires = "start_cmd")]
    reload_cmd: Option<String>,
    /// ...and the 127.0.0.1 address it serves on
    #[arg(long, requires = "start_cmd")]
    addr: Option<SocketAddr>,
    /// `--balance` for every rcluster the scenarios start (the balance
    /// scenario runs both)
    #[arg(long, value_enum, default_value_t = Balance::Shared)]
    balance: Balance,
    /// Print the goals and the table as Markdown, for docs/performance.md
    #[arg(long)]
    markdown: bool,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

/// The knobs of one run.
#[derive(Debug, Clone)]
pub struct Opts {
    pub scenarios: Vec<Scenario>,
    pub modes: Vec<Mode>,
    pub workers: Vec<usize>,
    pub connections: usize,
    pub steady: Duration,
    pub reloads: usize,
    /// Steady traffic before the first and after each reload.
    pub gap: Duration,
    /// The shortest window of a reload (`--window-at-least`).
    pub window_at_least: Duration,
    pub crash: Duration,
    pub crash_every: Duration,
    pub scale_sizes: Vec<usize>,
    pub scale_reloads: usize,
    /// Worker counts and reloads of each in the defaults scenario.
    pub defaults_sizes: Vec<usize>,
    pub defaults_reloads: usize,
    pub idle: Duration,
    /// `--balance` of the rclusters started.
    pub balance: &'static str,
}

impl Opts {
    /// The default run: every scenario, bounded to about a minute and a half.
    pub fn full() -> Opts {
        Opts {
            scenarios: vec![
                Scenario::Steady,
                Scenario::Reload,
                Scenario::Defaults,
                Scenario::Crash,
                Scenario::Scale,
                Scenario::Idle,
                Scenario::Stderr,
                Scenario::Upgrade,
                Scenario::Memory,
            ],
            modes: vec![Mode::KeepAlive, Mode::Close],
            workers: vec![2, 4],
            connections: 32,
            steady: Duration::from_secs(5),
            reloads: 10,
            gap: Duration::from_millis(300),
            window_at_least: Duration::ZERO,
            crash: Duration::from_secs(10),
            crash_every: Duration::from_millis(500),
            scale_sizes: vec![8, 64, 256, 1024],
            scale_reloads: 3,
            defaults_sizes: vec![2, 8, 64],
            defaults_reloads: 3,
            idle: Duration::from_secs(10),
            balance: "shared",
        }
    }

    /// Every scenario for a few seconds: proves the bench works.
    pub fn quick() -> Opts {
        Opts {
            steady: Duration::from_secs(1),
            reloads: 2,
            gap: Duration::from_millis(100),
            crash: Duration::from_secs(1),
            crash_every: Duration::from_millis(250),
            scale_sizes: vec![8, 32],
            scale_reloads: 1,
            defaults_sizes: vec![2],
            defaults_reloads: 1,
            idle: Duration::from_secs(1),
            connections: 8,
            workers: vec![2],
            ..Opts::full()
        }
    }
}

/// Runs the scenarios `opts` selects against `server`.
pub fn run(opts: &Opts, server: &Server) -> Report {
    let mut report = Report {
        machine: match opts.balance {
            "shared" => machine(),
            other => format!("{}, --balance {other}", machine()),
        },
        ..Report::default()
    };
    let bins = match server {
        Server::Rcluster(bins) => Some(*bins),
        Server::External { .. } => None,
    };
    for scenario in &opts.scenarios {
        match (scenario, bins) {
            (Scenario::Steady, _) => {
                for &workers in &opts.workers {
                    for &mode in &opts.modes {
                        report
                            .steady
                            .push(scenarios::steady(opts, server, workers, mode));
                    }
                }
            }
            (Scenario::Reload, _) => {
                for &workers in &opts.workers {
                    for &mode in &opts.modes {
                        report
                            .reload
                            .push(scenarios::reload(opts, server, workers, mode));
                    }
                }
            }
            (Scenario::Defaults, Some(bins)) => {
                for silent in [false, true] {
                    for &workers in &opts.defaults_sizes {
                        report
                            .defaults
                            .push(scenarios::defaults(opts, bins, workers, silent));
                    }
                }
            }
            (Scenario::Crash, Some(bins)) => {
                report
                    .crash
                    .push(scenarios::crash(opts, bins, opts.workers[0], Mode::Close));
            }
            (Scenario::Scale, Some(bins)) => {
                for &workers in &opts.scale_sizes {
                    report.scale.push(scenarios::scale(opts, bins, workers));
                }
            }
            (Scenario::Idle, Some(bins)) => report.idle = Some(scenarios::idle(bins, opts.idle)),
            (Scenario::Stderr, Some(bins)) => report.stderr = scenarios::stderr(bins, opts.steady),
            (Scenario::Balance, Some(bins)) => report.balance = scenarios::balance(opts, bins),
            (Scenario::Probes, Some(bins)) => report.probes = probes::probes(opts, bins),
            (Scenario::Config, Some(bins)) => report.config = config::config(opts, bins),
            (Scenario::Memory, Some(bins)) => report.memory = memory::memory(bins),
            (Scenario::Upgrade, Some(bins)) => {
                for &workers in &opts.workers {
                    for &mode in &opts.modes {
                        let row = upgrade::upgrade(opts, bins, workers, mode);
                        report.upgrade.push(row);
                    }
                }
            }
            (
                Scenario::Defaults
                | Scenario::Crash
                | Scenario::Scale
                | Scenario::Idle
                | Scenario::Stderr
                | Scenario::Upgrade
                | Scenario::Memory
                | Scenario::Balance
                | Scenario::Probes
                | Scenario::Config,
                None,
            ) => {
                eprintln!("skipping {scenario:?}: it needs rcluster's own log");
            }
        }
    }
    report
}

/// Prints the table and writes `reload.json` and `reload.svg` into `out`.
pub fn write(report: &Report, out: &Path) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let json = out.join("reload.json");
    let svg = out.join("reload.svg");
    let text = serde_json::to_string_pretty(&report.json()).expect("JSON");
    std::fs::write(&json, text).map_err(|e| format!("writing {}: {e}", json.display()))?;
    report
        .svg(&svg)
        .map_err(|e| format!("drawing {}: {e}", svg.display()))?;
    Ok((json, svg))
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let mut opts = if args.quick {
        Opts::quick()
    } else {
        Opts::full()
    };
    opts.scenarios = args.scenario.clone();
    if !args.workers.is_empty() {
        opts.workers = args.workers.iter().map(|&n| n.max(1)).collect();
    }
    opts.connections = args.connections.max(1);
    opts.balance = match args.balance {
        Balance::Shared => "shared",
        Balance::Reuseport => "reuseport",
    };
    opts.reloads = args.reloads.unwrap_or(opts.reloads);
    opts.window_at_least = Duration::from_millis(args.window_at_least);
    opts.modes = match args.mode {
        Modes::KeepAlive => vec![Mode::KeepAlive],
        Modes::Close => vec![Mode::Close],
        Modes::Both => vec![Mode::KeepAlive, Mode::Close],
    };
    let bins = match &args.bin_dir {
        Some(dir) => Ok(Bins::in_dir(dir)),
        None => Bins::release(),
    };
    let bins = match bins {
        Ok(bins) => bins,
        Err(e) => {
            eprintln!("reload bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match (&args.start_cmd, &args.reload_cmd, args.addr) {
        (Some(start), Some(reload), Some(addr)) => Server::External {
            start,
            reload,
            addr,
        },
        _ => Server::Rcluster(&bins),
    };
    let report = run(&opts, &server);
    if args.markdown {
        print!("{}", markdown(&report));
    } else {
        print!("{}{}", report.table(), goals::text(&report));
    }
    let out = args.out.unwrap_or_else(default_out);
    match write(&report, &out) {
        Ok((json, svg)) => {
            println!(
                "\nraw figures: {}\npicture:     {}",
                json.display(),
                svg.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("reload bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What docs/performance.md shows of a run: the goals, then the whole
/// table.
fn markdown(report: &Report) -> String {
    let mut md = format!("From one run: {}.\n\n", report.machine);
    md += &goals::markdown(report);
    if let Some(line) = goals::under_load(report) {
        md += &format!("\nThe same restart {line}.\n");
    }
    md += &format!("\n```\n{}```\n", report.table());
    md
}

fn default_out() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench")
}

/// "2 CPUs (model), 23.5 GiB, Linux 6.1, 2026-11-23".
fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%F")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{} CPUs ({model}), {:.1} GiB, Linux {}, {date}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_kib as f64 / 1024.0 / 1024.0,
        read("/proc/sys/kernel/osrelease").trim()
    )
}
