//! Which worker holds a connection `rcluster check` or a probe opened: the
//! server's end of it found among the socket fds of each worker's process
//! tree.

use std::net::SocketAddr;

/// The worker (of `workers`) whose process tree holds the server's end of
/// the connection from `client` to `server`: a socket among its fds,
/// copied for a moment (`pidfd_getfd`), whose local port is the server's
/// and whose peer is `client`. Not through `/proc/net/tcp`: under load it
/// lists tens of thousands of connections in TIME_WAIT, and reading it took
/// longer than a connection may wait to be taken.
pub fn holder(server: SocketAddr, client: SocketAddr, workers: &[i32]) -> Option<i32> {
    workers
        .iter()
        .copied()
        .find(|&worker| tree(worker).iter().any(|&pid| holds(pid, server, client)))
}

/// Whether process `pid` holds the server's end of the connection.
fn holds(pid: i32, server: SocketAddr, client: SocketAddr) -> bool {
    let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    crate::sockets::portcheck::any_socket(pid, &dir, |copy| {
        let socket = socket2::SockRef::from(copy);
        let peer = socket.peer_addr().ok().and_then(|a| a.as_socket());
        let local = socket.local_addr().ok().and_then(|a| a.as_socket());
        // A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d.
        let canonical = |a: SocketAddr| (a.ip().to_canonical(), a.port());
        peer.map(canonical) == Some(canonical(client))
            && local.is_some_and(|l| l.port() == server.port())
    })
}

/// `pid` and its descendants.
fn tree(pid: i32) -> Vec<i32> {
    let mut found = vec![pid];
    let mut next = 0;
    while next < found.len() && found.len() < 64 {
        found.extend(crate::control::usage::children(found[next]));
        next += 1;
    }
    found
}
