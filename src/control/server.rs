//! The control socket: a Unix stream socket (mode 0600, peers of another
//! uid refused) that `rcluster status`, `reload`, `rollback`, `scale` and `stop` talk
//! to, served inside the master's event loop (`endpoint.rs`).
//!
//! The protocol is one JSON object per line, one request per connection:
//!
//! ```text
//! → {"cmd":"status"}                  ← {"ok":true,"master":{…},"workers":[…],…}
//! → {"cmd":"reload","wait":true}      ← {"ok":true,"result":"complete","generation":3,"duration_ms":41,"release":{…}}
//! → {"cmd":"rollback","to":2}         ← {"ok":true,"generation":4,"release":{…}}
//! → {"cmd":"scale","workers":8}       ← {"ok":true,"workers":8}
//! → {"cmd":"stop","wait":false}       ← {"ok":true}
//! ← {"ok":false,"error":"…"}          for anything malformed, too large or too slow
//! ```

use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::Registry;
use mio::net::UnixListener;
use serde_json::{Value, json};

use crate::control::endpoint::{Endpoint, Framing, Listener};
use crate::sockets::listen::{self, Occupant};

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
    /// Back to an earlier generation's release: `to`, or the one that
    /// served before the serving one.
    Rollback {
        wait: bool,
        to: Option<u64>,
    },
    Scale {
        to: ScaleTo,
    },
    Stop {
        wait: bool,
    },
    /// A live upgrade of the master; `reload`: then of the workers.
    Upgrade {
        reload: bool,
    },
}

/// The worker count a `scale` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleTo {
    Exactly(usize),
    /// More (or, negative, fewer) than now: PM2's `scale app +1`.
    By(i64),
    /// One per CPU, as `--workers auto`.
    Auto,
}

impl ScaleTo {
    /// The count it means when the master runs `now` workers: at least
    /// one, at most `MAX_WORKERS`.
    pub fn from(self, now: usize) -> usize {
        let max = crate::vocab::MAX_WORKERS;
        match self {
            ScaleTo::Exactly(n) => n.clamp(1, max),
            ScaleTo::By(by) => (now as i64).saturating_add(by).clamp(1, max as i64) as usize,
            ScaleTo::Auto => num_cpus::get().clamp(1, max),
        }
    }

    /// `8`, `+1`, `-2` or `auto`, as `rcluster scale` takes it.
    pub fn parse(text: &str) -> Result<ScaleTo, String> {
        let max = crate::vocab::MAX_WORKERS;
        let wrong = || format!("expected a count from 1 to {max}, +N, -N or auto, not {text:?}");
        if text == "auto" {
            return Ok(ScaleTo::Auto);
        }
        if let Some(rest) = text.strip_prefix(['+', '-']) {
            let by: i64 = rest.parse().map_err(|_| wrong())?;
            return Ok(ScaleTo::By(if text.starts_with('-') { -by } else { by }));
        }
        match text.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(ScaleTo::Exactly(n)),
            Ok(n) => Err(format!("{n} is not in 1..={max}")),
            Err(_) => Err(wrong()),
        }
    }

    /// As the protocol carries it.
    pub fn json(self) -> Value {
        match self {
            ScaleTo::Exactly(n) => json!({"cmd": "scale", "workers": n}),
            ScaleTo::By(by) => json!({"cmd": "scale", "by": by}),
            ScaleTo::Auto => json!({"cmd": "scale", "workers": "auto"}),
        }
    }
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
        "rollback" => &["cmd", "wait", "to"],
        "scale" => &["cmd", "workers", "by"],
        "upgrade" => &["cmd", "reload"],
        _ => {
            return Err(
                "unknown request: \"cmd\" must be status, reload, rollback, scale, stop or upgrade"
                    .into(),
            );
        }
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
                Some(n) if n < crate::vocab::MAX_WORKERS as u64 => Ok(Request::Status {
                    slot: Some(n as usize),
                }),
                _ => Err(format!("\"slot\" must be a slot number, not {slot}")),
            },
        },
        "reload" => Ok(Request::Reload { wait }),
        "rollback" => match value.get("to").filter(|to| !to.is_null()) {
            None => Ok(Request::Rollback { wait, to: None }),
            Some(to) => match to.as_u64() {
                Some(n) if n >= 1 => Ok(Request::Rollback { wait, to: Some(n) }),
                _ => Err(format!("\"to\" must be a generation number, not {to}")),
            },
        },
        "stop" => Ok(Request::Stop { wait }),
        "upgrade" => match value.get("reload") {
            None => Ok(Request::Upgrade { reload: false }),
            Some(Value::Bool(reload)) => Ok(Request::Upgrade { reload: *reload }),
            Some(other) => Err(format!("\"reload\" must be true or false, not {other}")),
        },
        _ => match (&value["workers"], value["by"].as_i64()) {
            (Value::Null, Some(by)) => Ok(Request::Scale {
                to: ScaleTo::By(by),
            }),
            (Value::String(auto), None) if auto == "auto" => {
                Ok(Request::Scale { to: ScaleTo::Auto })
            }
            (workers, None) => match workers.as_u64() {
                Some(n) if n >= 1 && n <= crate::vocab::MAX_WORKERS as u64 => Ok(Request::Scale {
                    to: ScaleTo::Exactly(n as usize),
                }),
                _ => Err(format!(
                    "scale needs \"workers\" (a number from 1 to {}, or \"auto\") or \"by\" (a \
                     number of workers more, or fewer if negative)",
                    crate::vocab::MAX_WORKERS
                )),
            },
            _ => Err("scale takes \"workers\" or \"by\", not both".into()),
        },
    }
}

pub fn error(message: impl Into<String>) -> Value {
    json!({"ok": false, "error": message.into()})
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
    // Without it the write may block longer; the deadline below still
    // bounds the whole exchange.
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
        // As above: the loop's deadline bounds it whatever happens here.
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

/// The listening control socket and its clients.
pub struct ControlServer {
    endpoint: Endpoint,
    path: PathBuf,
    ino: u64,
    owner: u32,
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
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        Ok(ControlServer {
            endpoint: Endpoint::new(Listener::Unix(listener), Framing::Line, Some(uid)),
            path: path.to_path_buf(),
            ino: std::fs::symlink_metadata(path)
                .map_err(BindError::Failed)?
                .ino(),
            owner: std::process::id(),
        })
    }

    /// The socket an earlier image of this master bound (a live upgrade).
    pub fn resume(fd: std::os::fd::OwnedFd, path: &Path) -> std::io::Result<ControlServer> {
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener.set_nonblocking(true)?;
        nix::fcntl::fcntl(
            &listener,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        Ok(ControlServer {
            endpoint: Endpoint::new(
                Listener::Unix(UnixListener::from_std(listener)),
                Framing::Line,
                Some(uid),
            ),
            path: path.to_path_buf(),
            // Removed meanwhile: served as it was, nothing removed at exit
            // (0 is no file's inode); the master says so.
            ino: std::fs::symlink_metadata(path).map_or(0, |m| m.ino()),
            owner: std::process::id(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener_fd(&self) -> std::os::fd::RawFd {
        self.endpoint.listener_fd()
    }

    /// The connections, served in the master's loop.
    pub fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    pub fn raw_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.endpoint.raw_fds()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.endpoint.next_deadline()
    }

    /// Reads what a client sent; returns its request once a whole line is
    /// in. Malformed requests are answered here.
    pub fn on_event(&mut self, id: usize, registry: &Registry) -> Option<Request> {
        let line = self.endpoint.on_event(id, registry)?;
        match parse_request(&line) {
            Ok(request) => Some(request),
            Err(message) => {
                self.endpoint.refuse(id, &message, registry);
                None
            }
        }
    }

    /// Sends one response line and closes the connection once it is out.
    pub fn reply(&mut self, id: usize, response: &Value, registry: &Registry) {
        let mut line = response.to_string();
        line.push('\n');
        self.endpoint.reply(id, line.as_bytes(), registry);
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
            Ok(Request::Scale {
                to: ScaleTo::Exactly(8)
            })
        );
        assert_eq!(
            parse_request(br#"{"cmd":"scale","by":-1}"#),
            Ok(Request::Scale {
                to: ScaleTo::By(-1)
            })
        );
        assert_eq!(
            parse_request(br#"{"cmd":"scale","workers":"auto"}"#),
            Ok(Request::Scale { to: ScaleTo::Auto })
        );
        assert!(parse_request(br#"{"cmd":"scale","workers":2,"by":1}"#).is_err());
        assert_eq!(ScaleTo::parse("+1").map(|s| s.from(2)), Ok(3));
        assert_eq!(ScaleTo::parse("-5").map(|s| s.from(2)), Ok(1));
        assert_eq!(ScaleTo::parse("8").map(|s| s.from(2)), Ok(8));
        assert!(
            ScaleTo::parse("0")
                .unwrap_err()
                .contains("0 is not in 1..=4096")
        );
        assert!(ScaleTo::parse("many").is_err());
        assert_eq!(
            parse_request(br#"{"cmd":"rollback","wait":true,"to":2}"#),
            Ok(Request::Rollback {
                wait: true,
                to: Some(2)
            })
        );
        assert!(
            parse_request(br#"{"cmd":"rollback","to":"x"}"#)
                .unwrap_err()
                .contains("generation number")
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
