//! The load generator: one thread per connection, each requesting as fast
//! as the server answers, recording every request's start, latency and
//! outcome. `rcluster check` drives servers with it; the benchmark and the
//! integration tests use it too.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{Conn, Response, connect};

/// No load runs longer than this, whatever its caller does.
const MAX_RUN: Duration = Duration::from_secs(300);
/// The longest [`gate`] waits.
const GATE_WAIT: Duration = Duration::from_secs(30 * 60);
/// How long `wait_for_more` waits for progress.
const PROGRESS_WAIT: Duration = Duration::from_secs(20);
/// A keep-alive connection whose last request went out longer ago than
/// this is checked before reuse. A busy client (wrk) sends its next request
/// within a millisecond of the last; only a client thread this machine
/// starved (before it read the response, or after) takes longer.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The connection was refused (nothing listening, or the queue full).
    Refused,
    /// Reset by the server (ECONNRESET, EPIPE).
    Reset,
    /// Closed by the server before the whole response (EOF).
    Closed,
    Timeout,
    /// Answered with a status other than 200.
    BadStatus,
    Other,
}

impl Outcome {
    pub const FAILURES: [Outcome; 6] = [
        Outcome::Refused,
        Outcome::Reset,
        Outcome::Closed,
        Outcome::Timeout,
        Outcome::BadStatus,
        Outcome::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Closed => "closed",
            Outcome::Timeout => "timeout",
            Outcome::BadStatus => "bad status",
            Outcome::Other => "other",
        }
    }

    pub fn of(result: &io::Result<Response>) -> Outcome {
        match result {
            Ok(r) if r.status == 200 => Outcome::Ok,
            Ok(_) => Outcome::BadStatus,
            Err(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => Outcome::Refused,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => Outcome::Reset,
                io::ErrorKind::UnexpectedEof => Outcome::Closed,
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
                _ => Outcome::Other,
            },
        }
    }
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it started, after the load's epoch.
    pub start: Duration,
    pub latency: Duration,
    pub outcome: Outcome,
    /// The first request on a new connection (its latency includes the
    /// connect and the server's accept).
    pub fresh: bool,
}

impl Sample {
    pub fn end(&self) -> Duration {
        self.start + self.latency
    }
}

/// Everything a load run recorded.
#[derive(Debug, Default)]
pub struct Samples {
    /// Sorted by start.
    pub samples: Vec<Sample>,
    /// The first few failures' messages.
    pub errors: Vec<String>,
    /// Keep-alive connections found closed by the server before reuse, after
    /// sitting longer than a busy client leaves one, and replaced.
    pub idle_closed: u64,
}

impl Samples {
    pub fn ok(&self) -> u64 {
        self.count(Outcome::Ok)
    }

    pub fn failed(&self) -> u64 {
        self.samples.len() as u64 - self.ok()
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.samples.iter().filter(|s| s.outcome == outcome).count() as u64
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Samples>>,
    _gate: Gate,
}

/// One load at a time in this process (the tests run in parallel): two
/// saturating a 2-core machine starve each other's clients, a client
/// thread then waits longer than a server's drain grace to send its next
/// request on a keep-alive connection, and that looks like a lost request.
/// A thread that holds the gate may start more loads (two clients through
/// the same reloads): they share it.
pub struct Gate(#[allow(dead_code)] Option<MutexGuard<'static, ()>>);

thread_local! {
    /// How many gates this thread holds.
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Drop for Gate {
    fn drop(&mut self) {
        HELD.with(|held| held.set(held.get() - 1));
    }
}

/// Waits for the other loads of this process to end: at most `GATE_WAIT`,
/// long enough for every load a test suite queues ahead of this one.
pub fn gate() -> Gate {
    static RUNNING: Mutex<()> = Mutex::new(());
    if HELD.with(|held| held.replace(held.get() + 1)) > 0 {
        return Gate(None);
    }
    let deadline = Instant::now() + GATE_WAIT;
    loop {
        match RUNNING.try_lock() {
            Ok(guard) => return Gate(Some(guard)),
            // A test that failed while it held the gate: the load is over.
            Err(TryLockError::Poisoned(e)) => return Gate(Some(e.into_inner())),
            Err(TryLockError::WouldBlock) => {
                if Instant::now() >= deadline {
                    HELD.with(|held| held.set(held.get() - 1));
                    panic!("another load in this process never ended");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Load {
    /// `connections` threads, each on its own connection. Every request
    /// says `Connection: keep-alive` with `keep_alive`, else
    /// `Connection: close`; a keep-alive connection is reused whenever the
    /// response allows it.
    pub fn start(addr: SocketAddr, connections: usize, keep_alive: bool) -> Load {
        Load::start_at(addr, connections, keep_alive, Instant::now())
    }

    /// As `start`, with sample times counted from `epoch`.
    pub fn start_at(
        addr: SocketAddr,
        connections: usize,
        keep_alive: bool,
        epoch: Instant,
    ) -> Load {
        let gate = gate();
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let threads = (0..connections)
            .map(|_| {
                let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
                std::thread::spawn(move || run(addr, keep_alive, epoch, &stop, &ok))
            })
            .collect();
        Load {
            stop,
            ok,
            threads,
            _gate: gate,
        }
    }

    /// Successful requests so far, across threads.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` more requests have succeeded; panics if
    /// they do not (for tests).
    pub fn wait_for_more(&self, n: u64) {
        assert!(
            self.progressed(n, PROGRESS_WAIT),
            "the load made no progress ({} ok)",
            self.ok()
        );
    }

    /// Waits until `n` more requests have succeeded, or `within` passed;
    /// whether they did.
    pub fn progressed(&self, n: u64, within: Duration) -> bool {
        let target = self.ok() + n;
        let deadline = Instant::now() + within;
        while self.ok() < target {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    pub fn finish(self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Samples::default();
        for thread in self.threads {
            let samples = thread.join().expect("load thread panicked");
            all.samples.extend(samples.samples);
            all.errors.extend(samples.errors);
            all.idle_closed += samples.idle_closed;
        }
        all.errors.truncate(10);
        all.samples.sort_by_key(|s| s.start);
        all
    }
}

/// The server closed `conn` while this client was away: its last request
/// went out over [`IDLE_CHECK`] ago and the peer has closed. Checked as a
/// client pool checks (curl, hyper, browsers): a thread starved past a
/// server's idle grace would otherwise send on a connection the server
/// closed long before, a loss no real client sees. The response may have
/// waited in the socket as long as the thread did, so the time counts from
/// the request, not the response. A busy connection is not checked, as wrk
/// does not check, so a server that closes without saying so still fails
/// the next request.
fn closed_while_away(conn: &Conn<TcpStream>, asked_at: Instant) -> bool {
    asked_at.elapsed() >= IDLE_CHECK && conn.closed_by_server()
}

fn run(
    addr: SocketAddr,
    keep_alive: bool,
    epoch: Instant,
    stop: &AtomicBool,
    ok: &AtomicU64,
) -> Samples {
    let mut out = Samples::default();
    let mut conn = None;
    // When the connection's last request went out: a request that fails on
    // a reused connection says how long before it that was.
    let mut asked_at: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) && epoch.elapsed() < MAX_RUN {
        if let (Some(c), Some(at)) = (&conn, asked_at)
            && closed_while_away(c, at)
        {
            conn = None;
            out.idle_closed += 1;
        }
        let started = Instant::now();
        let fresh = conn.is_none();
        let last_asked = asked_at.replace(started);
        let result = (|| {
            if conn.is_none() {
                conn = Some(Conn::new(connect(addr)?)?);
            }
            conn.as_mut().expect("connected").request("/", !keep_alive)
        })();
        let outcome = Outcome::of(&result);
        out.samples.push(Sample {
            start: started - epoch,
            latency: started.elapsed(),
            outcome,
            fresh,
        });
        match &result {
            Ok(response) if outcome == Outcome::Ok => {
                ok.fetch_add(1, Ordering::SeqCst);
                // A client that said `Connection: close` sends nothing
                // more on the connection (RFC 9112, 9.6), whatever the
                // response says; otherwise it is reused while the response
                // allows, and a server that closes a keep-alive connection
                // without saying so fails the next request here.
                if !keep_alive || !response.reusable {
                    conn = None;
                }
            }
            _ => {
                conn = None;
                if out.errors.len() < 10 {
                    let error = match result {
                        Ok(response) => format!("status {}", response.status),
                        Err(e) => e.to_string(),
                    };
                    out.errors.push(match last_asked.filter(|_| !fresh) {
                        Some(at) => format!(
                            "{error} (at {} ms, on a connection whose last request went out {} ms before)",
                            (started - epoch).as_millis(),
                            started.saturating_duration_since(at).as_millis()
                        ),
                        None => format!("{error} (at {} ms)", (started - epoch).as_millis()),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};

    /// A server that answers one request with keep-alive and then closes,
    /// as a draining worker closes a connection left idle past its grace.
    #[test]
    fn a_connection_closed_while_its_client_was_away_is_not_reused_and_a_busy_one_is() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request).expect("request");
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .expect("response");
            stream.shutdown(Shutdown::Both).expect("close");
        });
        let mut conn = Conn::new(connect(addr).expect("connect")).expect("conn");
        let asked_at = Instant::now();
        assert!(conn.request("/", false).expect("response").reusable);
        server.join().expect("server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !conn.closed_by_server() {
            assert!(
                Instant::now() < deadline,
                "the server's close was never seen"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Away longer than a busy client ever is: replaced, not sent on.
        let long_ago = asked_at
            .checked_sub(IDLE_CHECK)
            .expect("a monotonic clock past 100 ms");
        assert!(closed_while_away(&conn, long_ago));
        // Sent on at once, as wrk would: not checked, so a server that
        // closes without saying so still fails the next request.
        assert!(!closed_while_away(&conn, Instant::now()));
        assert!(conn.request("/", false).is_err());
    }
}
