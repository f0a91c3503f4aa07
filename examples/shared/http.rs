//! The HTTP/1.1 server behind `hello` and `cluster` (std only, keep-alive):
//! accept until told to stop, then drain without losing a request.
//!
//! On the stop signal it takes what is already queued, then closes its
//! listener (once every copy is closed a new connection is refused at
//! once), answers every request in flight, answers a request that arrives on a keep-alive connection within
//! a short grace with `Connection: close`, closes idle connections politely,
//! and returns once the last connection is done.
//!
//! `GET /sleep/<ms>` answers after `<ms>`, to watch a drain; `GET
//! /burn/<ms>` after spending `<ms>` of CPU, to load a worker (the bench).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown as Half, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rcluster::worker::Shutdown;

/// While draining, how long an idle keep-alive connection stays open for a
/// request that may already be on its way. Closing at once races with a
/// client that is sending (it would see a reset); this grace closes that
/// window for every client that sends without pausing. `HELLO_DRAIN_GRACE_MS`
/// overrides it.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long a polite close waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);
const MAX_HEADER_LINES: usize = 100;
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Serves `listener` until the stop signal, then closes it and drains:
/// returns once every connection is done.
pub fn serve(listener: TcpListener, shutdown: &Shutdown, greeting: &str) -> io::Result<()> {
    let grace = std::env::var("HELLO_DRAIN_GRACE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(DRAIN_GRACE, Duration::from_millis);
    // The scope returns once every connection thread has finished: that is
    // the drain.
    thread::scope(|scope| -> io::Result<()> {
        while let Some(conn) = shutdown.accept(&listener)? {
            // A thread the system refuses (`ulimit -u`, memory) costs this
            // connection, closed unanswered, not the server.
            let spawned = thread::Builder::new().spawn_scoped(scope, move || {
                let _ = serve_connection(conn, shutdown, greeting, grace);
            });
            if let Err(e) = spawned {
                eprintln!("connection refused: cannot start a thread: {e}");
            }
        }
        drop(listener);
        Ok(())
    })
}

struct Request {
    /// The client asked to close (or speaks HTTP/1.0 without keep-alive).
    close: bool,
    sleep: Option<Duration>,
    burn: Option<Duration>,
}

fn serve_connection(
    conn: TcpStream,
    shutdown: &Shutdown,
    greeting: &str,
    grace: Duration,
) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
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
        let close = request.close || shutdown.requested();
        // One write: a response split over several small writes waits on
        // Nagle's algorithm for the client's delayed ACK (40 ms).
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{}",
            greeting.len(),
            if close { "close" } else { "keep-alive" },
            greeting
        );
        conn.write_all(response.as_bytes())?;
        if close {
            return close_politely(conn);
        }
    }
}

/// Reads one request head (and skips its body). `None`: the client closed
/// the connection between requests.
fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
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
            return Ok(Some(Request { close, sleep, burn }));
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
fn close_politely(mut conn: TcpStream) -> io::Result<()> {
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
