//! The control socket: a Unix stream socket (mode 0600, peers of another
//! uid refused) that `rcluster status`, `reload`, `scale` and `stop` talk
//! to, served inside the master's event loop. No threads: every connection
//! is a non-blocking socket with its buffers and a deadline.
//!
//! The protocol is one JSON object per line, one request per connection:
//!
//! ```text
//! → {"cmd":"status"}                  ← {"ok":true,"master":{…},"workers":[…],…}
//! → {"cmd":"reload","wait":true}      ← {"ok":true,"result":"complete","generation":3,"duration_ms":41}
//! → {"cmd":"scale","workers":8}       ← {"ok":true,"workers":8}
//! → {"cmd":"stop","wait":false}       ← {"ok":true}
//! ← {"ok":false,"error":"…"}          for anything malformed, too large or too slow
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use nix::sys::socket::{getsockopt, sockopt};
use serde_json::{Value, json};

use crate::listen::{self, Occupant};

/// A request line longer than this is refused.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Connections beyond this: the oldest idle one is closed for the newest.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its first byte: clients send at once,
/// and one that connects and says nothing holds an fd.
pub const FIRST_BYTE_DEADLINE: Duration = Duration::from_secs(2);
/// How long a client may take to send its whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// With a slot: also the last lines its workers wrote to stderr.
    Status {
        slot: Option<usize>,
    },
    Reload {
        wait: bool,
    },
    Scale {
        workers: usize,
    },
    Stop {
        wait: bool,
    },
}

/// A request, checked strictly: an object with a known `cmd`, only the
/// fields that `cmd` takes, each of the right type (`"wait": 1` is an
/// error, not a silent `false`).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    let fields = value
        .as_object()
        .ok_or("a request is a JSON object, e.g. {\"cmd\":\"status\"}")?;
    let cmd = value["cmd"].as_str().unwrap_or_default();
    let takes: &[&str] = match cmd {
        "status" => &["cmd", "slot"],
        "reload" | "stop" => &["cmd", "wait"],
        "scale" => &["cmd", "workers"],
        _ => return Err("unknown request: \"cmd\" must be status, reload, scale or stop".into()),
    };
    if let Some(key) = fields.keys().find(|k| !takes.contains(&k.as_str())) {
        return Err(format!("a {cmd} request has no field \"{key}\""));
    }
    let wait = match value.get("wait") {
        None => false,
        Some(Value::Bool(wait)) => *wait,
        Some(other) => return Err(format!("\"wait\" must be true or false, not {other}")),
    };
    match cmd {
        "status" => match value.get("slot") {
            None => Ok(Request::Status { slot: None }),
            Some(slot) => match slot.as_u64() {
                Some(n) if n < crate::config::MAX_WORKERS as u64 => Ok(Request::Status {
                    slot: Some(n as usize),
                }),
                _ => Err(format!("\"slot\" must be a slot number, not {slot}")),
            },
        },
        "reload" => Ok(Request::Reload { wait }),
        "stop" => Ok(Request::Stop { wait }),
        _ => match value["workers"].as_u64() {
            Some(n) if n >= 1 && n <= crate::config::MAX_WORKERS as u64 => Ok(Request::Scale {
                workers: n as usize,
            }),
            _ => Err(format!(
                "scale needs \"workers\": a number from 1 to {}",
                crate::config::MAX_WORKERS
            )),
        },
    }
}

pub fn error(message: impl Into<String>) -> Value {
    json!({"ok": false, "error": message.into()})
}

/// `/dev/null`, opened to be closed when the process is out of fds.
fn reserve_fd() -> Option<std::os::fd::OwnedFd> {
    std::fs::File::open("/dev/null")
        .ok()
        .map(std::os::fd::OwnedFd::from)
}

/// Why a control socket could not be bound.
#[derive(Debug)]
pub enum BindError {
    Taken(Taken),
    Failed(io::Error),
}

/// What holds the path a control socket would take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// A master answers there.
    Master { pid: u64, name: String },
    /// Something answers there that is not a master (an app's socket).
    Server,
    /// Not a socket at all ("a regular file", "a directory"…).
    NotASocket(&'static str),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::Taken(Taken::Master { pid, name }) => {
                write!(
                    f,
                    "another rcluster master ({name}, pid {pid}) answers on it"
                )
            }
            BindError::Taken(Taken::Server) => {
                f.write_str("a server that is not an rcluster master listens on it")
            }
            BindError::Taken(Taken::NotASocket(what)) => write!(f, "it is {what}"),
            BindError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// A live socket at `path`: a master, if it answers a status request.
fn probe(path: &Path) -> Taken {
    match ask(path, &json!({"cmd": "status"}), PROBE_TIMEOUT) {
        Ok(answer) if answer["master"]["pid"].is_u64() => Taken::Master {
            pid: answer["master"]["pid"].as_u64().unwrap_or_default(),
            name: answer["master"]["name"]
                .as_str()
                .unwrap_or("unnamed")
                .to_string(),
        },
        Ok(_) | Err(_) => Taken::Server,
    }
}

/// How long a master that is asked whether it is one may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failed {
    /// Nothing to connect to.
    NoMaster(io::Error),
    /// The master's queue of clients is full: it runs, but is busy.
    Busy,
    /// Connected, but the whole answer did not come before the deadline.
    TimedOut,
    /// Connected, and the connection broke (the text says how).
    Broken(String),
}

/// Sends one request to the master at `path` and reads its one-line
/// answer, all within `timeout`: the client side of the protocol.
pub fn ask(path: &Path, request: &Value, timeout: Duration) -> Result<Value, Failed> {
    let deadline = Instant::now() + timeout;
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            Failed::Busy
        } else {
            Failed::NoMaster(e)
        }
    })?;
    let timed_out = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    let mut line = request.to_string();
    line.push('\n');
    let _ = stream.set_write_timeout(Some(timeout));
    // A master that refuses us answers before reading: the answer is worth
    // more than the error our write got.
    let written = stream.write_all(line.as_bytes());
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.contains(&b'\n') {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Err(Failed::TimedOut);
        };
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => return Err(Failed::TimedOut),
            Err(e) => return Err(Failed::Broken(format!("broke the connection: {e}"))),
        }
    }
    if response.is_empty() {
        return Err(Failed::Broken(match written {
            Err(e) => format!("refused the request: {e}"),
            Ok(()) => "closed the connection without answering".into(),
        }));
    }
    serde_json::from_slice(&response)
        .map_err(|e| Failed::Broken(format!("answered something that is not JSON: {e}")))
}

/// One client.
struct Conn {
    stream: UnixStream,
    accepted: Instant,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Closed once the output is flushed.
    closing: bool,
    /// Waiting for a reload or stop to finish: no deadline.
    waiting: bool,
    deadline: Instant,
}

/// The listening control socket and its clients.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
    owner: u32,
    uid: u32,
    base: usize,
    conns: HashMap<usize, Conn>,
    next_id: usize,
    /// An fd held in reserve: when the process is out of fds, it is freed
    /// to accept one waiting client and tell it so, so that the queue
    /// drains (nginx and libuv do the same; an edge-triggered listener
    /// whose queue is not drained is never woken again).
    reserve: Option<std::os::fd::OwnedFd>,
}

impl ControlServer {
    /// Binds `path` with mode 0600. A stale socket there (nothing
    /// answers) is replaced; anything else is left alone and said what it
    /// is: another master, another server, or not a socket at all.
    pub fn bind(path: &Path) -> Result<ControlServer, BindError> {
        match listen::occupant(path).map_err(BindError::Failed)? {
            Occupant::Nothing => {}
            Occupant::StaleSocket => listen::remove_stale(path).map_err(BindError::Failed)?,
            Occupant::LiveSocket => return Err(BindError::Taken(probe(path))),
            Occupant::Other(what) => return Err(BindError::Taken(Taken::NotASocket(what))),
        }
        // umask, not chmod after bind: no moment in which others may connect.
        // SAFETY: umask only swaps the process mask; the master has one thread.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(BindError::Failed)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(BindError::Failed)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            ino: std::fs::symlink_metadata(path)
                .map_err(BindError::Failed)?
                .ino(),
            owner: std::process::id(),
            // SAFETY: geteuid has no preconditions.
            uid: unsafe { libc::geteuid() },
            base: 0,
            conns: HashMap::new(),
            next_id: 0,
            reserve: reserve_fd(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Registers the listener as `listen`; connections get `base + id`.
    pub fn register(&mut self, registry: &Registry, listen: Token, base: usize) -> io::Result<()> {
        self.base = base;
        registry.register(&mut self.listener, listen, Interest::READABLE)
    }

    pub fn owns(&self, token: Token) -> Option<usize> {
        let id = token.0.checked_sub(self.base)?;
        self.conns.contains_key(&id).then_some(id)
    }

    /// The listener's and every client's fd (a forked worker closes them).
    pub fn raw_fds(&self) -> Vec<std::os::fd::RawFd> {
        std::iter::once(self.listener.as_raw_fd())
            .chain(self.conns.values().map(|c| c.stream.as_raw_fd()))
            .collect()
    }

    /// Accepts every waiting client. Peers of another uid (other than
    /// root) get an error and are closed.
    pub fn accept(&mut self, registry: &Registry, now: Instant) {
        let mut swept = false;
        loop {
            let (stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Clients that hung up may not have been seen yet
                    // (their events can come after this one): their fds
                    // first, then, if still out, turn the newcomer away.
                    if !swept {
                        swept = true;
                        if self.close_hung_up(registry) {
                            continue;
                        }
                    }
                    if self.shed_one() {
                        continue;
                    }
                    return;
                }
                Err(_) => return,
            };
            let peer = getsockopt(&stream, sockopt::PeerCredentials).map(|c| c.uid());
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
            let token = Token(self.base + id);
            if registry
                .register(
                    &mut conn.stream,
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
            if self.conns.len() > MAX_CONNECTIONS {
                self.reply(id, &error("too many control connections"), registry);
            } else if !matches!(peer, Ok(uid) if uid == self.uid || uid == 0) {
                self.reply(
                    id,
                    &error("permission denied: not the master's user"),
                    registry,
                );
            }
        }
    }

    /// Closes the connections whose client has hung up; true if any was.
    fn close_hung_up(&mut self, registry: &Registry) -> bool {
        let gone: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| {
                let mut byte = [0u8; 1];
                // SAFETY: a peek into a local buffer on a socket we own.
                let n = unsafe {
                    libc::recv(
                        conn.stream.as_raw_fd(),
                        byte.as_mut_ptr().cast(),
                        1,
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                n == 0
            })
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
            Ok((mut stream, _)) => {
                let line =
                    error("the master is out of file descriptors just now; try again in a moment")
                        .to_string();
                let _ = stream.write_all(format!("{line}\n").as_bytes());
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
            self.reply(
                id,
                &error("closed to make room for a newer client (too many connections)"),
                registry,
            );
            self.close(id, registry);
        }
    }

    /// Reads what a client sent; returns its request once a whole line is
    /// in. Malformed and oversized requests are answered here.
    pub fn on_event(&mut self, id: usize, registry: &Registry) -> Option<Request> {
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
            if conn.input.contains(&b'\n') || conn.input.len() > MAX_REQUEST {
                break;
            }
        }
        let Some(end) = conn.input.iter().position(|&b| b == b'\n') else {
            if conn.input.len() > MAX_REQUEST {
                let message = format!("request too large (the limit is {MAX_REQUEST} bytes)");
                self.reply(id, &error(message), registry);
            }
            return None;
        };
        match parse_request(&conn.input[..end]) {
            Ok(request) => Some(request),
            Err(message) => {
                self.reply(id, &error(message), registry);
                None
            }
        }
    }

    /// Keeps a connection open, without deadline, until [`reply`] is
    /// called for it (reload --wait, stop --wait).
    pub fn hold(&mut self, id: usize) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.waiting = true;
        }
    }

    /// Sends one response line and closes the connection once it is out.
    pub fn reply(&mut self, id: usize, response: &Value, registry: &Registry) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut line = response.to_string();
        line.push('\n');
        conn.output.extend_from_slice(line.as_bytes());
        conn.closing = true;
        conn.waiting = false;
        self.flush(id, registry);
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
            let _ = registry.deregister(&mut conn.stream);
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
                    self.reply(id, &error("no request within 2s of connecting"), registry)
                }
                Some((true, false)) => self.reply(
                    id,
                    &error("incomplete request: no newline within 10s"),
                    registry,
                ),
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

impl Drop for ControlServer {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino);
        if ours && std::process::id() == self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_request(br#"{"cmd":"status"}"#),
            Ok(Request::Status { slot: None })
        );
        assert_eq!(
            parse_request(br#"{"cmd":"status","slot":2}"#),
            Ok(Request::Status { slot: Some(2) })
        );
        assert_eq!(
            parse_request(br#"{"cmd":"reload","wait":true}"#),
            Ok(Request::Reload { wait: true })
        );
        assert_eq!(
            parse_request(br#"{"cmd":"scale","workers":8}"#),
            Ok(Request::Scale { workers: 8 })
        );
        assert!(
            parse_request(br#"{"cmd":"scale","workers":0}"#)
                .unwrap_err()
                .contains("from 1")
        );
        assert!(
            parse_request(b"status")
                .unwrap_err()
                .starts_with("malformed request")
        );
        assert!(
            parse_request(br#"{"cmd":"dance"}"#)
                .unwrap_err()
                .contains("unknown request")
        );
    }

    #[test]
    fn requests_are_checked_strictly() {
        for (request, says) in [
            (
                &br#"{"cmd":"reload","wait":1}"#[..],
                "\"wait\" must be true or false, not 1",
            ),
            (br#"{"cmd":"stop","wait":"yes"}"#, "must be true or false"),
            (
                br#"{"cmd":"status","verbose":true}"#,
                "has no field \"verbose\"",
            ),
            (br#"{"cmd":"scale","workers":"8"}"#, "a number from 1"),
            (br#"["status"]"#, "a JSON object"),
        ] {
            let e = parse_request(request).unwrap_err();
            assert!(
                e.contains(says),
                "{}: {e}",
                String::from_utf8_lossy(request)
            );
        }
        assert_eq!(
            parse_request(br#"{"cmd":"stop","wait":false}"#),
            Ok(Request::Stop { wait: false })
        );
    }
}
