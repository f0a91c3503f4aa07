//! Whether a worker listens on TCP ports of its own. A server that calls
//! `listen(3000)` itself runs under rcluster without an error and serves
//! nobody on rcluster's address; the master looks once per generation (when
//! its first worker is ready) and warns. And, when a port cannot be bound
//! at start, which processes hold it ([`holders`]): often a daemon a
//! worker of an earlier master started, which outlived it with the
//! listening socket.
//!
//! It looks at the worker's own fds only, never the namespace's socket
//! table (`/proc/net/tcp` lists every connection on the host, tens of
//! thousands in TIME_WAIT under load, and reading it stalled the master for
//! a second): each fd the worker holds is copied into the master for a
//! moment (`pidfd_getfd`) and, if it is a socket that is not one of
//! rcluster's, asked whether it listens, and on which port.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::vocab::Pid;

/// Where the worker's open fds cannot be listed, how many fd numbers are
/// tried: a server opens its listening socket early.
const FDS_LOOKED_AT: i32 = 1024;

/// The TCP ports the worker `pid` (whose pidfd is `pidfd`) listens on
/// through sockets other than `ours` (the inodes of rcluster's
/// listeners). Empty if it cannot be told (`pidfd_getfd` needs Linux 5.6).
pub fn own_ports(pid: Pid, pidfd: BorrowedFd<'_>, ours: &BTreeSet<u64>) -> Vec<u16> {
    // Its open fds, from /proc (a few for most servers): trying every
    // number up to 1024 was a thousand syscalls, the largest fixed cost of
    // a reload of a few workers.
    let fds = open_fds(pid).unwrap_or_else(|| (0..FDS_LOOKED_AT).collect());
    let mut ports = Vec::new();
    for fd in fds {
        let copy = match copy_fd(pidfd, fd) {
            Ok(copy) => copy,
            Err(nix::errno::Errno::EBADF) => continue,
            // Not permitted (ptrace rules), not supported, or the worker
            // is gone: no fd will do better.
            Err(_) => break,
        };
        let ino = nix::sys::stat::fstat(&copy).map(|st| st.st_ino);
        if ino.is_ok_and(|ino| !ours.contains(&ino))
            && let Some(port) = tcp_listening_port(&copy)
        {
            ports.push(port);
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The fd numbers `pid` has open, in order; `None` if /proc does not say.
fn open_fds(pid: Pid) -> Option<Vec<i32>> {
    let entries = std::fs::read_dir(format!("/proc/{}/fd", pid.as_raw())).ok()?;
    let mut fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    Some(fds)
}

/// A copy of the worker's `fd` (close-on-exec); EBADF if it has none.
fn copy_fd(pidfd: BorrowedFd<'_>, fd: i32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_getfd only reads its integer arguments; a new fd it
    // returns is ours alone.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: a fresh fd, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(copy as i32) })
}

/// The port a listening TCP socket is bound to.
fn tcp_listening_port(socket: &OwnedFd) -> Option<u16> {
    let socket = socket2::SockRef::from(socket);
    if !socket.is_listener().ok()? {
        return None;
    }
    socket
        .local_addr()
        .ok()?
        .as_socket()
        .map(|addr| addr.port())
}

/// The processes that hold a socket listening on TCP `port`, with their
/// command names: every process's socket fds, each copied for a moment
/// (`pidfd_getfd`) and asked whether it listens there. Only the
/// start-up's error path does this (it is a scan of the host's processes).
/// Not `/proc/net/tcp`: with the tens of thousands of connections a loaded
/// host keeps in TIME_WAIT, reading it took over 20 s (the kernel walks the
/// table again for each page it returns), and a master that could not bind
/// took that long to say so. A process the master may not look into (ptrace
/// rules: another user's, without root) is not named.
pub fn holders(port: u16) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return found;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if listens_on(pid, &process.path(), port) {
            let comm = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string()));
        }
    }
    found
}

/// Whether process `pid` (its `/proc` directory `dir`) holds a socket
/// listening on TCP `port`.
fn listens_on(pid: i32, dir: &std::path::Path, port: u16) -> bool {
    any_socket(pid, dir, |copy| tcp_listening_port(copy) == Some(port))
}

/// Whether one of the sockets process `pid` (its `/proc` directory `dir`)
/// holds, each copied for a moment (`pidfd_getfd`), passes `test`; false
/// for a process that may not be looked into (ptrace rules) or is gone.
pub fn any_socket(pid: i32, dir: &std::path::Path, test: impl Fn(&OwnedFd) -> bool) -> bool {
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return false;
    };
    let sockets: Vec<i32> = fds
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:["))
        })
        .filter_map(|fd| fd.file_name().to_str()?.parse().ok())
        .collect();
    if sockets.is_empty() {
        return false;
    }
    // SAFETY: pidfd_open only reads its arguments; a new fd is ours alone.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return false;
    }
    // SAFETY: a fresh fd, owned from here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    sockets.into_iter().any(|fd| {
        use std::os::fd::AsFd;
        copy_fd(pidfd.as_fd(), fd).is_ok_and(|copy| test(&copy))
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::vocab::Pid;

    #[test]
    fn a_port_of_a_child_is_found_and_ours_and_unix_sockets_are_not() {
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = std::env::temp_dir().join(format!("portcheck-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let unix = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        let port = own.local_addr().unwrap().port();
        let ours_inode = std::fs::metadata(format!("/proc/self/fd/{}", ours.as_raw_fd()))
            .unwrap()
            .ino();
        // This process stands in for the worker: its own pidfd works too.
        let me = Pid::from_raw(std::process::id() as i32);
        // SAFETY: pidfd_open on our own pid.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, me.as_raw(), 0) };
        assert!(pidfd >= 0);
        // SAFETY: a fresh fd.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        let found = own_ports(me, pidfd.as_fd(), &BTreeSet::from([ours_inode]));
        assert!(found.contains(&port), "{found:?}");
        assert!(!found.contains(&ours.local_addr().unwrap().port()));
        drop(unix);
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn the_holders_of_a_port_are_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        assert!(holders(port).iter().any(|(pid, _)| *pid == me));
        drop(listener);
        assert!(!holders(port).iter().any(|(pid, _)| *pid == me));
    }
}
