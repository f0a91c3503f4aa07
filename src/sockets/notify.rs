//! The sd_notify protocol (systemd's `NOTIFY_SOCKET`), both sides.
//!
//! The master owns one datagram socket and passes its path to every worker
//! (as systemd passes `/run/systemd/notify`: some clients, such as Rust's
//! `sd-notify` crate, take the variable for a file path and cannot reach an
//! abstract name).
//! Anyone on the host can send to it, so a message counts only if the
//! kernel says its sender (`SO_PASSCRED`, `SCM_CREDENTIALS`) is a worker or
//! a process a worker started, running as the workers' user or as root, and
//! a `MAINPID=` in it names that same worker ([`speaker`]); anything else
//! is dropped and counted. Any sd_notify library in any language works
//! unchanged. `BARRIER=1` (systemd 254's `sd_notify_barrier`) is honoured:
//! datagrams are handled in order, and the fd it carries is closed once the
//! ones before it are. The client side, [`notify`] and [`notify_and_wait`],
//! is what the worker library, `rcluster notify` and a master under systemd
//! use.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

use crate::vocab::Pid;
use crate::vocab::{ManagerState, NotifyMsg};

/// systemd accepts datagrams up to this size; longer ones are not ours.
const MAX_DATAGRAM: usize = 4096;

/// What one datagram said, and who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The sender's pid, from the kernel.
    pub sender: Option<Pid>,
    /// The sender's user, from the kernel.
    pub uid: Option<u32>,
    /// `MAINPID=`: the process the sender speaks for.
    pub main_pid: Option<Pid>,
    pub messages: Vec<NotifyMsg>,
}

/// Parses `KEY=VALUE` lines; keys rcluster does not act on are skipped.
pub fn parse(text: &str) -> (Vec<NotifyMsg>, Option<Pid>) {
    let mut messages = Vec::new();
    let mut main_pid = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => messages.push(NotifyMsg::Ready),
            Some(("STOPPING", "1")) => messages.push(NotifyMsg::Stopping),
            Some(("WATCHDOG", "1")) => messages.push(NotifyMsg::Watchdog),
            Some(("STATUS", status)) => messages.push(NotifyMsg::Status(status.to_string())),
            Some(("X_RCLUSTER_DRAINED", "1")) => messages.push(NotifyMsg::Drained),
            Some(("X_RCLUSTER_RESPONSES", counts)) => {
                let counts: Vec<u64> = counts.split(',').filter_map(|n| n.parse().ok()).collect();
                if let Ok(counts) = <[u64; 5]>::try_from(counts) {
                    messages.push(NotifyMsg::Responses(counts));
                }
            }
            Some(("MAINPID", pid)) => main_pid = pid.parse().ok().map(Pid::from_raw),
            _ => {}
        }
    }
    (messages, main_pid)
}

/// The master's `NOTIFY_SOCKET`: a datagram socket at
/// `<dir>/notify-<pid>-<random>/sock`, in a directory of its own that only the
/// workers' user may enter (after `--user`, that user's), removed when the
/// master exits; one left by a master that was killed is removed by the
/// next to start. Without a directory, a name in the abstract namespace
/// (`@rcluster-<pid>-<n>`). Any process that reaches it may send; which
/// sender counts is decided by its pid, which the kernel vouches for.
#[derive(Debug)]
pub struct NotifySocket {
    socket: mio::net::UnixDatagram,
    /// The `NOTIFY_SOCKET` value: a path, or `@` and an abstract name.
    address: String,
    /// The directory of a path socket, and the pid that made it (a forked
    /// worker holds a copy, but does not remove it).
    dir: Option<(PathBuf, u32)>,
}

impl NotifySocket {
    /// A socket in `dir` (the runtime directory), its directory owned by
    /// `owner` (uid, gid) when the workers run as another user; in the
    /// abstract namespace without `dir`, or if the path would be too long.
    pub fn bind(dir: Option<&Path>, owner: Option<(u32, u32)>) -> io::Result<NotifySocket> {
        let pid = std::process::id();
        match dir {
            Some(dir) => {
                remove_stale(dir);
                let mut random = [0u8; 4];
                // SAFETY: getrandom writes at most the buffer's length.
                unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
                let own = dir.join(format!("notify-{pid}-{:08x}", u32::from_ne_bytes(random)));
                let path = own.join("sock");
                // sun_path holds 107 bytes and a NUL.
                if path.as_os_str().len() < 108 {
                    return Self::bind_path(&own, &path, owner);
                }
                Self::bind_abstract(pid)
            }
            None => Self::bind_abstract(pid),
        }
    }

    fn bind_path(dir: &Path, path: &Path, owner: Option<(u32, u32)>) -> io::Result<NotifySocket> {
        std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        let made = (|| {
            let socket = mio::net::UnixDatagram::bind(path)?;
            setsockopt(&socket, sockopt::PassCred, &true)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
            }
            Ok(socket)
        })();
        match made {
            Ok(socket) => Ok(NotifySocket {
                socket,
                address: path.display().to_string(),
                dir: Some((dir.to_path_buf(), std::process::id())),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                let _ = std::fs::remove_dir(dir);
                Err(e)
            }
        }
    }

    fn bind_abstract(pid: u32) -> io::Result<NotifySocket> {
        let mut last_error = None;
        for n in 0..100 {
            let name = format!("rcluster-{pid}-{n}");
            let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
            match mio::net::UnixDatagram::bind_addr(&addr) {
                Ok(socket) => {
                    setsockopt(&socket, sockopt::PassCred, &true)?;
                    return Ok(NotifySocket {
                        socket,
                        address: format!("@{name}"),
                        dir: None,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free notify socket name")))
    }

    /// The socket an earlier image of this master bound (a live upgrade).
    pub fn resume(
        fd: std::os::fd::OwnedFd,
        address: String,
        dir: Option<PathBuf>,
    ) -> io::Result<NotifySocket> {
        let socket = std::os::unix::net::UnixDatagram::from(fd);
        socket.set_nonblocking(true)?;
        nix::fcntl::fcntl(
            &socket,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        Ok(NotifySocket {
            socket: mio::net::UnixDatagram::from_std(socket),
            address,
            dir: dir.map(|dir| (dir, std::process::id())),
        })
    }

    /// Its own directory, if it has one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|(dir, _)| dir.as_path())
    }

    /// The `NOTIFY_SOCKET` value: a path, or `@` and an abstract name.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    pub fn source(&mut self) -> &mut mio::net::UnixDatagram {
        &mut self.socket
    }

    /// The next datagram, or `None` when none is waiting.
    pub fn recv(&self) -> io::Result<Option<Datagram>> {
        let mut buf = [0u8; MAX_DATAGRAM];
        // Room for the credentials and a few fds (BARRIER=1 carries one).
        let mut cmsg = nix::cmsg_space!(libc::ucred, [std::os::fd::RawFd; 8]);
        let (bytes, sender, uid) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let (mut sender, mut uid) = (None, None);
            for cmsg in msg.cmsgs().into_iter().flatten() {
                match cmsg {
                    ControlMessageOwned::ScmCredentials(cred) => {
                        sender = Some(Pid::from_raw(cred.pid()));
                        uid = Some(cred.uid());
                    }
                    // No fd is kept: FDSTORE=1 is not supported, and
                    // closing BARRIER=1's fd now, after every datagram
                    // before it was handled, is what the barrier asks.
                    ControlMessageOwned::ScmRights(fds) => {
                        for fd in fds {
                            // A close that fails leaves nothing to do.
                            let _ = nix::unistd::close(fd);
                        }
                    }
                    _ => {}
                }
            }
            (msg.bytes, sender, uid)
        };
        let (messages, main_pid) = parse(&String::from_utf8_lossy(&buf[..bytes]));
        Ok(Some(Datagram {
            sender,
            uid,
            main_pid,
            messages,
        }))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some((dir, owner)) = &self.dir
            && *owner == std::process::id()
        {
            let _ = std::fs::remove_file(dir.join("sock"));
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Removes the notify directories of masters that were killed and could
/// not clean up: those whose socket nobody has bound (a connect is
/// refused). A pid says nothing here: the master may be in another pid
/// namespace.
pub fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("notify-") {
            continue;
        }
        let sock = entry.path().join("sock");
        let refused = UnixDatagram::unbound()
            .and_then(|probe| probe.connect(&sock))
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
        if refused {
            let _ = std::fs::remove_file(&sock);
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

impl AsRawFd for NotifySocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// The service manager above rcluster (systemd with `Type=notify`), told
/// when the cluster is ready, reloading and stopping.
#[derive(Debug)]
pub struct Manager {
    sender: UnixDatagram,
    socket: String,
}

impl Manager {
    /// From rcluster's own `NOTIFY_SOCKET`, if it has one.
    pub fn from_env() -> Option<Manager> {
        let socket = std::env::var("NOTIFY_SOCKET").ok()?;
        let sender = UnixDatagram::unbound().ok()?;
        // The master never waits on systemd: a full socket loses a line.
        sender.set_nonblocking(true).ok()?;
        Some(Manager { sender, socket })
    }

    pub fn tell(&self, state: &ManagerState) -> io::Result<()> {
        let message = match state {
            ManagerState::Ready => "READY=1".to_string(),
            // systemd (v253+, Type=notify-reload) wants the time the reload
            // started, to tell it from an earlier one.
            ManagerState::Reloading => format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()),
            ManagerState::Stopping => "STOPPING=1".to_string(),
            ManagerState::Status(status) => format!("STATUS={}", status.replace('\n', " ")),
        };
        send_to(&self.sender, &self.socket, &message)
    }
}

fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// Why a datagram was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The kernel gave no credentials (not sent over AF_UNIX?).
    NoCredentials,
    /// Sent by a user other than the workers' (and not root).
    OtherUser { uid: u32, workers: u32 },
    /// The sender is no worker, started by none, or gone before it could
    /// be checked.
    NotFromAWorker,
    /// `MAINPID=` names another process than the worker that sent it.
    MainPidElsewhere { main_pid: Pid, worker: Pid },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NoCredentials => f.write_str("the kernel gave no credentials"),
            Refused::OtherUser { uid, workers } => {
                write!(f, "sent by uid {uid}, and workers run as uid {workers}")
            }
            Refused::NotFromAWorker => {
                f.write_str("not sent by a worker or a process it started (or the sender is gone)")
            }
            Refused::MainPidElsewhere { main_pid, worker } => write!(
                f,
                "MAINPID={main_pid} names another process than worker {worker}, its sender"
            ),
        }
    }
}

/// The worker a datagram speaks for. `ancestry` is its sender and the
/// sender's ancestors, nearest first, as `/proc` shows them now (a sender
/// that already exited and was reaped has none, and is refused).
pub fn speaker(
    datagram: &Datagram,
    ancestry: &[Pid],
    is_worker: impl Fn(Pid) -> bool,
    workers_uid: u32,
) -> Result<Pid, Refused> {
    let uid = datagram.uid.ok_or(Refused::NoCredentials)?;
    if uid != workers_uid && uid != 0 {
        return Err(Refused::OtherUser {
            uid,
            workers: workers_uid,
        });
    }
    let worker = ancestry
        .iter()
        .copied()
        .find(|&pid| is_worker(pid))
        .ok_or(Refused::NotFromAWorker)?;
    match datagram.main_pid {
        Some(main_pid) if main_pid != worker => Err(Refused::MainPidElsewhere { main_pid, worker }),
        Some(_) | None => Ok(worker),
    }
}

/// `pid` and its ancestors, nearest first, while `/proc` has them (a
/// zombie still has its entry), up to `init` and at most 32 deep.
pub fn ancestry(pid: Pid) -> Vec<Pid> {
    const MAX_DEPTH: usize = 32;
    let mut chain = Vec::new();
    let mut pid = Some(pid);
    while let Some(p) = pid {
        if p.as_raw() <= 1 || chain.len() >= MAX_DEPTH {
            break;
        }
        let parent = parent_of(p);
        if parent.is_none() {
            // Gone: it cannot be placed.
            break;
        }
        chain.push(p);
        pid = parent;
    }
    chain
}

/// The parent of `pid`, from `/proc/<pid>/stat`; `None` if it has exited.
pub fn parent_of(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(1)?.parse().ok().map(Pid::from_raw)
}

/// Sends `state` (e.g. `"READY=1"`) to the socket named by `$NOTIFY_SOCKET`.
/// Returns `Ok(false)`, doing nothing, when the variable is not set.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        None => Ok(false),
        Some(socket) => {
            let socket = socket.to_string_lossy();
            let sender = UnixDatagram::unbound()?;
            send_to(&sender, &socket, state)?;
            Ok(true)
        }
    }
}

/// Sends `state`, then waits (up to `timeout`) until the master has handled
/// it: `BARRIER=1` with the write end of a pipe, whose read end then sees
/// EOF. A helper process that exits at once (as `systemd-notify` does)
/// would otherwise be gone before its message is read, and its message
/// would not be traceable to its worker. `Ok(false)` without NOTIFY_SOCKET.
pub fn notify_and_wait(state: &str, timeout: std::time::Duration) -> io::Result<bool> {
    use nix::sys::socket::{ControlMessage, sendmsg};
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = socket.to_string_lossy().into_owned();
    let sender = UnixDatagram::unbound()?;
    send_to(&sender, &socket, state)?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let addr = match socket.strip_prefix('@') {
        Some(name) => nix::sys::socket::UnixAddr::new_abstract(name.as_bytes())?,
        None => nix::sys::socket::UnixAddr::new(socket.as_str())?,
    };
    let fds = [write.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"BARRIER=1")];
    sendmsg(
        sender.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        Some(&addr),
    )?;
    drop(write);
    let mut pollfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&read),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let timeout = nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX);
    match nix::poll::poll(&mut pollfd, timeout) {
        Ok(1) => Ok(true),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the master did not confirm it had read the message",
        )),
        Err(e) => Err(e.into()),
    }
}

/// The socket address of a `NOTIFY_SOCKET` value.
fn address(socket: &str) -> io::Result<SocketAddr> {
    match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(socket),
    }
}

/// Sends one datagram to a `NOTIFY_SOCKET` value: a path, or `@name` for
/// the abstract namespace (as systemd passes it).
pub fn send_to(sender: &UnixDatagram, socket: &str, state: &str) -> io::Result<()> {
    sender.send_to_addr(state.as_bytes(), &address(socket)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_messages_rcluster_acts_on() {
        let (messages, main_pid) = parse(
            "READY=1\nSTATUS=warming up: 3/4\nMAINPID=42\nWATCHDOG=1\nX_OTHER=1\nSTOPPING=1\nX_RCLUSTER_DRAINED=1",
        );
        assert_eq!(
            messages,
            [
                NotifyMsg::Ready,
                NotifyMsg::Status("warming up: 3/4".into()),
                NotifyMsg::Watchdog,
                NotifyMsg::Stopping,
                NotifyMsg::Drained
            ]
        );
        assert_eq!(main_pid, Some(Pid::from_raw(42)));
        assert_eq!(parse("READY=0").0, []);
    }

    #[test]
    fn a_datagram_is_received_with_the_senders_pid() {
        let socket = NotifySocket::bind(None, None).unwrap();
        assert!(socket.address().starts_with("@rcluster-"));
        let sender = UnixDatagram::unbound().unwrap();
        send_to(&sender, &socket.address(), "READY=1\nSTATUS=ok").unwrap();
        let datagram = socket.recv().unwrap().expect("a datagram");
        assert_eq!(
            datagram.sender,
            Some(Pid::from_raw(std::process::id() as i32))
        );
        assert_eq!(datagram.messages[0], NotifyMsg::Ready);
        assert_eq!(socket.recv().unwrap(), None);
    }

    fn from(pid: i32, uid: u32, main_pid: Option<i32>) -> Datagram {
        Datagram {
            sender: Some(Pid::from_raw(pid)),
            uid: Some(uid),
            main_pid: main_pid.map(Pid::from_raw),
            messages: vec![NotifyMsg::Ready],
        }
    }

    #[test]
    fn only_a_worker_or_its_descendant_of_its_user_speaks_for_it() {
        let worker = Pid::from_raw(100);
        let is_worker = |pid: Pid| pid == worker;
        let chain = |pids: &[i32]| pids.iter().map(|&p| Pid::from_raw(p)).collect::<Vec<_>>();
        // The worker itself, a helper it started, root.
        assert_eq!(
            speaker(&from(100, 1000, None), &chain(&[100]), is_worker, 1000),
            Ok(worker)
        );
        assert_eq!(
            speaker(
                &from(300, 1000, Some(100)),
                &chain(&[300, 200, 100, 50]),
                is_worker,
                1000
            ),
            Ok(worker)
        );
        assert_eq!(
            speaker(&from(100, 0, None), &chain(&[100]), is_worker, 1000),
            Ok(worker)
        );
        // Another user, even naming the worker in MAINPID.
        assert_eq!(
            speaker(
                &from(400, 65534, Some(100)),
                &chain(&[400]),
                is_worker,
                1000
            ),
            Err(Refused::OtherUser {
                uid: 65534,
                workers: 1000
            })
        );
        // The right user, but no worker started it; or it is already gone.
        assert_eq!(
            speaker(
                &from(400, 1000, Some(100)),
                &chain(&[400, 1]),
                is_worker,
                1000
            ),
            Err(Refused::NotFromAWorker)
        );
        assert_eq!(
            speaker(&from(400, 1000, Some(100)), &[], is_worker, 1000),
            Err(Refused::NotFromAWorker)
        );
        // A worker's helper naming another process.
        assert_eq!(
            speaker(
                &from(300, 1000, Some(101)),
                &chain(&[300, 100]),
                is_worker,
                1000
            ),
            Err(Refused::MainPidElsewhere {
                main_pid: Pid::from_raw(101),
                worker
            })
        );
        let no_creds = Datagram {
            uid: None,
            ..from(100, 0, None)
        };
        assert_eq!(
            speaker(&no_creds, &chain(&[100]), is_worker, 1000),
            Err(Refused::NoCredentials)
        );
    }

    #[test]
    fn parent_of_reads_proc() {
        let me = Pid::from_raw(std::process::id() as i32);
        assert_eq!(parent_of(me), Some(nix::unistd::getppid()));
    }
}
