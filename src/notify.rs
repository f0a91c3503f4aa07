//! The sd_notify protocol (systemd's `NOTIFY_SOCKET`), both sides.
//!
//! The master owns one datagram socket and passes its path to every worker.
//! It learns who spoke from the kernel (`SO_PASSCRED`, `SCM_CREDENTIALS`),
//! so any sd_notify library in any language works unchanged. The client side,
//! [`notify`], is what the worker library's `ready()` uses, and what the
//! master uses to report to systemd when it runs under it.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

use crate::supervisor::event::{ManagerState, NotifyMsg};
use crate::vocab::Pid;

/// systemd accepts datagrams up to this size; longer ones are not ours.
const MAX_DATAGRAM: usize = 4096;

/// What one datagram said, and who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The sender's pid, from the kernel.
    pub sender: Option<Pid>,
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
            Some(("MAINPID", pid)) => main_pid = pid.parse().ok().map(Pid::from_raw),
            _ => {}
        }
    }
    (messages, main_pid)
}

/// The master's `NOTIFY_SOCKET`: a datagram socket in the abstract
/// namespace (`@rcluster-<pid>-<n>` in the variable, as systemd writes it),
/// so it leaves no file behind, even when the master is killed. Any process
/// may send to it; which sender counts is decided by its pid, which the
/// kernel vouches for.
#[derive(Debug)]
pub struct NotifySocket {
    socket: mio::net::UnixDatagram,
    name: String,
}

impl NotifySocket {
    pub fn bind() -> io::Result<NotifySocket> {
        let pid = std::process::id();
        let mut last_error = None;
        for n in 0..100 {
            let name = format!("rcluster-{pid}-{n}");
            let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
            match mio::net::UnixDatagram::bind_addr(&addr) {
                Ok(socket) => {
                    setsockopt(&socket, sockopt::PassCred, &true)?;
                    return Ok(NotifySocket { socket, name });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free notify socket name")))
    }

    /// The `NOTIFY_SOCKET` value: `@` and the abstract name.
    pub fn address(&self) -> String {
        format!("@{}", self.name)
    }

    pub fn source(&mut self) -> &mut mio::net::UnixDatagram {
        &mut self.socket
    }

    /// The next datagram, or `None` when none is waiting.
    pub fn recv(&self) -> io::Result<Option<Datagram>> {
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut cmsg = nix::cmsg_space!(libc::ucred);
        let (bytes, sender) = {
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
            let mut sender = None;
            for cmsg in msg.cmsgs().into_iter().flatten() {
                match cmsg {
                    ControlMessageOwned::ScmCredentials(cred) => {
                        sender = Some(Pid::from_raw(cred.pid()))
                    }
                    // File descriptors (FDSTORE=1) are not kept.
                    ControlMessageOwned::ScmRights(fds) => {
                        for fd in fds {
                            let _ = nix::unistd::close(fd);
                        }
                    }
                    _ => {}
                }
            }
            (msg.bytes, sender)
        };
        let (messages, main_pid) = parse(&String::from_utf8_lossy(&buf[..bytes]));
        Ok(Some(Datagram {
            sender,
            main_pid,
            messages,
        }))
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
        Some(Manager { sender, socket })
    }

    pub fn tell(&self, state: ManagerState) -> io::Result<()> {
        let message = match state {
            ManagerState::Ready => "READY=1".to_string(),
            // systemd (v253+, Type=notify-reload) wants the time the reload
            // started, to tell it from an earlier one.
            ManagerState::Reloading => format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()),
            ManagerState::Stopping => "STOPPING=1".to_string(),
        };
        send_to(&self.sender, &self.socket, &message)
    }
}

fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
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

/// Sends one datagram to a `NOTIFY_SOCKET` value: a path, or `@name` for
/// the abstract namespace (as systemd passes it).
pub fn send_to(sender: &UnixDatagram, socket: &str, state: &str) -> io::Result<()> {
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    sender.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_messages_rcluster_acts_on() {
        let (messages, main_pid) =
            parse("READY=1\nSTATUS=warming up: 3/4\nMAINPID=42\nWATCHDOG=1\nX_OTHER=1\nSTOPPING=1");
        assert_eq!(
            messages,
            [
                NotifyMsg::Ready,
                NotifyMsg::Status("warming up: 3/4".into()),
                NotifyMsg::Watchdog,
                NotifyMsg::Stopping
            ]
        );
        assert_eq!(main_pid, Some(Pid::from_raw(42)));
        assert_eq!(parse("READY=0").0, []);
    }

    #[test]
    fn a_datagram_is_received_with_the_senders_pid() {
        let socket = NotifySocket::bind().unwrap();
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

    #[test]
    fn parent_of_reads_proc() {
        let me = Pid::from_raw(std::process::id() as i32);
        assert_eq!(parent_of(me), Some(nix::unistd::getppid()));
    }
}
