//! Listening sockets: what `--listen` says ([`ListenSpec`]), binding it
//! once in the master with socket2 ([`Listener`]), and the socket file a
//! Unix listener leaves behind.
//!
//! Every worker shares the master's sockets, so all workers accept from one
//! kernel queue: a worker that stops loses no queued connection, because the
//! master keeps its copy of each socket open (see DESIGN.md, pitfalls).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::Error;
use crate::sockets::inherited::ListenersError;

const FORMS: &str = "expected 127.0.0.1:8080, :8080, [::1]:8080 or unix:/path/app.sock, \
                     optionally prefixed with NAME=";

/// One `--listen` value: `[NAME=]ADDR`; for a Unix socket, who may
/// connect (`--socket-mode`, `--socket-user`, `--socket-group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub name: Option<String>,
    pub addr: ListenAddr,
    pub access: UnixAccess,
}

/// Who may connect to a Unix listener: its file's mode and owner, as
/// systemd's `SocketMode=`, `SocketUser=` and `SocketGroup=`. The mode is
/// 0666 unless given, as systemd's: a reverse proxy that runs as another
/// user (nginx's `www-data`) must be able to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixAccess {
    pub mode: u32,
    pub user: Option<String>,
    pub group: Option<String>,
}

impl Default for UnixAccess {
    fn default() -> UnixAccess {
        UnixAccess {
            mode: 0o666,
            user: None,
            group: None,
        }
    }
}

impl UnixAccess {
    /// `--socket-mode`: an octal mode such as 0660.
    pub fn parse_mode(mode: &str) -> Result<u32, String> {
        u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| "expected an octal mode such as 0660 or 0666".to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Names travel in `LISTEN_FDNAMES`, separated by `:`; systemd allows
/// letters, digits and a little punctuation.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

impl FromStr for ListenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenSpec, String> {
        // A name never contains ':' and an address always does, so the first
        // '=' before any ':' separates them.
        let (name, addr) = match s.split_once('=') {
            Some((name, addr)) if !name.contains(':') => (Some(name), addr),
            _ => (None, s),
        };
        if let Some(name) = name.filter(|n| !valid_name(n)) {
            return Err(format!(
                "bad listener name '{name}': use letters, digits, '_', '-' or '.'"
            ));
        }
        let access = UnixAccess::default();
        let addr = if let Some(path) = addr.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(FORMS.into());
            }
            ListenAddr::Unix(PathBuf::from(path))
        } else if let Some(port) = addr.strip_prefix(':') {
            let port: u16 = port.parse().map_err(|_| FORMS.to_string())?;
            ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], port)))
        } else {
            ListenAddr::Tcp(addr.parse().map_err(|_| FORMS.to_string())?)
        };
        Ok(ListenSpec {
            name: name.map(str::to_string),
            addr,
            access,
        })
    }
}

/// A listener as a worker is told of it: its name and address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Named {
    pub name: String,
    pub local: String,
}

/// A bound, listening socket owned by the master.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    socket: Socket,
    /// The address actually bound (port 0 resolved), for logs and tests.
    pub local: String,
    /// A Unix socket file this process created; held to be removed on drop.
    _socket_file: Option<SocketFile>,
    /// Bound here with `SO_REUSEPORT` (`--balance reuseport`): the address
    /// and backlog that more sockets of its group are bound with.
    pub reuseport: Option<(SocketAddr, i32)>,
}

impl Listener {
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    pub fn named(&self) -> Named {
        Named {
            name: self.name.clone(),
            local: self.local.clone(),
        }
    }

    /// Its address, if it is a TCP socket.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        let tcp = self.socket.r#type().ok()? == socket2::Type::STREAM;
        self.socket.local_addr().ok()?.as_socket().filter(|_| tcp)
    }

    /// The socket and, for a Unix socket this process made, the guard that
    /// removes its file when dropped.
    pub fn into_parts(self) -> (Socket, Option<SocketFile>) {
        (self.socket, self._socket_file)
    }

    /// The socket file this master made, if it made one.
    pub fn file(&self) -> Option<&Path> {
        self._socket_file.as_ref().map(SocketFile::path)
    }

    /// A listener an earlier image of this master had (a live upgrade):
    /// as it was, its socket file still removed when the master exits.
    pub fn resume(
        name: String,
        local: String,
        fd: OwnedFd,
        file: Option<&Path>,
    ) -> io::Result<Listener> {
        let socket = Socket::from(fd);
        socket.set_cloexec(true)?;
        Ok(Listener {
            name,
            socket,
            local,
            _socket_file: file.map(SocketFile::resume).transpose()?,
            reuseport: None,
        })
    }

    /// Wraps a socket the master was given (systemd socket activation).
    fn adopt(name: String, fd: OwnedFd) -> io::Result<Listener> {
        let socket = Socket::from(fd);
        socket.set_cloexec(true)?;
        let local = describe(&socket.local_addr()?);
        Ok(Listener {
            name,
            socket,
            local,
            _socket_file: None,
            reuseport: None,
        })
    }
}

/// The sockets systemd passed to this process (`LISTEN_FDS`, with
/// `LISTEN_PID` naming us), adopted instead of binding. Sockets meant for
/// another process are left alone, as systemd's own library does.
pub fn adopt_inherited() -> Result<Vec<Listener>, Error> {
    let error = |cause: String| Error::Bind {
        addr: "the sockets passed in LISTEN_FDS".into(),
        cause,
    };
    match crate::sockets::inherited::listeners() {
        Ok(listeners) => listeners
            .into_fds()
            .map(|(name, fd)| Listener::adopt(name, fd).map_err(|e| error(e.to_string())))
            .collect(),
        Err(ListenersError::NotActivated | ListenersError::WrongPid { .. }) => Ok(Vec::new()),
        Err(e) => Err(error(e.to_string())),
    }
}

fn describe(addr: &SockAddr) -> String {
    match (addr.as_socket(), addr.as_pathname()) {
        (Some(tcp), _) => tcp.to_string(),
        (None, Some(path)) => format!("unix:{}", path.display()),
        (None, None) => "unix:(unnamed)".into(),
    }
}

/// Binds every spec, in order, after the `listeners` already held. Names
/// default to `tcp-<i>` / `unix-<i>`, where `i` is the listener's position
/// (fd `3 + i` in a worker).
/// With `reuseport`, TCP sockets are bound with `SO_REUSEPORT`, once
/// nothing else listens there, to be the first of a group (`balance.rs`).
pub fn bind_all(
    specs: &[ListenSpec],
    backlog: u32,
    mut listeners: Vec<Listener>,
    reuseport: bool,
) -> Result<Vec<Listener>, Error> {
    let backlog = self::backlog(backlog);
    // Port 0 twice is two ports; anything else twice is a typo.
    for (i, spec) in specs.iter().enumerate() {
        let twice = specs[..i].iter().any(|earlier| earlier.addr == spec.addr);
        let any_port = matches!(spec.addr, ListenAddr::Tcp(addr) if addr.port() == 0);
        if twice && !any_port {
            return Err(Error::Usage(format!(
                "--listen {} is given twice; give each address once",
                spec.addr
            )));
        }
    }
    let first = listeners.len();
    for (i, spec) in (first..).zip(specs) {
        let name = spec.name.clone().unwrap_or_else(|| default_name(spec, i));
        if listeners.iter().any(|l| l.name == name) {
            return Err(Error::Usage(format!(
                "two listeners are named '{name}'; give each --listen a different NAME="
            )));
        }
        listeners.push(bind_one(spec, name, backlog, reuseport)?);
    }
    Ok(listeners)
}

/// `tcp-<i>` or `unix-<i>`: the name of a listener at position `i` given
/// none.
pub fn default_name(spec: &ListenSpec, i: usize) -> String {
    match spec.addr {
        ListenAddr::Tcp(_) => format!("tcp-{i}"),
        ListenAddr::Unix(_) => format!("unix-{i}"),
    }
}

/// Binds one spec (`backlog` within the kernel's limit).
pub fn bind_one(
    spec: &ListenSpec,
    name: String,
    backlog: i32,
    reuseport: bool,
) -> Result<Listener, Error> {
    let bind_error = |cause: String| Error::Bind {
        addr: spec.addr.to_string(),
        cause,
    };
    let (socket, unix_file) = match &spec.addr {
        ListenAddr::Tcp(addr) => (
            bind_tcp(*addr, backlog, reuseport)
                .map_err(|e| bind_error(tcp_cause(&e, addr.port())))?,
            None,
        ),
        ListenAddr::Unix(path) => {
            let (socket, file) = bind_unix(path, backlog, &spec.access)?;
            (socket, Some(file))
        }
    };
    let bound = socket.local_addr().map_err(|e| bind_error(e.to_string()))?;
    let local = describe(&bound);
    let reuseport = match (reuseport, bound.as_socket()) {
        (true, Some(addr)) => Some((addr, backlog)),
        _ => None,
    };
    Ok(Listener {
        name,
        socket,
        local,
        _socket_file: unix_file,
        reuseport,
    })
}

/// The backlog a listen() gets: as asked, within the kernel's limit.
pub fn backlog(asked: u32) -> i32 {
    asked.min(somaxconn()).min(i32::MAX as u32) as i32
}

fn bind_tcp(addr: SocketAddr, backlog: i32, reuseport: bool) -> io::Result<Socket> {
    if reuseport && addr.port() != 0 {
        // A socket with SO_REUSEPORT would join another process's group of
        // the same user on this port instead of failing: make sure the
        // port is free first, with a plain bind.
        drop(bind_tcp(addr, backlog, false)?);
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuseport)?;
    if addr.is_ipv6() {
        // `[::]` means IPv6 only; bind 0.0.0.0 as well for both.
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket)
}

fn tcp_cause(e: &io::Error, port: u16) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            let holders = crate::sockets::portcheck::holders(port);
            if holders.is_empty() {
                return "address already in use (another process listens there; stop it or \
                        pick another port)"
                    .into();
            }
            let named: Vec<String> = holders
                .iter()
                .map(|(pid, comm)| format!("pid {pid} ({comm})"))
                .collect();
            let pids: Vec<String> = holders.iter().map(|(pid, _)| pid.to_string()).collect();
            format!(
                "address already in use, held by {}: a process a worker of an earlier master \
                 started may have outlived it with the socket; stop it (kill {}) or pick \
                 another port",
                named.join(", "),
                pids.join(" ")
            )
        }
        io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need root or \
             CAP_NET_BIND_SERVICE; pick a port above 1023)"
            .into(),
        io::ErrorKind::AddrNotAvailable => {
            "address not available (no interface of this machine has it)".into()
        }
        _ => e.to_string(),
    }
}

fn bind_unix(
    path: &Path,
    backlog: i32,
    access: &UnixAccess,
) -> Result<(Socket, SocketFile), Error> {
    let bind_error = |cause: String| Error::Bind {
        addr: format!("unix:{}", path.display()),
        cause,
    };
    match occupant(path).map_err(|e| bind_error(format!("cannot tell what is there: {e}")))? {
        Occupant::Nothing => {}
        Occupant::StaleSocket => remove_stale(path)
            .map_err(|e| bind_error(format!("cannot remove the stale socket: {e}")))?,
        Occupant::LiveSocket => {
            return Err(bind_error(
                "a server is already listening on it (is another rcluster running?)".into(),
            ));
        }
        Occupant::Other(what) => {
            return Err(Error::PathTaken {
                path: path.to_path_buf(),
                purpose: "a unix: listener",
                what,
            });
        }
    }
    let addr = SockAddr::unix(path).map_err(|e| bind_error(format!("bad socket path: {e}")))?;
    let socket =
        Socket::new(Domain::UNIX, Type::STREAM, None).map_err(|e| bind_error(e.to_string()))?;
    // Bound 0600 (umask, not chmod after: no moment in which others may
    // connect), then given its owner and mode.
    // SAFETY: umask only swaps the process's mask; the master binds before
    // it has any other thread.
    let old = unsafe { libc::umask(0o177) };
    let bound = socket.bind(&addr);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    bound.map_err(|e| {
        bind_error(match e.kind() {
            io::ErrorKind::PermissionDenied => {
                "permission denied (the directory is not writable by this user)".to_string()
            }
            io::ErrorKind::NotFound => "its directory does not exist".to_string(),
            _ => e.to_string(),
        })
    })?;
    let file = SocketFile::new(path).map_err(|e| bind_error(e.to_string()))?;
    set_access(path, access).map_err(bind_error)?;
    socket
        .listen(backlog)
        .map_err(|e| bind_error(e.to_string()))?;
    Ok((socket, file))
}

/// A user's or group's id: a number as it is, a name looked up.
fn id_of(
    name: &str,
    flag: &str,
    what: &str,
    lookup: impl Fn(&str) -> Option<u32>,
) -> Result<u32, String> {
    name.parse()
        .ok()
        .or_else(|| lookup(name))
        .ok_or_else(|| format!("{flag} {name}: no such {what}"))
}

/// Gives a socket file its owner, then its mode (until then the umask's).
fn set_access(path: &Path, access: &UnixAccess) -> Result<(), String> {
    use nix::unistd::{Group, User};
    let user = access
        .user
        .as_deref()
        .map(|name| {
            id_of(name, "--socket-user", "user", |n| {
                Some(User::from_name(n).ok()??.uid.as_raw())
            })
        })
        .transpose()?;
    let group = access
        .group
        .as_deref()
        .map(|name| {
            id_of(name, "--socket-group", "group", |n| {
                Some(Group::from_name(n).ok()??.gid.as_raw())
            })
        })
        .transpose()?;
    if user.is_some() || group.is_some() {
        std::os::unix::fs::chown(path, user, group)
            .map_err(|e| format!("cannot give it its owner: {e}"))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode))
        .map_err(|e| format!("cannot give it mode {:o}: {e}", access.mode))
}

/// What a path where rcluster would bind a Unix socket holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occupant {
    Nothing,
    /// A socket nothing answers on (left by a process that died): it may
    /// be replaced.
    StaleSocket,
    /// A socket something answers on.
    LiveSocket,
    /// Not a socket: never replaced ("a regular file", "a directory"…).
    Other(&'static str),
}

pub fn occupant(path: &Path) -> io::Result<Occupant> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Occupant::Nothing),
        Err(e) => return Err(e),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        return Ok(Occupant::Other(if kind.is_file() {
            "a regular file"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_symlink() {
            "a symbolic link"
        } else {
            "a device"
        }));
    }
    match UnixStream::connect(path) {
        Ok(_) => Ok(Occupant::LiveSocket),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Occupant::StaleSocket),
        // A full backlog: something is there.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Occupant::LiveSocket),
        Err(e) => Err(e),
    }
}

/// Removes a socket found stale, unless it was replaced since by something
/// else (then that is left alone, and binding fails instead).
pub fn remove_stale(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "it was replaced by something that is not a socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The socket file of a Unix listener, removed when the master that created
/// it drops it. Workers never drop it: exec'd workers do not run our
/// destructors, and forked ones (cluster mode) are not the owner.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    owner: u32,
    ino: u64,
}

impl SocketFile {
    /// A file this process made in an earlier image (a live upgrade). One
    /// removed meanwhile (a tmp cleaner) is no reason to fail the upgrade,
    /// which would end the master: the socket serves as it did, nothing is
    /// removed at exit, and the master says so (`FileGone`).
    pub fn resume(path: &Path) -> io::Result<SocketFile> {
        match Self::new(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SocketFile {
                path: path.to_path_buf(),
                owner: std::process::id(),
                ino: 0,
            }),
            made => made,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn new(path: &Path) -> io::Result<SocketFile> {
        Ok(SocketFile {
            path: path.to_path_buf(),
            owner: std::process::id(),
            ino: std::fs::symlink_metadata(path)?.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino);
        if std::process::id() == self.owner && ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The kernel silently caps the backlog at `net.core.somaxconn`.
fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<ListenSpec, String> {
        s.parse()
    }

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(
            spec("127.0.0.1:8080").unwrap().addr,
            ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            spec(":8080").unwrap().addr,
            ListenAddr::Tcp("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(
            spec("[::1]:8080").unwrap().addr,
            ListenAddr::Tcp("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            spec("unix:/run/app.sock").unwrap().addr,
            ListenAddr::Unix("/run/app.sock".into())
        );
        let named = spec("web=127.0.0.1:0").unwrap();
        assert_eq!(named.name.as_deref(), Some("web"));
        assert_eq!(
            spec("admin=unix:/a=b.sock").unwrap().addr,
            ListenAddr::Unix("/a=b.sock".into())
        );
        assert_eq!(spec("unix:/run/app.sock").unwrap().access.mode, 0o666);
        assert_eq!(UnixAccess::parse_mode("0660"), Ok(0o660));
        assert!(UnixAccess::parse_mode("999").is_err());
    }

    #[test]
    fn a_unix_listener_gets_the_mode_and_owner_asked_for() {
        let dir = std::env::temp_dir().join(format!("rcluster-unix-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.sock");
        let unix = |mode, group: Option<String>| {
            let mut spec = spec(&format!("unix:{}", path.display())).unwrap();
            spec.access = UnixAccess {
                mode,
                user: None,
                group,
            };
            spec
        };
        let with = |mode, group| {
            let listeners = bind_all(&[unix(mode, group)], 16, Vec::new(), false).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            drop(listeners);
            (meta.permissions().mode() & 0o777, meta.gid())
        };
        assert_eq!(with(0o666, None).0, 0o666, "systemd's SocketMode= default");
        assert_eq!(with(0o600, None).0, 0o600);
        // SAFETY: getgid has no preconditions.
        let gid = unsafe { libc::getgid() };
        assert_eq!(with(0o660, Some(gid.to_string())), (0o660, gid));
        let nobody = unix(0o660, Some("no-such-group-here".into()));
        let error = bind_all(&[nobody], 16, Vec::new(), false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--socket-group no-such-group-here: no such group"),
            "{error}"
        );
        assert!(!path.exists(), "nothing is left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rejects_what_it_cannot_bind() {
        for bad in [
            "8080",
            "localhost:80",
            "1.2.3.4",
            ":http",
            "unix:",
            "a:b=1.2.3.4:5",
            "x y=:80",
        ] {
            assert!(spec(bad).is_err(), "{bad}");
        }
    }
}
