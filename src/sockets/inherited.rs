//! The sockets a worker inherits (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`): checked, and handed out as typed listeners by position
//! or by name. The same protocol as systemd socket activation, so this works
//! under either.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Socket, Type};

use super::stream::Listener;

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
        // SAFETY: `fd` is one LISTEN_FDS says this process was given, open
        // for the call; it is only looked at through this borrow.
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
    /// Listeners handed over directly (cluster mode), not through the
    /// environment.
    pub(crate) fn from_fds(entries: Vec<(String, OwnedFd)>) -> Listeners {
        Listeners {
            entries: entries.into_iter().map(|(n, fd)| (n, Some(fd))).collect(),
        }
    }

    /// The raw sockets with their names, for the master adopting sockets
    /// systemd passed to it.
    pub(crate) fn into_fds(self) -> impl Iterator<Item = (String, OwnedFd)> {
        self.entries
            .into_iter()
            .filter_map(|(name, fd)| Some((name, fd?)))
    }

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
        let (fd, name, socket) = self.take_socket(which.into())?;
        let tcp = matches!(socket.domain(), Ok(d) if d == Domain::IPV4 || d == Domain::IPV6);
        check_listening(&socket, tcp, fd, name, "TCP")?;
        Ok(socket.into())
    }

    /// Takes a Unix stream listener.
    pub fn take_unix<'a>(
        &mut self,
        which: impl Into<Which<'a>>,
    ) -> Result<UnixListener, ListenersError> {
        let (fd, name, socket) = self.take_socket(which.into())?;
        let unix = matches!(socket.domain(), Ok(d) if d == Domain::UNIX);
        check_listening(&socket, unix, fd, name, "Unix")?;
        Ok(socket.into())
    }

    /// Takes a listener of either kind: for a server that serves a port or
    /// a Unix socket, whichever `--listen` gave it.
    pub fn take<'a>(&mut self, which: impl Into<Which<'a>>) -> Result<Listener, ListenersError> {
        let (fd, name, socket) = self.take_socket(which.into())?;
        let domain = socket.domain().ok();
        let tcp = domain == Some(Domain::IPV4) || domain == Some(Domain::IPV6);
        if domain == Some(Domain::UNIX) {
            check_listening(&socket, true, fd, name, "Unix")?;
            return Ok(Listener::Unix(socket.into()));
        }
        check_listening(&socket, tcp, fd, name, "TCP or Unix")?;
        Ok(Listener::Tcp(socket.into()))
    }

    /// Takes every listener not taken yet, in fd order, each of either
    /// kind: for a server that serves all that `--listen` gave it.
    pub fn take_all(&mut self) -> Result<Vec<Listener>, ListenersError> {
        let left: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].1.is_some())
            .collect();
        left.into_iter().map(|i| self.take(i)).collect()
    }

    fn take_socket(&mut self, which: Which<'_>) -> Result<(RawFd, String, Socket), ListenersError> {
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
