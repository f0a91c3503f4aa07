//! The traffic a question of `rcluster check` sends: the project's
//! HTTP/1.1 load (`load.rs`), or, for `--protocol tcp`, connections that
//! count once a worker has taken them; and a connection's first words.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Protocol;
use super::load::{Load, Outcome, Sample, Samples};

/// Connections each load phase keeps busy.
const CONNECTIONS: usize = 8;

/// The project's strict HTTP/1.1 client, or TCP connections.
pub(super) enum Traffic {
    Http(Load),
    Tcp(TcpLoad),
}

impl Traffic {
    pub(super) fn start(
        addr: SocketAddr,
        keep_alive: bool,
        protocol: Protocol,
        epoch: Instant,
        workers: Workers,
    ) -> Traffic {
        match protocol {
            Protocol::Http => Traffic::Http(Load::start_at(addr, CONNECTIONS, keep_alive, epoch)),
            Protocol::Tcp => Traffic::Tcp(TcpLoad::start(addr, epoch, workers)),
        }
    }

    pub(super) fn progressed(&self, n: u64, within: Duration) -> bool {
        match self {
            Traffic::Http(load) => load.progressed(n, within),
            Traffic::Tcp(load) => load.progressed(n, within),
        }
    }

    pub(super) fn finish(self) -> Samples {
        match self {
            Traffic::Http(load) => load.finish(),
            Traffic::Tcp(load) => load.finish(),
        }
    }
}

/// The workers alive, as the check's log reader keeps them.
pub(super) type Workers = Arc<Mutex<BTreeSet<i32>>>;

/// Connections to a TCP server that is not HTTP: each counts once a
/// worker took it from the queue (the kernel completes a handshake
/// whether or not anyone ever accepts), or failed.
pub(super) struct TcpLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<Sample>>>,
}

impl TcpLoad {
    fn start(addr: SocketAddr, epoch: Instant, workers: Workers) -> TcpLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let threads = (0..CONNECTIONS)
            .map(|_| {
                let (stop, ok, workers) =
                    (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&workers));
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let outcome = tcp_probe(addr, &workers);
                        if outcome == Outcome::Ok {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        samples.push(Sample {
                            start: started - epoch,
                            latency: started.elapsed(),
                            outcome,
                            fresh: true,
                        });
                    }
                    samples
                })
            })
            .collect();
        TcpLoad { stop, ok, threads }
    }

    fn progressed(&self, n: u64, within: Duration) -> bool {
        let target = self.ok.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + within;
        while self.ok.load(Ordering::SeqCst) < target {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    fn finish(self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        let mut samples: Vec<Sample> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        samples.sort_by_key(|s| s.start);
        Samples {
            samples,
            ..Samples::default()
        }
    }
}

/// What a new connection got first.
pub(super) enum Got {
    Refused,
    /// The connect itself did not complete in time.
    NoConnect,
    Closed,
    Reset,
    Bytes,
    Nothing,
}

/// Connects, sends `request`, and reads once within `within`.
pub(super) fn first_words(addr: SocketAddr, request: &[u8], within: Duration) -> Got {
    use std::io::ErrorKind;
    let mut stream = match TcpStream::connect_timeout(&addr, within.max(Duration::from_secs(1))) {
        Ok(stream) => stream,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Got::Refused,
        Err(_) => return Got::NoConnect,
    };
    let _ = stream.set_read_timeout(Some(within));
    // A write that fails shows as the read's error.
    let _ = stream.write_all(request);
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => Got::Closed,
        Ok(_) => Got::Bytes,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Got::Nothing,
        Err(_) => Got::Reset,
    }
}

/// How long a TCP probe waits for a worker to take its connection: long
/// beside an accept, and beside a probe's own thread kept from running by
/// a busy machine.
const ACCEPT_WAIT: Duration = Duration::from_secs(3);

/// Connects, and waits until a worker has taken the connection from the
/// queue (its process tree holds the server's end), or says something;
/// a connection closed or reset before that failed, and one nobody took
/// within [`ACCEPT_WAIT`] timed out.
pub(super) fn tcp_probe(addr: SocketAddr, workers: &Workers) -> Outcome {
    use std::io::ErrorKind;
    let stream = match TcpStream::connect_timeout(&addr, ACCEPT_WAIT) {
        Ok(stream) => stream,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(_) => return Outcome::Timeout,
    };
    let Ok(local) = stream.local_addr() else {
        return Outcome::Other;
    };
    let _ = stream.set_nonblocking(true);
    let deadline = Instant::now() + ACCEPT_WAIT;
    loop {
        let mut byte = [0u8; 1];
        match stream.peek(&mut byte) {
            Ok(0) => return Outcome::Closed,
            Ok(_) => return Outcome::Ok,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return Outcome::Reset,
        }
        let live: Vec<i32> = workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        if crate::control::holder::holder(addr, local, &live).is_some() {
            return Outcome::Ok;
        }
        if Instant::now() >= deadline {
            return Outcome::Timeout;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
