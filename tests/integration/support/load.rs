//! A load generator for tests: threads that request continuously, counting
//! every request that did not get a 200, until told to stop.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{Conn, Response, connect};

/// No load runs longer than this, whatever the test does.
const MAX_RUN: Duration = Duration::from_secs(180);

#[derive(Debug, Default)]
pub struct Stats {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, for the assertion message.
    pub errors: Vec<String>,
    pub pids: BTreeSet<i32>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Stats>>,
}

impl Load {
    /// `connections` threads, each on its own connection; `keep_alive`
    /// reuses a connection until the server says `Connection: close`.
    pub fn start(addr: SocketAddr, connections: usize, keep_alive: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let threads = (0..connections)
            .map(|_| {
                let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
                std::thread::spawn(move || run(addr, keep_alive, &stop, &ok))
            })
            .collect();
        Load { stop, ok, threads }
    }

    /// Successful requests so far, across threads.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` more requests have succeeded.
    pub fn wait_for_more(&self, n: u64) {
        let target = self.ok() + n;
        let done = super::wait_until(super::WAIT, || self.ok() >= target);
        assert!(done, "the load made no progress ({} ok)", self.ok());
    }

    pub fn finish(self) -> Stats {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Stats::default();
        for thread in self.threads {
            let stats = thread.join().expect("load thread panicked");
            total.ok += stats.ok;
            total.failed += stats.failed;
            total.pids.extend(stats.pids);
            for e in stats.errors {
                if total.errors.len() < 10 {
                    total.errors.push(e);
                }
            }
        }
        total
    }
}

fn run(addr: SocketAddr, keep_alive: bool, stop: &AtomicBool, ok: &AtomicU64) -> Stats {
    let mut stats = Stats::default();
    let started = Instant::now();
    let mut conn = None;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < MAX_RUN {
        let result = (|| {
            if conn.is_none() {
                conn = Some(Conn::new(connect(addr)?)?);
            }
            conn.as_mut().unwrap().request("/", !keep_alive)
        })();
        match result {
            Ok(Response {
                status: 200, close, ..
            }) if close || !keep_alive => {
                conn = None;
                record_ok(&mut stats, &result, ok);
            }
            Ok(Response { status: 200, .. }) => record_ok(&mut stats, &result, ok),
            Ok(response) => {
                conn = None;
                fail(&mut stats, format!("status {}", response.status));
            }
            Err(e) => {
                conn = None;
                fail(&mut stats, e.to_string());
            }
        }
    }
    stats
}

fn record_ok(stats: &mut Stats, result: &std::io::Result<Response>, ok: &AtomicU64) {
    stats.ok += 1;
    ok.fetch_add(1, Ordering::SeqCst);
    if let Ok(Some(pid)) = result.as_ref().map(Response::pid) {
        stats.pids.insert(pid);
    }
}

fn fail(stats: &mut Stats, error: String) {
    stats.failed += 1;
    if stats.errors.len() < 10 {
        stats.errors.push(error);
    }
}
