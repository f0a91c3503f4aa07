//! A socket the master answers requests on inside its event loop, one
//! request per connection: the control socket (a JSON line) and `/metrics`
//! (an HTTP request). No threads: every client is a non-blocking socket
//! with its buffers and a deadline, and nothing a client does can block
//! the loop or lock the others out: a request must start within 2 s and
//! end within 10 s and 64 KiB; beyond 64 clients the oldest idle one is
//! closed for the newest; and when the master is out of fds, clients that
//! hung up are closed first, then one fd held in reserve accepts a waiting
//! client to tell it so (nginx and libuv do the same: an edge-triggered
//! listener whose queue is not drained is never woken again).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use nix::sys::socket::{getsockopt, sockopt};

/// A request longer than this is refused.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Connections beyond this: the oldest idle one is closed for the newest.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its first byte: clients send at once,
/// and one that connects and says nothing holds an fd.
pub const FIRST_BYTE_DEADLINE: Duration = Duration::from_secs(2);
/// How long a client may take to send its whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Where a request ends, and how a refusal reads, in each protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON object on one line; refusals are `{"ok":false,"error":…}`.
    Line,
    /// An HTTP/1 request head; refusals are an HTTP error with a line of text.
    HttpHead,
}

impl Framing {
    /// The length of the request in `input`, once it is whole.
    fn request_len(self, input: &[u8]) -> Option<usize> {
        match self {
            Framing::Line => input.iter().position(|&b| b == b'\n'),
            Framing::HttpHead => input
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .or_else(|| input.windows(2).position(|w| w == b"\n\n")),
        }
    }

    /// How a request that cannot be served is answered.
    pub fn refusal(self, message: &str) -> Vec<u8> {
        match self {
            Framing::Line => {
                let mut line = serde_json::json!({"ok": false, "error": message}).to_string();
                line.push('\n');
                line.into_bytes()
            }
            Framing::HttpHead => {
                http_response(503, "text/plain; charset=utf-8", &format!("{message}\n"))
            }
        }
    }
}

/// A whole HTTP/1.1 response that closes its connection.
pub fn http_response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The listening socket.
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// A bound socket, made non-blocking, as one the master serves itself
    /// (`/metrics`).
    pub fn from_socket(socket: socket2::Socket) -> io::Result<Listener> {
        socket.set_nonblocking(true)?;
        let unix = socket.local_addr()?.as_socket().is_none();
        let fd = std::os::fd::OwnedFd::from(socket);
        Ok(match unix {
            true => Listener::Unix(UnixListener::from_std(fd.into())),
            false => Listener::Tcp(TcpListener::from_std(fd.into())),
        })
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        }
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

/// One client's socket.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn source(&mut self) -> &mut dyn Source {
        match self {
            Stream::Unix(s) => s,
            Stream::Tcp(s) => s,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    /// The peer's uid, for a Unix socket.
    fn peer_uid(&self) -> Option<u32> {
        match self {
            Stream::Unix(s) => getsockopt(s, sockopt::PeerCredentials)
                .ok()
                .map(|c| c.uid()),
            Stream::Tcp(_) => None,
        }
    }

    /// Whether the client has hung up (nothing more to read, ever).
    fn hung_up(&self) -> bool {
        let mut byte = [0u8; 1];
        // SAFETY: a peek into a local buffer on a socket we own.
        let n = unsafe {
            libc::recv(
                self.raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == 0
    }
}

/// One client.
struct Conn {
    stream: Stream,
    accepted: Instant,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Closed once the output is flushed.
    closing: bool,
    /// Waiting for a reload or stop to finish: no deadline.
    waiting: bool,
    deadline: Instant,
}

/// A listening socket and its clients.
pub struct Endpoint {
    listener: Listener,
    framing: Framing,
    /// Only peers of this uid, or root, are served (the control socket).
    peer_uid: Option<u32>,
    /// The token of client `id`.
    client_token: fn(usize) -> Token,
    conns: HashMap<usize, Conn>,
    next_id: usize,
    /// An fd held in reserve for when the process is out of fds.
    reserve: Option<OwnedFd>,
}

/// `/dev/null`, opened to be closed when the process is out of fds.
fn reserve_fd() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

impl Endpoint {
    pub fn new(listener: Listener, framing: Framing, peer_uid: Option<u32>) -> Endpoint {
        Endpoint {
            listener,
            framing,
            peer_uid,
            client_token: |id| Token(id),
            conns: HashMap::new(),
            next_id: 0,
            reserve: reserve_fd(),
        }
    }

    /// Registers the listener as `listen`; client `id` gets
    /// `client_token(id)`.
    pub fn register(
        &mut self,
        registry: &Registry,
        listen: Token,
        client_token: fn(usize) -> Token,
    ) -> io::Result<()> {
        self.client_token = client_token;
        let source: &mut dyn Source = match &mut self.listener {
            Listener::Unix(l) => l,
            Listener::Tcp(l) => l,
        };
        registry.register(source, listen, Interest::READABLE)
    }

    /// Whether client `id` is still one of this endpoint's.
    pub fn knows(&self, id: usize) -> bool {
        self.conns.contains_key(&id)
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.raw_fd()
    }

    /// The listener's and every client's fd (a forked worker closes them).
    pub fn raw_fds(&self) -> Vec<RawFd> {
        std::iter::once(self.listener.raw_fd())
            .chain(self.conns.values().map(|c| c.stream.raw_fd()))
            .collect()
    }

    /// Accepts every waiting client. With a `peer_uid`, peers of another
    /// uid (other than root) get an error and are closed.
    pub fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok(stream) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Clients that hung up may not have been seen yet
                    // (their events can come after this one, or they hung
                    // up while this loop ran): their fds first, then, if
                    // still out, turn the newcomer away. Each turn frees
                    // or sheds one, so the loop ends with the queue.
                    if self.close_hung_up(registry) || self.shed_one() {
                        continue;
                    }
                    return;
                }
                Err(_) => return,
            };
            let peer = stream.peer_uid();
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1) % (1 << 24);
            let mut conn = Conn {
                stream,
                accepted: now,
                input: Vec::new(),
                output: Vec::new(),
                closing: false,
                waiting: false,
                deadline: now + FIRST_BYTE_DEADLINE,
            };
            let token = (self.client_token)(id);
            if registry
                .register(
                    conn.stream.source(),
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            if self.conns.len() >= MAX_CONNECTIONS {
                self.make_room(registry);
            }
            self.conns.insert(id, conn);
            let allowed = match self.peer_uid {
                None => true,
                Some(uid) => matches!(peer, Some(p) if p == uid || p == 0),
            };
            if self.conns.len() > MAX_CONNECTIONS {
                self.refuse(id, "too many connections", registry);
            } else if !allowed {
                self.refuse(id, "permission denied: not the master's user", registry);
            }
        }
    }

    /// Closes the connections whose client has hung up; true if any was.
    fn close_hung_up(&mut self, registry: &Registry) -> bool {
        let gone: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.stream.hung_up())
            .map(|(&id, _)| id)
            .collect();
        for &id in &gone {
            self.close(id, registry);
        }
        !gone.is_empty()
    }

    /// Out of fds: frees the reserve, accepts one client with it, tells it
    /// why it is turned away, and takes the reserve back. False if no
    /// client was waiting (or the reserve could not be used).
    fn shed_one(&mut self) -> bool {
        if self.reserve.take().is_none() {
            return false;
        }
        let shed = match self.listener.accept() {
            Ok(mut stream) => {
                let refusal = self.framing.refusal(
                    "the master is out of file descriptors just now; try again in a moment",
                );
                // A best effort for a client about to be closed: one that
                // cannot take the line learns from the close.
                let _ = stream.write(&refusal);
                true
            }
            Err(_) => false,
        };
        self.reserve = reserve_fd();
        shed
    }

    /// At the connection cap: closes the oldest client that has not sent a
    /// whole request (not one waiting for a reload), so the newest is
    /// served; if every one is waiting, the newest is refused.
    fn make_room(&mut self, registry: &Registry) {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| !c.waiting && !c.closing)
            .min_by_key(|(_, c)| c.accepted)
            .map(|(&id, _)| id);
        if let Some(id) = oldest {
            self.refuse(
                id,
                "closed to make room for a newer client (too many connections)",
                registry,
            );
            self.close(id, registry);
        }
    }

    /// Reads what a client sent; returns its request once it is whole.
    /// Oversized requests are answered here.
    pub fn on_event(&mut self, id: usize, registry: &Registry) -> Option<Vec<u8>> {
        let conn = self.conns.get_mut(&id)?;
        if conn.closing || conn.waiting {
            self.flush(id, registry);
            return None;
        }
        let mut buf = [0u8; 4096];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    // The client hung up before a whole request.
                    self.close(id, registry);
                    return None;
                }
                Ok(n) => {
                    if conn.input.is_empty() {
                        // It speaks: the whole request may take longer.
                        conn.deadline = conn.accepted + REQUEST_DEADLINE;
                    }
                    conn.input.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.close(id, registry);
                    return None;
                }
            }
            if self.framing.request_len(&conn.input).is_some() || conn.input.len() > MAX_REQUEST {
                break;
            }
        }
        let Some(len) = self.framing.request_len(&conn.input) else {
            if conn.input.len() > MAX_REQUEST {
                let message = format!("request too large (the limit is {MAX_REQUEST} bytes)");
                self.refuse(id, &message, registry);
            }
            return None;
        };
        let mut request = std::mem::take(&mut conn.input);
        request.truncate(len);
        Some(request)
    }

    /// Keeps a connection open, without deadline, until [`Self::reply`] is
    /// called for it (reload --wait, stop --wait).
    pub fn hold(&mut self, id: usize) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.waiting = true;
        }
    }

    /// Sends the response and closes the connection once it is out.
    pub fn reply(&mut self, id: usize, response: &[u8], registry: &Registry) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.output.extend_from_slice(response);
        conn.closing = true;
        conn.waiting = false;
        self.flush(id, registry);
    }

    /// Answers with the protocol's error.
    pub fn refuse(&mut self, id: usize, message: &str, registry: &Registry) {
        let refusal = self.framing.refusal(message);
        self.reply(id, &refusal, registry);
    }

    /// Writes what it can; a client that reads slowly is written to as its
    /// socket drains (edge-triggered writable events).
    fn flush(&mut self, id: usize, registry: &Registry) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        while !conn.output.is_empty() {
            match conn.stream.write(&conn.output) {
                Ok(0) => break,
                Ok(n) => {
                    conn.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    conn.output.clear();
                    break;
                }
            }
        }
        if conn.closing {
            self.close(id, registry);
        }
    }

    fn close(&mut self, id: usize, registry: &Registry) {
        if let Some(mut conn) = self.conns.remove(&id) {
            // The stream closes as it drops, which takes it out of the
            // epoll set anyway.
            let _ = registry.deregister(conn.stream.source());
        }
    }

    /// Closes clients that did not send a whole request in time, and those
    /// whose response could not be written in time.
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.waiting && c.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            let unanswered = self
                .conns
                .get(&id)
                .map(|c| (!c.closing, c.input.is_empty()));
            match unanswered {
                Some((true, true)) => {
                    self.refuse(id, "no request within 2s of connecting", registry)
                }
                Some((true, false)) => {
                    self.refuse(id, "incomplete request: not whole within 10s", registry)
                }
                Some((false, _)) | None => {}
            }
            self.close(id, registry);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter(|c| !c.waiting)
            .map(|c| c.deadline)
            .min()
    }
}
