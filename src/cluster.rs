//! In-process cluster mode, like Node's `cluster` module: the calling
//! process becomes the master (the same supervisor, signals, restarts and
//! rolling reloads as the `rcluster` binary) and each worker runs a closure
//! in a forked child.
//!
//! ```no_run
//! use rcluster::{Cluster, Workers};
//!
//! fn main() -> Result<(), rcluster::Error> {
//!     Cluster::builder()
//!         .workers(Workers::Auto)
//!         .listen("127.0.0.1:8080")
//!         .run(|worker| {
//!             let listener = worker.listeners()?.take_tcp(0)?;
//!             let shutdown = worker.shutdown();
//!             worker.ready()?;
//!             while let Some(conn) = shutdown.accept(&listener)? {
//!                 // serve `conn`
//! #               drop(conn);
//!             }
//!             Ok::<(), Box<dyn std::error::Error>>(())
//!         })
//! }
//! ```
//!
//! # Fork safety
//!
//! Workers are forked without exec, and `fork` copies only the calling
//! thread. So [`ClusterBuilder::run`] must be called before the program
//! starts any thread (no async runtime, no thread pool yet: start those in
//! the closure) and refuses to start otherwise. Everything else the program
//! made before `run` (its memory, open files) is shared with every worker,
//! as after any fork. A reload forks fresh workers from the master, so it
//! runs the code the master was started with: deploy new code by restarting
//! the master (or use the `rcluster` binary, whose reload execs what is on
//! disk).
//!
//! In the worker, the stop signals terminate the process until the closure
//! calls [`Worker::shutdown`]; from then on they only set the shutdown
//! request, and the worker exits when the closure returns.

use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::launch::fork::{self, ForkLauncher};
use crate::shell::log::Log;
use crate::shell::master;
use crate::shell::setup::Setup;
use crate::sockets::listen::ListenSpec;
use crate::start::config::{self, Config, Control, LogFormat};
use crate::supervisor::policy::ReadyRule;
use crate::vocab::{Generation, SlotId};
use crate::worker::{self, Listeners, Shutdown};

/// How many workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per CPU available to this process (affinity and cgroup quota).
    Auto,
    Fixed(usize),
}

impl From<usize> for Workers {
    fn from(n: usize) -> Workers {
        Workers::Fixed(n)
    }
}

/// The entry point of cluster mode; see the [module docs](self).
pub struct Cluster;

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        let mut config = Config::defaults();
        config.name = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.file_name()?.to_string_lossy().into_owned()))
            .filter(|name| crate::control::rundir::valid_name(name))
            .unwrap_or(config.name);
        ClusterBuilder {
            workers: Workers::Auto,
            listen: Vec::new(),
            config,
        }
    }
}

/// The options of the `rcluster` binary, as a builder. Defaults are the
/// binary's.
#[derive(Debug, Clone)]
#[must_use]
pub struct ClusterBuilder {
    workers: Workers,
    /// Parsed by `run`, so a bad address is an error there.
    listen: Vec<String>,
    config: Config,
}

impl ClusterBuilder {
    pub fn workers(mut self, workers: impl Into<Workers>) -> Self {
        self.workers = workers.into();
        self
    }

    /// An address to listen on, as `--listen` takes it: `127.0.0.1:8080`,
    /// `[::1]:8080`, `unix:/path/app.sock`, optionally `NAME=ADDR`.
    /// Checked by [`run`](Self::run).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen.push(addr.to_string());
        self
    }

    pub fn backlog(mut self, backlog: u32) -> Self {
        self.config.backlog = backlog;
        self
    }

    /// The signal a worker gets to stop (default `SIGTERM`).
    pub fn stop_signal(mut self, signal: i32) -> Self {
        self.config.stop_signal = signal;
        self
    }

    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.config.stop_timeout = timeout;
        self
    }

    pub fn min_uptime(mut self, uptime: Duration) -> Self {
        self.config.min_uptime = uptime;
        self
    }

    pub fn max_restarts(mut self, max: u32) -> Self {
        self.config.max_restarts = Some(max);
        self
    }

    /// When a worker counts as ready. `ReadyRule::Exec` means as soon as it
    /// is forked; with `ReadyRule::Notify` the closure calls
    /// [`Worker::ready`].
    pub fn ready(mut self, rule: ReadyRule) -> Self {
        self.config.ready = rule;
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.config.ready_timeout = timeout;
        self
    }

    /// How many workers a reload replaces at a time once its first has
    /// proven itself (default: a quarter of them).
    pub fn reload_batch(mut self, batch: usize) -> Self {
        self.config.reload_batch = Some(batch.max(1));
        self
    }

    /// How long a reload's first new worker must stay ready before any old
    /// worker stops (default 1 s; zero: no such hold).
    pub fn min_ready(mut self, hold: Duration) -> Self {
        self.config.min_ready = hold;
        self
    }

    pub fn watchdog(mut self, timeout: Duration) -> Self {
        self.config.watchdog = Some(timeout);
        self
    }

    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.pid_file = Some(path.into());
        self
    }

    /// What the master is called (default: the program's file name).
    pub fn name(mut self, name: &str) -> Self {
        self.config.name = name.to_string();
        self
    }

    /// A control socket for `rcluster status|reload|scale|stop --control
    /// PATH` (cluster mode has none unless asked).
    pub fn control(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.control = Control::At(path.into());
        self
    }

    /// JSON lines on stderr instead of sentences.
    pub fn json_logs(mut self, json: bool) -> Self {
        self.config.log_format = if json {
            LogFormat::Json
        } else {
            LogFormat::Human
        };
        self
    }

    /// Becomes the master and runs until stopped (`TERM`, `INT`, `QUIT`);
    /// each worker runs `work` in a forked child and exits with what it
    /// returns (0 for `()` or `Ok`, 1 for `Err`, 101 for a panic).
    ///
    /// Returns `Err` at once, forking nothing, if the process already has
    /// more than one thread or an address cannot be bound; and when
    /// `max_restarts` is used up.
    pub fn run<F, R>(self, work: F) -> Result<(), Error>
    where
        F: Fn(Worker) -> R,
        R: WorkerExit,
    {
        let count = thread_count();
        if count > 1 {
            return Err(Error::Threads { count });
        }
        // Before the master opens anything: a worker closes every fd that
        // is not in this list (or a listener).
        let program_fds =
            fork::open_fds().map_err(|e| Error::os("listing this process's open fds", e))?;
        let workers = match self.workers {
            Workers::Auto => num_cpus::get().max(1),
            Workers::Fixed(n) => n.clamp(1, config::MAX_WORKERS),
        };
        let listen = self
            .listen
            .iter()
            .map(|addr| {
                addr.parse::<ListenSpec>()
                    .map_err(|e| Error::Usage(format!("cannot listen on '{addr}': {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config = Config {
            workers,
            listen,
            ..self.config
        };
        let log = Log::new(config.log_format, config.log_level, None, &config.name)
            .map_err(|e| Error::os("opening the log", e))?;
        let setup = Setup::new(&config, &log, None)?;
        let sockets: Vec<(String, RawFd)> = setup
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.fd()))
            .collect();
        let run = |slot, generation| match Worker::start(slot, generation, sockets.clone()) {
            Ok(worker) => work(worker).exit_code(),
            Err(e) => {
                eprintln!("worker {slot}: cannot start: {e}");
                70
            }
        };
        let launcher = ForkLauncher::new(
            &run,
            program_fds,
            &setup.listener_fds(),
            setup.worker_vars(false),
        );
        master::serve(setup, launcher, &log)
    }
}

/// How a worker closure's result becomes its exit code.
pub trait WorkerExit {
    fn exit_code(self) -> i32;
}

impl WorkerExit for () {
    fn exit_code(self) -> i32 {
        0
    }
}

impl<E: fmt::Display> WorkerExit for Result<(), E> {
    fn exit_code(self) -> i32 {
        match self {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("worker {}: {e}", worker::id().unwrap_or_default());
                1
            }
        }
    }
}

/// What the closure gets in each worker.
#[derive(Debug)]
pub struct Worker {
    id: SlotId,
    generation: Generation,
    sockets: Vec<(String, RawFd)>,
    shutdown: Shutdown,
}

impl Worker {
    /// Becomes a worker in a freshly forked child. Until the closure calls
    /// [`shutdown`](Self::shutdown), a stop signal ends the process, as it
    /// would without rcluster.
    fn start(
        id: SlotId,
        generation: Generation,
        sockets: Vec<(String, RawFd)>,
    ) -> io::Result<Worker> {
        worker::restore_default_stop()?;
        let shutdown = worker::install_shutdown()?;
        Ok(Worker {
            id,
            generation,
            sockets,
            shutdown,
        })
    }

    /// The slot, `0..workers`, stable across restarts.
    pub fn id(&self) -> usize {
        self.id
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The listeners, in `listen` order, named as `listen` named them;
    /// fresh copies on every call. Fails (with `EMFILE`, say) if the
    /// process cannot open more fds.
    pub fn listeners(&self) -> io::Result<Listeners> {
        let entries = self
            .sockets
            .iter()
            .map(|(name, fd)| {
                // SAFETY: the master's listeners outlive every worker.
                let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
                Ok((name.clone(), fd.try_clone_to_owned()?))
            })
            .collect::<io::Result<_>>()?;
        Ok(Listeners::from_fds(entries))
    }

    /// The stop request. From the first call on, the stop signals no longer
    /// terminate the worker: the closure decides when to return.
    pub fn shutdown(&self) -> Shutdown {
        worker::take_over_stop();
        self.shutdown.clone()
    }

    /// `READY=1`, for [`ReadyRule::Notify`].
    pub fn ready(&self) -> io::Result<bool> {
        worker::ready()
    }
}

/// Threads in this process, from `/proc/self/task`.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |dir| dir.count())
}
