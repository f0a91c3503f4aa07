//! The HTTP/1.1 server behind `hello` and `cluster` (std only, keep-alive):
//! accept until told to stop, then drain without losing a request.
//!
//! On the stop signal it takes what is already queued, then closes its
//! listener (once every copy is closed a new connection is refused at
//! once), answers every request in flight, answers a request that arrives on a keep-alive connection within
//! a short grace with `Connection: close`, closes idle connections politely,
//! and returns once the last connection is done.
//!
//! A thread per connection, at most [`MAX_CONNECTIONS`] at a time: at the
//! limit it accepts nothing until one ends (connections wait in the shared
//! queue, or go to another worker). When the system refuses a thread, that
//! connection is closed unanswered, and the line that says so is written
//! at most once a second.
//!
//! `GET /sleep/<ms>` answers after `<ms>`, to watch a drain; `GET
//! /burn/<ms>` after spending `<ms>` of CPU, to load a worker (the bench);
//! `GET /cwd` answers the directory the worker runs in, to see which
//! release it is.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown as Half;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rcluster::worker::{Listener, Shutdown, Stream};

/// While draining, how long an idle keep-alive connection stays open for a
/// request that may already be on its way. Closing at once races with a
/// client that is sending (it would see a reset); this grace closes that
/// window for every client that sends without pausing. It is the idle
/// timeout each keep-alive response states (`Keep-Alive: timeout=1`), so a
/// client that was away longer knows not to send on it. `HELLO_DRAIN_GRACE_MS`
/// overrides it (the statement stays).
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// While draining, a keep-alive connection that keeps sending is told to
/// close at a moment of its own within this time, not on its next
/// response: clients that all reconnect at once queue behind each other on
/// the workers left, and those reconnects are the slowest requests of a
/// reload. `HELLO_CLOSE_SPREAD_MS` overrides it.
const CLOSE_SPREAD: Duration = Duration::from_millis(250);
/// How long a polite close waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);
const MAX_HEADER_LINES: usize = 100;
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Connections served at once, a thread each.
pub const MAX_CONNECTIONS: usize = 512;

/// The connection threads running, and a wake-up when one ends.
struct Busy {
    running: Mutex<usize>,
    ended: Condvar,
}

impl Busy {
    /// Waits (waking now and then to see the stop) for room for one more.
    fn wait_for_room(&self, shutdown: &Shutdown) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= MAX_CONNECTIONS && !shutdown.requested() {
            running = self
                .ended
                .wait_timeout(running, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *running += 1;
    }

    fn end(&self) {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.ended.notify_one();
    }
}

/// Gives the room back when a connection's thread ends, however it ends.
struct Ends<'b>(&'b Busy);

impl Drop for Ends<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Says what went wrong at most once a second, with how often it did.
struct Complaint {
    last: Mutex<(Option<Instant>, u64)>,
}

impl Complaint {
    fn say(&self, what: &str) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.1 += 1;
        if last
            .0
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            eprintln!("{what} ({} in the last second)", last.1);
            *last = (Some(Instant::now()), 0);
        }
    }
}

/// Serves every listener (ports and Unix sockets, a thread accepting on
/// each) until the stop signal, then closes them and drains: returns once
/// every connection is done.
pub fn serve(listeners: Vec<Listener>, shutdown: &Shutdown, greeting: &str) -> io::Result<()> {
    let grace = std::env::var("HELLO_DRAIN_GRACE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(DRAIN_GRACE, Duration::from_millis);
    let spread = std::env::var("HELLO_CLOSE_SPREAD_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(CLOSE_SPREAD, Duration::from_millis);
    let server = Server {
        shutdown,
        greeting,
        grace,
        spread,
        busy: Busy {
            running: Mutex::new(0),
            ended: Condvar::new(),
        },
        complaint: Complaint {
            last: Mutex::new((None, 0)),
        },
    };
    // The scope returns once every connection thread has finished: that is
    // the drain.
    thread::scope(|scope| -> io::Result<()> {
        let server = &server;
        let mut listeners = listeners.into_iter();
        let first = listeners.next();
        // Each listener past the first has an accepting thread of its own.
        let others: Vec<_> = listeners
            .map(|listener| {
                thread::Builder::new()
                    .name("accept".into())
                    .spawn_scoped(scope, move || server.accept_until_stop(scope, listener))
            })
            .collect::<io::Result<_>>()?;
        let mut result = first.map_or(Ok(()), |l| server.accept_until_stop(scope, l));
        for accepting in others {
            let joined = accepting.join();
            let ended = joined.unwrap_or_else(|_| Err(io::Error::other("an accept loop panicked")));
            result = result.and(ended);
        }
        result
    })
}

/// What every connection of a worker shares.
struct Server<'a> {
    shutdown: &'a Shutdown,
    greeting: &'a str,
    grace: Duration,
    spread: Duration,
    busy: Busy,
    complaint: Complaint,
}

impl<'a> Server<'a> {
    /// Accepts on `listener` until the stop signal, a thread per
    /// connection, then closes it.
    fn accept_until_stop<'scope>(
        &'scope self,
        scope: &'scope thread::Scope<'scope, '_>,
        listener: Listener,
    ) -> io::Result<()> {
        loop {
            self.busy.wait_for_room(self.shutdown);
            let Some(conn) = self.shutdown.accept(&listener)? else {
                stopped_at();
                self.busy.end();
                break;
            };
            // A thread the system refuses (`ulimit -u`, memory) costs this
            // connection, closed unanswered, not the server.
            let spawned = thread::Builder::new().spawn_scoped(scope, move || {
                let _ends = Ends(&self.busy);
                let _ =
                    serve_connection(conn, self.shutdown, self.greeting, self.grace, self.spread);
            });
            if let Err(e) = spawned {
                self.busy.end();
                self.complaint
                    .say(&format!("connection refused: cannot start a thread: {e}"));
            }
        }
        drop(listener);
        Ok(())
    }
}

/// When the stop came, as first seen here (the accept loop sees it at
/// once): each connection's close is timed from it, so a response that
/// was already under way when it came says close.
fn stopped_at() -> Instant {
    static AT: OnceLock<Instant> = OnceLock::new();
    *AT.get_or_init(Instant::now)
}

/// A connection's share of `spread`: successive calls step through it by
/// the golden ratio, so any few of them are far apart.
fn share_of(spread: Duration) -> Duration {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    spread.mul_f64((f64::from(n) * 0.618_033_988_75).fract())
}

struct Request {
    /// The client asked to close (or speaks HTTP/1.0 without keep-alive).
    close: bool,
    sleep: Option<Duration>,
    burn: Option<Duration>,
    /// `GET /cwd`: answer the working directory, not the greeting.
    cwd: bool,
}

fn serve_connection(
    conn: Stream,
    shutdown: &Shutdown,
    greeting: &str,
    grace: Duration,
    spread: Duration,
) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    // From when, once the stop has come, this connection says close.
    let mut close_at = None;
    loop {
        if reader.buffer().is_empty() && !shutdown.requested() {
            // Idle between requests: wake for the next one or for the stop.
            shutdown.wait(&conn, None)?;
        }
        if shutdown.requested() {
            conn.set_read_timeout(Some(grace))?;
        }
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(e) if is_timeout(&e) => return close_politely(conn),
            Err(e) => return Err(e),
        };
        if let Some(work) = request.burn {
            let start = std::time::Instant::now();
            while start.elapsed() < work {
                std::hint::spin_loop();
            }
        }
        if let Some(delay) = request.sleep {
            thread::sleep(delay);
        }
        let close = request.close
            || shutdown.requested()
                && Instant::now()
                    >= *close_at.get_or_insert_with(|| stopped_at() + share_of(spread));
        let cwd;
        let body = if request.cwd {
            cwd = std::env::current_dir()
                .map_or_else(|e| e.to_string(), |d| d.display().to_string())
                + "\n";
            cwd.as_str()
        } else {
            greeting
        };
        // One write: a response split over several small writes waits on
        // Nagle's algorithm for the client's delayed ACK (40 ms).
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{}",
            body.len(),
            if close {
                "close"
            } else {
                "keep-alive\r\nKeep-Alive: timeout=1"
            },
            body
        );
        conn.write_all(response.as_bytes())?;
        if close {
            return close_politely(conn);
        }
    }
}

/// Reads one request head (and skips its body). `None`: the client closed
/// the connection between requests.
fn read_request(reader: &mut BufReader<Stream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace().skip(1);
    let path = parts.next().unwrap_or("/");
    let sleep = path
        .strip_prefix("/sleep/")
        .and_then(|ms| ms.parse().ok())
        .map(|ms| Duration::from_millis(ms).min(MAX_SLEEP));
    let burn = path
        .strip_prefix("/burn/")
        .and_then(|ms| ms.parse().ok())
        .map(|ms| Duration::from_millis(ms).min(MAX_SLEEP));
    let cwd = path == "/cwd";
    let mut close = parts.next() != Some("HTTP/1.1");
    let mut body = 0u64;
    for _ in 0..MAX_HEADER_LINES {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let header = line.trim_end();
        if header.is_empty() {
            io::copy(&mut reader.by_ref().take(body), &mut io::sink())?;
            return Ok(Some(Request {
                close,
                sleep,
                burn,
                cwd,
            }));
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close")
                    || (close && !value.eq_ignore_ascii_case("keep-alive"));
            } else if name.eq_ignore_ascii_case("content-length") {
                body = value.parse().unwrap_or(0);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "too many header lines",
    ))
}

/// Closes without destroying the last response: closing a socket that
/// still has unread input sends a reset, which can overtake the response.
/// So: send FIN, read until the client closes (or `LINGER` passes), close.
fn close_politely(mut conn: Stream) -> io::Result<()> {
    conn.shutdown(Half::Write)?;
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
