//! Everything the master does before its loop: block the signals it reads,
//! adopt the sockets systemd passed and bind the others, write the pid
//! file, open the notify and control sockets, and say where it listens.
//! Bad input (an address, a path) fails here, before any worker exists.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::control::metrics::MetricsServer;
use crate::control::rundir;
use crate::control::server::{BindError, ControlServer, Taken};
use crate::control::status::MasterInfo;
use crate::error::Error;
use crate::launch::spawn::env::{self, Value};
use crate::shell::log::Log;
use crate::shell::pidfile::PidFile;
use crate::shell::signals::Signals;
use crate::shell::upgrade::Binary;
use crate::shell::upgrade::handover::Handover;
use crate::sockets::listen::{self, Listener};
use crate::sockets::notify::NotifySocket;
use crate::start::config::{Config, Control};
use crate::supervisor::policy::Policy;
use crate::supervisor::record::Record;

/// What the master opened (or took over) before its loop.
struct Sockets {
    signals: Signals,
    listeners: Vec<Listener>,
    pid_file: Option<PidFile>,
    notify: NotifySocket,
    control: Option<ControlServer>,
    metrics: Option<MetricsServer>,
}

/// A master ready to start its workers.
pub struct Setup {
    pub signals: Signals,
    pub listeners: Vec<Listener>,
    pub pid_file: Option<PidFile>,
    pub notify: NotifySocket,
    pub control: Option<ControlServer>,
    pub metrics: Option<MetricsServer>,
    pub info: MasterInfo,
    pub policy: Policy,
    /// The binary's releases (generation 1's resolved at start), with
    /// `--env-file`; none for a library's master.
    pub releases: Option<crate::shell::releases::Releases>,
    /// The binary a live upgrade reads again (none for a library's master).
    pub binary: Option<Binary>,
    /// What an earlier image of this master handed over (a live upgrade).
    pub handover: Option<Handover>,
    /// Manage the process's memory (`trim.rs`): lock the code as it runs,
    /// give the heap back before a long sleep. The binary's master only; a
    /// library's master is its user's process.
    pub own_memory: bool,
    watchdog: Option<Duration>,
}

impl Setup {
    /// `owner`: the workers' uid and gid when they run as another user
    /// (`--user`), who must be able to reach the notify socket.
    pub fn new(config: &Config, log: &Log, owner: Option<(u32, u32)>) -> Result<Setup, Error> {
        // First, so that a signal sent while binding waits for the loop.
        let signals =
            Signals::block().map_err(|e| Error::os("blocking the master's signals", e))?;
        let listeners = listen::bind_all(
            &config.listen,
            config.backlog,
            listen::adopt_inherited()?,
            config.reuseport,
        )?;
        let pid_file = config
            .pid_file
            .as_deref()
            .map(PidFile::create)
            .transpose()?;
        // A path, as systemd gives (some clients cannot reach an abstract
        // name); in the runtime directory, or abstract if there is none.
        let notify = NotifySocket::bind(rundir::dir().ok().as_deref(), owner)
            .map_err(|e| Error::os("creating the notify socket", e))?;
        let control = open_control(config, &listeners, log)?;
        let metrics = config
            .metrics
            .as_ref()
            .map(MetricsServer::bind)
            .transpose()?;
        log.emit(&Record::Started {
            pid: std::process::id(),
            workers: config.workers,
            version: crate::vocab::version(),
        });
        if let Some((server, cure)) = config.known_to_lose_requests() {
            log.emit(&Record::LosesRequests { server, cure });
        }
        for listener in &listeners {
            log.emit(&Record::Listening {
                name: listener.name.clone(),
                addr: listener.local.clone(),
            });
        }
        if let Some(metrics) = &metrics {
            log.emit(&Record::MetricsEndpoint {
                addr: metrics.addr.clone(),
            });
        }
        let sockets = Sockets {
            signals,
            listeners,
            pid_file,
            notify,
            control,
            metrics,
        };
        Ok(Setup::assemble(config, sockets, Instant::now(), None))
    }

    /// The new image of an upgraded master: the sockets of the hand-over
    /// taken over as they are (nothing is bound, nothing logged), the pid
    /// file written again.
    pub fn resume(config: &Config, handover: Handover) -> Result<Setup, Error> {
        let signals =
            Signals::block().map_err(|e| Error::os("blocking the master's signals", e))?;
        // SAFETY: the old image handed each descriptor over to us alone.
        let own = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
        let taking = |what: &str| {
            let what = format!("taking over {what} after the upgrade");
            move |e| Error::os(what, e)
        };
        let listeners = handover
            .listeners
            .iter()
            .map(|l| {
                Listener::resume(
                    l.name.clone(),
                    l.local.clone(),
                    own(l.fd),
                    l.file.as_deref(),
                )
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(taking("the listeners"))?;
        // The old image run again after a failed upgrade goes on without
        // a pid file it cannot write: it serves, which matters more.
        let pid_file = match config.pid_file.as_deref().map(PidFile::create) {
            Some(Err(e)) if handover.failed.is_some() => {
                let line = format!("rcluster: going on without the pid file: {e}\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
                None
            }
            created => created.transpose()?,
        };
        let n = &handover.notify;
        let notify = NotifySocket::resume(own(n.fd), n.address.clone(), n.dir.clone())
            .map_err(taking("the notify socket"))?;
        let control = handover
            .control
            .as_ref()
            .map(|c| ControlServer::resume(own(c.fd), &c.path))
            .transpose()
            .map_err(taking("the control socket"))?;
        let metrics = handover
            .metrics
            .as_ref()
            .map(|m| MetricsServer::resume(own(m.fd), m.addr.clone(), m.file.as_deref()))
            .transpose()
            .map_err(taking("the metrics socket"))?;
        let started = Duration::from_micros(handover.started_ago_us);
        let started = Instant::now()
            .checked_sub(started)
            .unwrap_or_else(Instant::now);
        let sockets = Sockets {
            signals,
            listeners,
            pid_file,
            notify,
            control,
            metrics,
        };
        Ok(Setup::assemble(config, sockets, started, Some(handover)))
    }

    fn assemble(
        config: &Config,
        sockets: Sockets,
        started: Instant,
        handover: Option<Handover>,
    ) -> Setup {
        let Sockets {
            signals,
            listeners,
            pid_file,
            notify,
            control,
            metrics,
        } = sockets;
        let info = MasterInfo {
            name: config.name.clone(),
            started,
            listeners: listeners
                .iter()
                .map(|l| (l.name.clone(), l.local.clone()))
                .collect(),
            control: control
                .as_ref()
                .map(|c| c.path().display().to_string())
                .unwrap_or_default(),
            env_file: config.env_file.as_ref().map(|p| p.display().to_string()),
            releases: Vec::new(),
            upgrades: serde_json::Value::Null,
            config: config.settings_json(),
        };
        Setup {
            signals,
            listeners,
            pid_file,
            notify,
            control,
            metrics,
            info,
            policy: config.policy(),
            releases: None,
            binary: None,
            handover,
            own_memory: false,
            watchdog: config.watchdog,
        }
    }

    pub fn listener_names(&self) -> Vec<crate::sockets::listen::Named> {
        self.listeners.iter().map(Listener::named).collect()
    }

    pub fn listener_fds(&self) -> Vec<RawFd> {
        self.listeners.iter().map(Listener::fd).collect()
    }

    /// What every worker is told: where to say `READY=1`, the watchdog,
    /// and, with `sockets`, its listeners at fd 3.. in every protocol.
    pub fn worker_vars(&self, sockets: bool) -> Vec<(String, Value)> {
        let mut vars = if sockets {
            env::listen_vars(&self.listener_names())
        } else {
            Vec::new()
        };
        vars.extend(env::notify_vars(self.notify.address(), self.watchdog));
        vars
    }
}

/// The control socket, if it should have one. `--control PATH` must work.
/// The default place, `NAME.sock` in the runtime directory, may be taken
/// (another master of that name, an app's socket, a file): then
/// `NAME-<pid>.sock` beside it, and the log says why.
fn open_control(
    config: &Config,
    listeners: &[Listener],
    log: &Log,
) -> Result<Option<ControlServer>, Error> {
    match &config.control {
        Control::Off => Ok(None),
        Control::At(path) => match ControlServer::bind(path) {
            Ok(control) => {
                log.emit(&Record::Control {
                    path: path.display().to_string(),
                    error: None,
                });
                Ok(Some(control))
            }
            Err(BindError::Taken(Taken::NotASocket(what))) => Err(Error::PathTaken {
                path: path.clone(),
                purpose: "the control socket",
                what,
            }),
            Err(e) => Err(Error::Bind {
                addr: format!("the control socket {}", path.display()),
                cause: e.to_string(),
            }),
        },
        Control::Default => {
            let dir = match rundir::dir() {
                Ok(dir) => dir,
                Err(e) => {
                    log.emit(&Record::Control {
                        path: rundir::location().display().to_string(),
                        error: Some(e.to_string()),
                    });
                    return Ok(None);
                }
            };
            // Never the pid file, nor a socket the app listens on.
            let ours = |path: &Path| {
                config.pid_file.as_deref() == Some(path)
                    || listeners
                        .iter()
                        .any(|l| l.local == format!("unix:{}", path.display()))
            };
            let preferred = dir.join(format!("{}.sock", config.name));
            let fallback = dir.join(format!("{}-{}.sock", config.name, std::process::id()));
            let why_not = if ours(&preferred) {
                "it is this master's pid file or listener".to_string()
            } else {
                match ControlServer::bind(&preferred) {
                    Ok(control) => {
                        log.emit(&Record::Control {
                            path: preferred.display().to_string(),
                            error: None,
                        });
                        return Ok(Some(control));
                    }
                    Err(e) => e.to_string(),
                }
            };
            log.emit(&Record::ControlMoved {
                from: preferred.display().to_string(),
                to: fallback.display().to_string(),
                why: why_not,
            });
            match ControlServer::bind(&fallback) {
                Ok(control) => Ok(Some(control)),
                Err(e) => {
                    log.emit(&Record::Control {
                        path: fallback.display().to_string(),
                        error: Some(e.to_string()),
                    });
                    Ok(None)
                }
            }
        }
    }
}
