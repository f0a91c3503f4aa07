//! The load generator: one thread per connection, each requesting as fast
//! as the server answers, recording every request's start, latency and
//! outcome. `rcluster check` drives servers with it; the benchmark and the
//! integration tests use it too.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::http::{Conn, Response, connect};

/// No load runs longer than this, whatever its caller does.
const MAX_RUN: Duration = Duration::from_secs(300);
/// The longest [`gate`] waits.
const GATE_WAIT: Duration = Duration::from_secs(30 * 60);
/// How long `wait_for_more` waits for progress.
const PROGRESS_WAIT: Duration = Duration::from_secs(20);

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
    /// Not sent: the server closed the keep-alive connection it was meant
    /// for, one its last response let the client reuse, within the idle
    /// time the server stated (or stating none). wrk, which sends at once,
    /// fails its next request there.
    SilentClose,
    Other,
}

impl Outcome {
    pub const FAILURES: [Outcome; 7] = [
        Outcome::Refused,
        Outcome::Reset,
        Outcome::Closed,
        Outcome::SilentClose,
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
            Outcome::SilentClose => "closed while idle",
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

    /// Whether it ran at some point within `[from, to]`.
    pub fn overlaps(&self, (from, to): (Duration, Duration)) -> bool {
        self.start <= to && self.end() >= from
    }
}

/// Everything a load run recorded.
#[derive(Debug, Default)]
pub struct Samples {
    /// Sorted by start.
    pub samples: Vec<Sample>,
    /// The first few failures' messages.
    pub errors: Vec<String>,
    /// Keep-alive connections found closed by the server before reuse once
    /// the idle timeout it stated had passed (a client starved that long),
    /// and replaced: no failure, but shown beside the failures.
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
/// the same reloads): they share it. With `RCLUSTER_LOAD_GATE=FILE` (the
/// test suite sets it), the loads of every process that has it take turns
/// too, through a lock on that file: a test's and those of the
/// `rcluster check` it runs, which holds it only while it loads.
pub struct Gate {
    _turn: Option<(MutexGuard<'static, ()>, Option<Flock<File>>)>,
}

/// The variable naming the file whose lock the loads of several processes
/// take turns through.
pub const GATE_FILE: &str = "RCLUSTER_LOAD_GATE";

thread_local! {
    /// How many gates this thread holds.
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Drop for Gate {
    fn drop(&mut self) {
        HELD.with(|held| held.set(held.get() - 1));
    }
}

/// Waits for the other loads of this process (and, with
/// [`GATE_FILE`], of the others) to end: at most `GATE_WAIT`, long enough
/// for every load a test suite queues ahead of this one.
pub fn gate() -> Gate {
    static RUNNING: Mutex<()> = Mutex::new(());
    if HELD.with(|held| held.replace(held.get() + 1)) > 0 {
        return Gate { _turn: None };
    }
    let deadline = Instant::now() + GATE_WAIT;
    let given_up = || -> ! {
        HELD.with(|held| held.set(held.get() - 1));
        panic!("another load never ended");
    };
    let guard = loop {
        match RUNNING.try_lock() {
            Ok(guard) => break guard,
            // A test that failed while it held the gate: the load is over.
            Err(TryLockError::Poisoned(e)) => break e.into_inner(),
            Err(TryLockError::WouldBlock) if Instant::now() >= deadline => given_up(),
            Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let Some(path) = std::env::var_os(GATE_FILE) else {
        return Gate {
            _turn: Some((guard, None)),
        };
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{GATE_FILE}={}: {e}", path.to_string_lossy()));
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                return Gate {
                    _turn: Some((guard, Some(lock))),
                };
            }
            Err((_, _)) if Instant::now() >= deadline => given_up(),
            Err((again, _)) => {
                file = again;
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

/// What a client does with a keep-alive connection before it sends on it
/// again. It looks first, as pooled clients do (curl, hyper, browsers): a
/// non-blocking peek.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reuse {
    Send,
    /// The server closed it, but only after the idle timeout it stated had
    /// passed since this client's last request (a client thread starved
    /// that long): a client that honours the timeout would not send on it.
    Replace,
    /// The server closed a connection its last response let the client
    /// reuse, within the idle time it stated (or stating none): a failure,
    /// however long the response took. The server's idle time is at most
    /// the time since the request, so a close sooner than its timeout
    /// broke its word.
    SilentClose,
}

fn reuse(conn: &Conn<TcpStream>, asked_at: Instant, stated: Option<Duration>) -> Reuse {
    if !conn.closed_by_server() {
        return Reuse::Send;
    }
    match stated {
        Some(timeout) if asked_at.elapsed() > timeout => Reuse::Replace,
        _ => Reuse::SilentClose,
    }
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
    // When the connection's last request went out, and the idle timeout
    // its last response stated.
    let mut asked_at: Option<Instant> = None;
    let mut stated = None;
    while !stop.load(Ordering::SeqCst) && epoch.elapsed() < MAX_RUN {
        if let (Some(c), Some(at)) = (&conn, asked_at) {
            match reuse(c, at, stated) {
                Reuse::Send => {}
                Reuse::Replace => {
                    conn = None;
                    out.idle_closed += 1;
                }
                Reuse::SilentClose => {
                    conn = None;
                    let now = Instant::now();
                    let timeout = stated.map_or("it stated no idle timeout".into(), |t| {
                        format!("its stated idle timeout is {} s", t.as_secs())
                    });
                    out.note(format!(
                        "the server closed a keep-alive connection it had let the client reuse, \
                         without Connection: close, {} ms after its last request ({timeout}) \
                         (at {} ms)",
                        now.saturating_duration_since(at).as_millis(),
                        (now - epoch).as_millis()
                    ));
                    out.samples.push(Sample {
                        start: now - epoch,
                        latency: Duration::ZERO,
                        outcome: Outcome::SilentClose,
                        fresh: false,
                    });
                    continue;
                }
            }
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
                stated = response.idle_timeout;
                // A client that said `Connection: close` sends nothing
                // more on the connection (RFC 9112, 9.6), whatever the
                // response says; otherwise it is reused while the response
                // allows, and a server that closes a keep-alive connection
                // without saying so fails here.
                if !keep_alive || !response.reusable {
                    conn = None;
                }
            }
            _ => {
                conn = None;
                let error = match result {
                    Ok(response) => format!("status {}", response.status),
                    Err(e) => e.to_string(),
                };
                let at = (started - epoch).as_millis();
                out.note(match last_asked.filter(|_| !fresh) {
                    Some(last) => format!(
                        "{error} (at {at} ms, on a connection whose last request went out {} ms before)",
                        started.saturating_duration_since(last).as_millis()
                    ),
                    None => format!("{error} (at {at} ms)"),
                });
            }
        }
    }
    out
}

impl Samples {
    /// Keeps a failure's message, the first few only.
    fn note(&mut self, message: String) {
        if self.errors.len() < 10 {
            self.errors.push(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};

    /// A server that answers one request on a keep-alive connection, after
    /// `delay`, with `headers`, and then closes it without a word: as a
    /// draining worker closes a connection it let the client reuse.
    fn answered_then_closed(delay: Duration, headers: &'static str) -> Conn<TcpStream> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request).expect("request");
            std::thread::sleep(delay);
            let response = format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{headers}\r\nok");
            stream.write_all(response.as_bytes()).expect("response");
            stream.shutdown(Shutdown::Both).expect("close");
        });
        let mut conn = Conn::new(connect(addr).expect("connect")).expect("conn");
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
        conn
    }

    /// A slow response (150 ms, longer than the old 100 ms idle check),
    /// then a silent close: a failure, as wrk's next request on it would
    /// fail, not a connection quietly replaced.
    #[test]
    fn a_slow_response_then_a_silent_close_is_a_failure() {
        let asked_at = Instant::now();
        let conn = answered_then_closed(Duration::from_millis(150), "");
        assert_eq!(reuse(&conn, asked_at, None), Reuse::SilentClose);
        // Long after, too: it stated no idle timeout.
        let long_ago = asked_at.checked_sub(Duration::from_secs(5)).unwrap();
        assert_eq!(reuse(&conn, long_ago, None), Reuse::SilentClose);
    }

    /// A close after the idle timeout the server stated, counted from the
    /// client's last request: a client starved that long would not send on
    /// it, so it is replaced; within the timeout it is a failure.
    #[test]
    fn a_close_after_the_stated_idle_timeout_is_replaced() {
        let asked_at = Instant::now();
        let conn = answered_then_closed(Duration::ZERO, "Keep-Alive: timeout=1\r\n");
        let one = Some(Duration::from_secs(1));
        assert_eq!(reuse(&conn, asked_at, one), Reuse::SilentClose);
        let long_ago = asked_at.checked_sub(Duration::from_millis(1100)).unwrap();
        assert_eq!(reuse(&conn, long_ago, one), Reuse::Replace);
    }

    /// The loop as a client runs it: the silent close is a sample of its
    /// own, with a message, and a new connection serves the next request.
    #[test]
    fn the_load_counts_a_silent_close_and_goes_on() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Every connection: one slow answer, then a silent close.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request);
                std::thread::sleep(Duration::from_millis(120));
                // Corked, the answer and the close leave in one segment: the
                // client sees the close by the time it has read the answer.
                let _ = socket2::SockRef::from(&stream).set_tcp_cork(true);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                let _ = stream.shutdown(Shutdown::Both);
            }
        });
        let stop = AtomicBool::new(false);
        let ok = AtomicU64::new(0);
        let samples = std::thread::scope(|scope| {
            let load = scope.spawn(|| run(addr, true, Instant::now(), &stop, &ok));
            let deadline = Instant::now() + Duration::from_secs(10);
            while ok.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::SeqCst);
            load.join().expect("the load")
        });
        assert!(samples.ok() >= 3, "{samples:?}");
        assert!(samples.count(Outcome::SilentClose) >= 2, "{samples:?}");
        assert_eq!(samples.idle_closed, 0);
        assert!(
            samples.errors[0].contains("without Connection: close"),
            "{:?}",
            samples.errors
        );
    }
}
