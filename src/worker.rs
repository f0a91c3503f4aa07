//! The library for worker processes: take the listening sockets the master
//! (or systemd) passed, and learn when to stop.
//!
//! ```no_run
//! use rcluster::worker;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = worker::listeners()?.take_tcp(0)?;
//! let shutdown = worker::shutdown()?;
//! while let Some(conn) = shutdown.accept(&listener)? {
//!     // serve `conn`; after the stop signal, `accept` returns `None`
//! #   drop(conn);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Not to be confused with the master's record of a worker
//! (`supervisor::slot::Worker`).

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use socket2::{Domain, Socket, Type};

/// The first listener is always fd 3 (systemd's `SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Why the inherited sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListenersError {
    #[error(
        "no sockets were passed to this process (LISTEN_FDS is not set); \
         run it under rcluster or systemd socket activation"
    )]
    NotActivated,
    #[error(
        "LISTEN_PID is {found} but this process is {expected}: the sockets were \
         meant for another process (a wrapper that did not exec?)"
    )]
    WrongPid { found: String, expected: u32 },
    #[error("{var} is not valid: '{value}'")]
    BadVar { var: &'static str, value: String },
    #[error("the listeners were already taken by an earlier call")]
    AlreadyTaken,
    #[error("no listener named '{name}' (LISTEN_FDNAMES names: {known})")]
    NoSuchName { name: String, known: String },
    #[error("no listener {index}: {count} were passed")]
    NoSuchIndex { index: usize, count: usize },
    #[error("listener {0} was already taken")]
    Taken(String),
    #[error("fd {fd} ({name}) is not a socket")]
    NotASocket { fd: RawFd, name: String },
    #[error("listener {name} (fd {fd}) is not a listening {wanted} stream socket")]
    WrongKind {
        fd: RawFd,
        name: String,
        wanted: &'static str,
    },
    #[error("inspecting fd {fd}: {source}")]
    Io { fd: RawFd, source: io::Error },
}

/// Selects a listener by position (`0` is fd 3) or by its name.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    Index(usize),
    Name(&'a str),
}

impl From<usize> for Which<'_> {
    fn from(index: usize) -> Self {
        Which::Index(index)
    }
}

impl<'a> From<&'a str> for Which<'a> {
    fn from(name: &'a str) -> Self {
        Which::Name(name)
    }
}

/// The sockets passed to this process, each taken at most once.
#[derive(Debug)]
pub struct Listeners {
    entries: Vec<(String, Option<OwnedFd>)>,
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes the sockets passed with `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`
/// (by rcluster or by systemd). Each fd is checked to be a socket and made
/// close-on-exec, so the worker's own children do not inherit it.
///
/// It may succeed once per process: the fds are owned by what it returns.
pub fn listeners() -> Result<Listeners, ListenersError> {
    let count = std::env::var("LISTEN_FDS").map_err(|_| ListenersError::NotActivated)?;
    let pid = std::env::var("LISTEN_PID").map_err(|_| ListenersError::NotActivated)?;
    let expected = std::process::id();
    if pid.trim().parse::<u32>().ok() != Some(expected) {
        return Err(ListenersError::WrongPid {
            found: pid,
            expected,
        });
    }
    let count: usize = count.trim().parse().map_err(|_| ListenersError::BadVar {
        var: "LISTEN_FDS",
        value: count.clone(),
    })?;
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ListenersError::AlreadyTaken);
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let fd = LISTEN_FDS_START + i as RawFd;
        // systemd's default name for an unnamed socket.
        let name = names
            .get(i)
            .filter(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let stat = nix::sys::stat::fstat(unsafe { BorrowedFd::borrow_raw(fd) }).map_err(|e| {
            ListenersError::Io {
                fd,
                source: e.into(),
            }
        })?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(ListenersError::NotASocket { fd, name });
        }
        // SAFETY: LISTEN_PID says these fds were passed to this process,
        // and TAKEN makes this the only owner.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| ListenersError::Io {
            fd,
            source: e.into(),
        })?;
        entries.push((name, Some(owned)));
    }
    Ok(Listeners { entries })
}

impl Listeners {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The listeners' names, in fd order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Takes a TCP listener (IPv4 or IPv6).
    pub fn take_tcp<'a>(
        &mut self,
        which: impl Into<Which<'a>>,
    ) -> Result<TcpListener, ListenersError> {
        let (fd, name, socket) = self.take(which.into())?;
        let tcp = matches!(socket.domain(), Ok(d) if d == Domain::IPV4 || d == Domain::IPV6);
        check_listening(&socket, tcp, fd, name, "TCP")?;
        Ok(socket.into())
    }

    /// Takes a Unix stream listener.
    pub fn take_unix<'a>(
        &mut self,
        which: impl Into<Which<'a>>,
    ) -> Result<UnixListener, ListenersError> {
        let (fd, name, socket) = self.take(which.into())?;
        let unix = matches!(socket.domain(), Ok(d) if d == Domain::UNIX);
        check_listening(&socket, unix, fd, name, "Unix")?;
        Ok(socket.into())
    }

    fn take(&mut self, which: Which<'_>) -> Result<(RawFd, String, Socket), ListenersError> {
        let index = match which {
            Which::Index(index) if index < self.entries.len() => index,
            Which::Index(index) => {
                return Err(ListenersError::NoSuchIndex {
                    index,
                    count: self.entries.len(),
                });
            }
            Which::Name(name) => self
                .entries
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| ListenersError::NoSuchName {
                    name: name.into(),
                    known: self.names().collect::<Vec<_>>().join(", "),
                })?,
        };
        let (name, slot) = &mut self.entries[index];
        let fd = slot
            .take()
            .ok_or_else(|| ListenersError::Taken(name.clone()))?;
        Ok((fd.as_raw_fd(), name.clone(), Socket::from(fd)))
    }
}

fn check_listening(
    socket: &Socket,
    right_domain: bool,
    fd: RawFd,
    name: String,
    wanted: &'static str,
) -> Result<(), ListenersError> {
    let stream = matches!(socket.r#type(), Ok(t) if t == Type::STREAM);
    let listening = socket.is_listener().unwrap_or(false);
    if right_domain && stream && listening {
        Ok(())
    } else {
        Err(ListenersError::WrongKind { fd, name, wanted })
    }
}

impl Listeners {
    /// The raw sockets with their names, for the master adopting sockets
    /// systemd passed to it.
    pub(crate) fn into_fds(self) -> impl Iterator<Item = (String, OwnedFd)> {
        self.entries
            .into_iter()
            .filter_map(|(name, fd)| Some((name, fd?)))
    }
}

/// Tells the master (or systemd) this worker is ready to serve: `READY=1`.
///
/// Returns whether a message was sent: `false`, doing nothing, when no
/// `NOTIFY_SOCKET` is set (the worker runs on its own).
pub fn ready() -> io::Result<bool> {
    crate::notify::notify("READY=1")
}

/// Says the worker is stopping on its own: `STOPPING=1`. Under rcluster its
/// replacement starts at once.
pub fn stopping() -> io::Result<bool> {
    crate::notify::notify("STOPPING=1")
}

/// A free-form status line the master logs: `STATUS=...`.
pub fn status(status: &str) -> io::Result<bool> {
    let line: String = status.chars().filter(|&c| c != '\n').collect();
    crate::notify::notify(&format!("STATUS={line}"))
}

/// A liveness ping: `WATCHDOG=1`. With `--watchdog DUR` a worker must send
/// one at least every DUR ([`watchdog_interval`] says how often to).
pub fn watchdog() -> io::Result<bool> {
    crate::notify::notify("WATCHDOG=1")
}

/// Half the watchdog timeout (`WATCHDOG_USEC`), as systemd recommends, if a
/// watchdog is set for this process (`WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    let pid: u32 = std::env::var("WATCHDOG_PID").ok()?.parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(Duration::from_micros(usec) / 2)
}

/// This worker's slot (`RCLUSTER_WORKER_ID`), if run by rcluster.
pub fn id() -> Option<usize> {
    std::env::var("RCLUSTER_WORKER_ID").ok()?.parse().ok()
}

/// This worker's generation (`RCLUSTER_GENERATION`), if run by rcluster.
pub fn generation() -> Option<u64> {
    std::env::var("RCLUSTER_GENERATION").ok()?.parse().ok()
}

/// The signals that ask a worker to stop.
pub const STOP_SIGNALS: &[i32] = &[libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];

/// Learns when the worker is asked to stop (`SIGTERM`, `SIGINT` or
/// `SIGQUIT`), and waits for sockets *or* that request, so a server can
/// stop accepting the moment it is told to.
///
/// Cheap to clone; every clone sees the same request.
#[derive(Debug, Clone)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Debug)]
struct ShutdownInner {
    /// Readable from the first stop signal on; never drained, so every
    /// waiter sees it.
    wake: UnixStream,
    signal: Arc<AtomicUsize>,
}

/// What [`Shutdown::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The fd is readable (or closed by the peer).
    Readable,
    /// The stop signal arrived.
    Shutdown,
    TimedOut,
}

/// Installs the stop-signal handlers (once per process) and returns a handle.
pub fn shutdown() -> io::Result<Shutdown> {
    static SHUTDOWN: OnceLock<Shutdown> = OnceLock::new();
    if let Some(shutdown) = SHUTDOWN.get() {
        return Ok(shutdown.clone());
    }
    let (wake, notify) = UnixStream::pair()?;
    wake.set_nonblocking(true)?;
    notify.set_nonblocking(true)?;
    let signal = Arc::new(AtomicUsize::new(0));
    for &sig in STOP_SIGNALS {
        signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)?;
        signal_hook::low_level::pipe::register(sig, notify.try_clone()?)?;
    }
    let shutdown = Shutdown {
        inner: Arc::new(ShutdownInner { wake, signal }),
    };
    Ok(SHUTDOWN.get_or_init(|| shutdown).clone())
}

impl Shutdown {
    /// The stop signal that arrived, if one has.
    pub fn signal(&self) -> Option<i32> {
        match self.inner.signal.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig as i32),
        }
    }

    pub fn requested(&self) -> bool {
        self.signal().is_some()
    }

    /// Waits until `fd` is readable, the stop signal arrives, or `timeout`
    /// passes (`None`: no limit). A stop request wins over a readable fd.
    pub fn wait(&self, fd: impl AsFd, timeout: Option<Duration>) -> io::Result<Wait> {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(t) => PollTimeout::try_from(t.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX),
        };
        loop {
            let mut fds = [
                PollFd::new(fd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.inner.wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(0) => return Ok(Wait::TimedOut),
                Ok(_) => {}
            }
            let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[1]) || self.requested() {
                return Ok(Wait::Shutdown);
            }
            if ready(&fds[0]) {
                return Ok(Wait::Readable);
            }
        }
    }

    /// Accepts the next connection, or returns `None` once the stop signal
    /// has arrived: from then on the worker accepts nothing, and connections
    /// still queued go to the other workers, which share the socket.
    ///
    /// Puts `listener` in non-blocking mode (another worker may take the
    /// connection this one was woken for).
    pub fn accept(&self, listener: &TcpListener) -> io::Result<Option<TcpStream>> {
        listener.set_nonblocking(true)?;
        loop {
            if self.wait(listener, None)? == Wait::Shutdown {
                return Ok(None);
            }
            match listener.accept() {
                Ok((stream, _)) => return Ok(Some(stream)),
                Err(e) if transient_accept_error(&e) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Errors after which the next accept may well succeed.
fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}
