//! One HTTP probe (`--probe PATH`): a non-blocking connection from the
//! master to a listener, `GET PATH`, and the status line of the answer.
//! The master's loop drives it ([`Probe::advance`] on each readiness
//! event); it never blocks.
//!
//! Under `--balance reuseport` a probe is steered to the socket of the
//! worker it is for: its SYN carries a DSCP value clients do not use
//! ([`MARK`]) and, in its TTL (or IPv6 hop limit), the socket's index in
//! the group plus one. Loopback and local delivery do not decrement it,
//! and the group's steering program (`balance.rs`) answers that index for
//! a marked packet.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// The TOS byte (DSCP 43, unassigned by IANA) that marks a probe's
/// packets, ECN bits clear.
pub const MARK: u8 = 43 << 2;

/// The highest group index a TTL can carry (TTL 255).
pub const MAX_STEERED_INDEX: u32 = 254;

/// The most of an answer read: its status line is in the first bytes.
const ENOUGH: usize = 512;

#[derive(Debug)]
pub struct Probe {
    stream: mio::net::TcpStream,
    request: Vec<u8>,
    written: usize,
    answer: Vec<u8>,
}

/// Where a probe stands after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Waiting,
    /// The answer's status code.
    Answered(u16),
    /// No answer: why, in words ("refused the connection").
    Failed(String),
}

impl Probe {
    /// Connects to `listener` (its loopback address if it listens on every
    /// address), steered to group index `steer` if given.
    pub fn start(listener: SocketAddr, path: &str, steer: Option<u32>) -> io::Result<Probe> {
        let addr = reachable(listener);
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            None,
        )?;
        if let Some(index) = steer {
            let ttl = index + 1;
            if addr.is_ipv4() {
                socket.set_tos_v4(u32::from(MARK))?;
                socket.set_ttl_v4(ttl)?;
            } else {
                socket.set_tclass_v6(u32::from(MARK))?;
                socket.set_unicast_hops_v6(ttl)?;
            }
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let host = match addr {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        // Keep-alive (HTTP/1.1's default): the worker holds its end until
        // the master closes it, so that under the shared queue the master
        // can still find which worker answered.
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rcluster-probe\r\n\r\n");
        Ok(Probe {
            stream: mio::net::TcpStream::from_std(std::net::TcpStream::from(socket)),
            request: request.into_bytes(),
            written: 0,
            answer: Vec::new(),
        })
    }

    pub fn source(&mut self) -> &mut mio::net::TcpStream {
        &mut self.stream
    }

    /// The probe's two ends, (local, peer), once connected.
    pub fn ends(&self) -> Option<(SocketAddr, SocketAddr)> {
        Some((
            self.stream.local_addr().ok()?,
            self.stream.peer_addr().ok()?,
        ))
    }

    /// Writes what it can of the request, reads what it can of the answer.
    pub fn advance(&mut self) -> Progress {
        if let Ok(Some(e)) | Err(e) = self.stream.take_error() {
            return Progress::Failed(connect_error(&e));
        }
        while self.written < self.request.len() {
            match self.stream.write(&self.request[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if would_block(&e) => return Progress::Waiting,
                Err(e) => return Progress::Failed(connect_error(&e)),
            }
        }
        let mut buf = [0u8; ENOUGH];
        loop {
            if let Some(status) = status(&self.answer) {
                return status;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Progress::Failed("closed the connection without an answer".into());
                }
                Ok(n) => self.answer.extend_from_slice(&buf[..n]),
                Err(e) if would_block(&e) => return Progress::Waiting,
                Err(e) => return Progress::Failed(connect_error(&e)),
            }
        }
    }
}

/// The answer's status, once its status line is in (or it cannot be one).
fn status(answer: &[u8]) -> Option<Progress> {
    let line_end = answer.iter().position(|&b| b == b'\n');
    if line_end.is_none() && answer.len() < ENOUGH {
        return None;
    }
    let line = &answer[..line_end.unwrap_or(answer.len())];
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let code = match (words.next(), words.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code.parse().ok(),
        _ => None,
    };
    Some(match code {
        Some(code) => Progress::Answered(code),
        None => Progress::Failed("answered something other than HTTP".into()),
    })
}

/// Whether a probe answered `status` passes: Kubernetes' rule.
pub fn passes(status: u16) -> bool {
    (200..400).contains(&status)
}

/// What a probe that never got an answer says: "did not answer within 1s".
pub fn timed_out(timeout: Duration) -> String {
    format!("did not answer within {}", crate::vocab::human(timeout))
}

fn connect_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused the connection".into(),
        Some(libc::ECONNRESET) => "reset the connection".into(),
        _ => format!("failed: {e}"),
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Where the master reaches a listener: itself, or loopback for a listener
/// on every address.
fn reachable(listener: SocketAddr) -> SocketAddr {
    match listener.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listener.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listener.port()).into(),
        _ => listener,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_is_read_once_it_is_in() {
        assert_eq!(status(b"HTTP/1.1 20"), None);
        assert_eq!(
            status(b"HTTP/1.1 204 No Content\r\n"),
            Some(Progress::Answered(204))
        );
        assert_eq!(
            status(b"HTTP/1.0 500 Oops\r\n"),
            Some(Progress::Answered(500))
        );
        assert!(matches!(
            status(b"SSH-2.0-x\r\n"),
            Some(Progress::Failed(_))
        ));
        assert!(passes(200) && passes(302) && !passes(404) && !passes(500));
    }
}
