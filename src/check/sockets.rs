//! Which worker holds a connection the check opened: the server's end of
//! it found in `/proc/net/tcp` (its inode), then among the fds of each
//! worker's process tree.

use std::net::SocketAddr;

/// The worker (of `workers`) whose process tree holds the server's end of
/// the connection from `client` to `server`.
pub fn holder(server: SocketAddr, client: SocketAddr, workers: &[i32]) -> Option<i32> {
    let inode = server_end(server, client)?;
    let target = format!("socket:[{inode}]");
    workers.iter().copied().find(|&worker| {
        tree(worker).iter().any(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == target)
                })
        })
    })
}

/// The inode of the socket whose local port is `server`'s and whose peer
/// is `client`.
fn server_end(server: SocketAddr, client: SocketAddr) -> Option<u64> {
    let table = if server.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    let port = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ours = port(fields.get(1)?) == Some(server.port())
            && port(fields.get(2)?) == Some(client.port());
        if ours {
            fields.get(9)?.parse().ok()
        } else {
            None
        }
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
