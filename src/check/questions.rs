//! The questions `rcluster check` asks of a server running under it, one
//! function each: how its workers say ready, whether a crash heals,
//! whether reloads under load lose requests, whether a request in flight
//! survives its worker's stop, what a new connection gets during a stop,
//! and whether it binds a port of its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Protocol;
use super::child::Checked;
use super::load::{Load, Outcome};
use super::report::{Answer, Verdict};
use crate::vocab::human;

/// Connections each load phase keeps busy.
const CONNECTIONS: usize = 8;

/// A worker's exits in a row at start after which it is crash-looping.
const CRASH_LOOP: u64 = 5;

/// How long a worker seen on a port of its own has to say ready.
const OWN_PORT_GRACE: Duration = Duration::from_secs(3);

/// How long one reload may take: its new workers' start and its old
/// workers' drain (up to the default --ready-timeout and --stop-timeout).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(90);

/// A latency: tenths of a millisecond below ten.
fn short(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.1}ms", d.as_secs_f64() * 1000.0)
    } else {
        human(d)
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A record's time, from its `ts`.
fn at(record: &Value) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339(record["ts"].as_str()?).ok()
}

fn between(from: &Value, to: &Value) -> Duration {
    match (at(from), at(to)) {
        (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

/// Waits until the workers are ready: how they said so, and when. `Err`:
/// the server cannot be run (why).
pub fn start(checked: &mut Checked, deadline: Instant) -> Result<Answer, String> {
    let listening = checked.expect(deadline, |r| r["msg"] == "listening");
    checked.addr = listening
        .as_ref()
        .and_then(|r| r["addr"].as_str()?.parse().ok());
    let started = checked.seen(|r| r["msg"] == "started").pop();
    // A worker crash-looping at start is an answer already: waiting for
    // its fifth exit leaves time to see whether it listens on a port of
    // its own (after --min-uptime).
    let given_up = |r: &Value| {
        r["msg"] == "workers ready"
            || (r["msg"] == "worker exited" && r["attempt"].as_u64() >= Some(CRASH_LOOP))
    };
    let mut ready = checked.expect(deadline, |r| {
        given_up(r) || r["msg"] == "worker listens on its own port"
    });
    // A worker on a port of its own may serve on rcluster's too (an admin
    // port beside): a moment more to say ready.
    if ready
        .as_ref()
        .is_some_and(|r| r["msg"] == "worker listens on its own port")
    {
        ready = checked.expect(deadline.min(Instant::now() + OWN_PORT_GRACE), given_up);
    }
    let ready = ready.filter(|r| r["msg"] == "workers ready");
    let Some(ready) = ready else {
        return Err(why_not_ready(checked));
    };
    let startup = started.map_or(Duration::ZERO, |s| between(&s, &ready));
    let readies = checked.seen(|r| r["msg"] == "worker ready");
    let by: Vec<&str> = readies
        .iter()
        .filter_map(|r| r["ready_by"].as_str())
        .collect();
    let helper = readies
        .iter()
        .find(|r| r["sender"].is_i64() && r["sender"] != r["pid"]);
    let figures = json!({"ready_by": by, "startup_ms": ms(startup)});
    let after = human(startup);
    Ok(match by.first().copied().unwrap_or_default() {
        "READY=1" => {
            let from = match helper {
                Some(_) => " (sent by a helper process)".to_string(),
                None => String::new(),
            };
            Answer::new(
                "ready",
                Verdict::Good,
                format!("the workers said READY=1{from}; all ready {after} after start"),
            )
        }
        "listening" => Answer::new(
            "ready",
            Verdict::Notice,
            format!(
                "the workers say nothing; ready when the master saw them wait on their socket, \
                 {after} after start"
            ),
        )
        .fix(
            "say READY=1 once the server serves (sd_notify, or `rcluster notify --ready`; see \
             the recipes): ready as soon as it is, and a slow start may take its time",
        ),
        "min-uptime" => Answer::new(
            "ready",
            Verdict::Notice,
            format!(
                "the workers say nothing, and the master could not see them listen: ready only \
                 by the timer (--min-uptime), {after} after start"
            ),
        )
        .fix("say READY=1 once the server serves (see the recipes)"),
        other => Answer::new(
            "ready",
            Verdict::Notice,
            format!("ready by --ready {other}, {after} after start"),
        ),
    }
    .figures(figures))
}

/// Why no worker was ready: rcluster refused to start (its own line),
/// the workers listen elsewhere, or they keep exiting (the last one's
/// cause), or they say and do nothing.
fn why_not_ready(checked: &mut Checked) -> String {
    let exits = checked.seen(|r| r["msg"] == "worker exited");
    if checked.log_ended() {
        // Its stderr closes just before it exits: its code, not a guess.
        checked.wait_exit(Instant::now() + Duration::from_secs(5));
    }
    let own = checked.seen(|r| r["msg"] == "worker listens on its own port");
    match (checked.exited(), exits.last()) {
        (None, _) if !own.is_empty() => {
            "its workers listen on a port of their own, not on rcluster's socket".to_string()
        }
        (Some(code), _) => format!(
            "rcluster exited with code {code}: {}",
            checked.last_said().unwrap_or_default()
        ),
        (None, Some(exit)) => format!(
            "its workers exit at start ({} exits; the last said: {})",
            exits.len(),
            exit["last_line"].as_str().unwrap_or("nothing")
        ),
        (None, None) => "no worker was ready in time (does it serve on the socket at fd 3, \
                         LISTEN_FDS?)"
            .to_string(),
    }
}

/// Whether the workers listen on TCP ports of their own: harmless beside
/// rcluster's sockets (an admin or metrics port), the whole trouble when
/// they serve on nothing else (`serving`: they were ready on rcluster's).
pub fn own_port(checked: &Checked, serving: bool) -> Answer {
    let warnings = checked.seen(|r| r["msg"] == "worker listens on its own port");
    let Some(w) = warnings.first() else {
        return Answer::new(
            "own port",
            Verdict::Good,
            "the workers serve on rcluster's sockets only".into(),
        );
    };
    let ports = w["ports"].as_str().unwrap_or_default();
    let figures = json!({"ports": ports});
    if serving {
        return Answer::new(
            "own port",
            Verdict::Notice,
            format!(
                "the workers also listen on port {ports} of their own: fine for an admin or \
                 metrics port, but what comes in there bypasses rcluster"
            ),
        )
        .figures(figures);
    }
    Answer::new(
        "own port",
        Verdict::Bad,
        format!(
            "the workers listen on port {ports} of their own, not on rcluster's socket: nobody \
             reaches them through rcluster's address"
        ),
    )
    .fix("run it with --adopt-bind, or have it serve on fd 3 (LISTEN_FDS)")
    .figures(figures)
}

/// `kill -9` of a worker: how soon a replacement serves.
pub fn crash(checked: &Checked, protocol: Protocol) -> Answer {
    let Some(addr) = checked.addr else {
        return Answer::new(
            "crash",
            Verdict::NotChecked,
            "no TCP listener to ask".into(),
        );
    };
    let Some(&victim) = checked.ready().first() else {
        return Answer::new("crash", Verdict::NotChecked, "no worker to kill".into());
    };
    // Ready for longer than the default --min-uptime, so that its crash is
    // restarted at once, not backed off as a crash loop's would be.
    std::thread::sleep(Duration::from_millis(1100));
    let killed = Instant::now();
    // SAFETY: a worker of the master this check started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let deadline = killed + Duration::from_secs(15);
    let exited = checked.expect(deadline, |r| {
        r["msg"] == "worker exited" && r["pid"] == victim
    });
    let slot = exited.as_ref().map(|r| r["slot"].clone());
    let ready = checked.expect(deadline, |r| {
        r["msg"] == "worker ready" && Some(&r["slot"]) == slot.as_ref()
    });
    let served = ready.is_some() && probe_until(addr, protocol, deadline);
    match (exited, ready, served) {
        (Some(exited), Some(ready), true) => {
            let took = between(&exited, &ready);
            Answer::new(
                "crash",
                Verdict::Good,
                format!(
                    "kill -9 of a worker: its replacement was ready {} later, and served",
                    human(took)
                ),
            )
            .figures(json!({"replacement_ready_ms": ms(took)}))
        }
        _ => Answer::new(
            "crash",
            Verdict::Bad,
            format!(
                "kill -9 of a worker: no replacement served within {}",
                human(deadline - killed)
            ),
        ),
    }
}

/// One request (or, for TCP, one connection) answered before `deadline`.
fn probe_until(addr: SocketAddr, protocol: Protocol, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        let ok = match protocol {
            Protocol::Http => super::http::get(addr, "/").is_ok_and(|r| r.status < 500),
            Protocol::Tcp => tcp_probe(addr) == Outcome::Ok,
        };
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `reloads` reloads under load (keep-alive or `Connection: close`; for
/// TCP, a connection each): requests sent, answered and failed.
pub fn reloads(
    checked: &Checked,
    keep_alive: bool,
    reloads: usize,
    protocol: Protocol,
    budget: Duration,
) -> Answer {
    let question = match (protocol, keep_alive) {
        (Protocol::Tcp, _) => "reload",
        (Protocol::Http, true) => "reload keep-alive",
        (Protocol::Http, false) => "reload close",
    };
    let Some(addr) = checked.addr else {
        return Answer::new(
            question,
            Verdict::NotChecked,
            "no TCP listener to load".into(),
        );
    };
    let deadline = Instant::now() + budget;
    let load = Traffic::start(addr, keep_alive, protocol);
    let mut done = Vec::new();
    if load.progressed(20, Duration::from_secs(5)) {
        // The budget decides whether another reload starts (one that would
        // likely end past it does not), never how long one may take: a
        // reload cut short would be a failure of the check's, not of the
        // server's.
        let mut longest = Duration::ZERO;
        while done.len() < reloads && (done.is_empty() || Instant::now() + longest < deadline) {
            let started = Instant::now();
            done.push(checked.reload(RELOAD_TIMEOUT));
            longest = longest.max(started.elapsed());
            load.progressed(20, Duration::from_secs(2));
        }
    }
    let mut counts = load.finish();
    let (p50, p99) = (counts.latency(500), counts.latency(990));
    let aborted: Vec<String> = done
        .iter()
        .filter_map(|r| match r {
            Ok(answer) if answer["ok"] == true => None,
            Ok(answer) => Some(answer["error"].as_str().unwrap_or("aborted").to_string()),
            Err(e) => Some(format!("no answer: {e}")),
        })
        .collect();
    let mut took: Vec<u64> = done
        .iter()
        .filter_map(|r| r.as_ref().ok()?["duration_ms"].as_u64())
        .collect();
    took.sort_unstable();
    let figures = json!({
        "reloads": done.len(),
        "reload_ms": took,
        "sent": counts.sent,
        "answered": counts.ok,
        "failed": counts.failed(),
        "reset": counts.reset,
        "closed": counts.closed,
        "timeout": counts.timeout,
        "refused": counts.refused,
        "other": counts.other,
        "aborted": aborted,
        "latency_p50_ms": p50.map(|d| d.as_secs_f64() * 1000.0),
        "latency_p99_ms": p99.map(|d| d.as_secs_f64() * 1000.0),
    });
    let took_text = match (took.len(), took.get(took.len() / 2)) {
        (1, Some(&median)) => format!(" ({})", human(Duration::from_millis(median))),
        (_, Some(&median)) => format!(" ({} each)", human(Duration::from_millis(median))),
        (_, None) => String::new(),
    };
    let latency_text = match (p50, p99) {
        (Some(p50), Some(p99)) => format!("; latency p50 {}, p99 {}", short(p50), short(p99)),
        _ => String::new(),
    };
    let summary = format!(
        "{}{took_text} under load: {} sent, {} answered, {}{latency_text}",
        reloads_text(done.len()),
        counts.sent,
        counts.ok,
        counts.failures_text()
    );
    let verdict = if counts.failed() == 0 && aborted.is_empty() && !done.is_empty() {
        Verdict::Good
    } else {
        Verdict::Bad
    };
    let mut answer = Answer::new(question, verdict, summary).figures(figures);
    if let Some(why) = aborted.first() {
        answer
            .summary
            .push_str(&format!("; a reload did not complete: {why}"));
    } else if counts.ok == 0 {
        answer
            .summary
            .push_str("; nothing was answered (is it an HTTP server? try --protocol tcp)");
    }
    answer
}

fn reloads_text(n: usize) -> String {
    match n {
        1 => "1 reload".into(),
        n => format!("{n} reloads"),
    }
}

/// What a load counted.
#[derive(Debug, Default, Clone)]
struct Counts {
    /// The latencies of the answered requests (HTTP only).
    latencies: Vec<Duration>,
    sent: u64,
    ok: u64,
    reset: u64,
    closed: u64,
    timeout: u64,
    refused: u64,
    other: u64,
}

impl Counts {
    fn failed(&self) -> u64 {
        self.sent - self.ok
    }

    /// The latency under which `per_mille` of the answered requests came.
    fn latency(&mut self, per_mille: usize) -> Option<Duration> {
        self.latencies.sort_unstable();
        let at =
            (self.latencies.len() * per_mille / 1000).min(self.latencies.len().checked_sub(1)?);
        Some(self.latencies[at])
    }

    fn failures_text(&self) -> String {
        if self.failed() == 0 {
            return "0 failed".into();
        }
        let kinds: Vec<String> = [
            (self.reset, "reset"),
            (self.closed, "closed without an answer"),
            (self.timeout, "timed out"),
            (self.refused, "refused"),
            (self.other, "other"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        format!("{} failed ({})", self.failed(), kinds.join(", "))
    }

    fn add(&mut self, outcome: Outcome) {
        self.sent += 1;
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Reset => self.reset += 1,
            Outcome::Closed => self.closed += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::BadStatus | Outcome::Other => self.other += 1,
        }
    }
}

/// The project's strict HTTP/1.1 client, or TCP connections.
enum Traffic {
    Http(Load),
    Tcp(TcpLoad),
}

impl Traffic {
    fn start(addr: SocketAddr, keep_alive: bool, protocol: Protocol) -> Traffic {
        match protocol {
            Protocol::Http => Traffic::Http(Load::start(addr, CONNECTIONS, keep_alive)),
            Protocol::Tcp => Traffic::Tcp(TcpLoad::start(addr)),
        }
    }

    fn progressed(&self, n: u64, within: Duration) -> bool {
        match self {
            Traffic::Http(load) => load.progressed(n, within),
            Traffic::Tcp(load) => load.progressed(n, within),
        }
    }

    fn finish(self) -> Counts {
        let mut counts = Counts::default();
        match self {
            Traffic::Http(load) => {
                for sample in load.finish().samples {
                    counts.add(sample.outcome);
                    if sample.outcome == Outcome::Ok {
                        counts.latencies.push(sample.latency);
                    }
                }
            }
            Traffic::Tcp(load) => {
                for outcome in load.finish() {
                    counts.add(outcome);
                }
            }
        }
        counts
    }
}

/// Connections to a TCP server that is not HTTP: each is accepted and not
/// closed at once (the server waits for input), or it failed.
struct TcpLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<Outcome>>>,
}

impl TcpLoad {
    fn start(addr: SocketAddr) -> TcpLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let threads = (0..CONNECTIONS)
            .map(|_| {
                let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
                std::thread::spawn(move || {
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let outcome = tcp_probe(addr);
                        if outcome == Outcome::Ok {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        outcomes.push(outcome);
                    }
                    outcomes
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

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    }
}

/// What a new connection got first.
enum Got {
    Refused,
    /// The connect itself did not complete in time.
    NoConnect,
    Closed,
    Reset,
    Bytes,
    Nothing,
}

/// Connects, sends `request`, and reads once within `within`.
fn first_words(addr: SocketAddr, request: &[u8], within: Duration) -> Got {
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

/// Connects, and waits a moment: a server that waits for input (or says
/// something) took the connection; one that closes or resets it did not.
fn tcp_probe(addr: SocketAddr) -> Outcome {
    match first_words(addr, b"", Duration::from_millis(50)) {
        Got::Refused => Outcome::Refused,
        Got::NoConnect => Outcome::Timeout,
        Got::Closed => Outcome::Closed,
        Got::Reset => Outcome::Reset,
        Got::Bytes | Got::Nothing => Outcome::Ok,
    }
}

/// A request sent but for its last line, held by a known worker: in
/// flight when that worker is told to stop.
struct InFlight {
    stream: TcpStream,
    worker: i32,
}

/// Opens connections with a request all but sent, and finds the worker
/// holding each (through `/proc`); a few tries, as workers accept. One that
/// an earlier generation's worker took, in the moment between being told
/// to drain and its listeners closing, is closed: that worker is not the
/// one the next stop tells, and it would drain until this request ends.
fn in_flight(checked: &Checked, addr: SocketAddr) -> Vec<InFlight> {
    let ready = checked.ready();
    let workers = checked.live();
    let mut held = Vec::new();
    for _ in 0..(workers.len() * 2).max(2) {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        if stream
            .write_all(b"GET / HTTP/1.1\r\nHost: rcluster-check\r\nConnection: close\r\n")
            .is_err()
        {
            continue;
        }
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Some(worker) = super::sockets::holder(addr, local, &workers) {
                if ready.contains(&worker) {
                    held.push(InFlight { stream, worker });
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    held
}

/// What became of the requests held in flight: answered, or how not.
#[derive(Default)]
struct Finished {
    sent: usize,
    answered: usize,
    /// Closed without an answer (the worker exited, or closed it).
    closed: usize,
    reset: usize,
    timeout: usize,
}

/// Sends the last line of each request held by `worker`, and reads the
/// answers.
fn finish_requests(held: &mut Vec<InFlight>, worker: i32, tally: &mut Finished) {
    use std::io::ErrorKind;
    held.retain_mut(|f| {
        if f.worker != worker {
            return true;
        }
        tally.sent += 1;
        let mut answer = Vec::new();
        let _ = f.stream.write_all(b"\r\n");
        match f.stream.read_to_end(&mut answer) {
            Ok(_) if answer.starts_with(b"HTTP/1.") => tally.answered += 1,
            Ok(_) => tally.closed += 1,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                tally.timeout += 1
            }
            Err(_) => tally.reset += 1,
        }
        false
    });
}

/// A request in flight in each old worker when a reload (or, with `stop`,
/// a graceful stop) tells it to stop: answered?
pub fn drain(checked: &Checked, stop: bool, protocol: Protocol) -> Answer {
    let question = if stop {
        "drain on stop"
    } else {
        "drain on reload"
    };
    let (Protocol::Http, Some(addr)) = (protocol, checked.addr) else {
        return Answer::new(
            question,
            Verdict::NotChecked,
            "only for HTTP servers".into(),
        );
    };
    let mut held = in_flight(checked, addr);
    if held.is_empty() {
        return Answer::new(
            question,
            Verdict::NotChecked,
            "no connection could be placed on a worker".into(),
        );
    }
    let request = if stop {
        json!({"cmd": "stop"})
    } else {
        json!({"cmd": "reload"})
    };
    checked.skip_unread();
    let _ = checked.ask(request, Duration::from_secs(5));
    let mut tally = Finished::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(first) = held.first() {
        // Each request is finished once its worker was told to stop; one
        // whose worker was not within the deadline, then.
        let pid = match checked.expect(deadline, |r| r["msg"] == "worker draining") {
            Some(draining) => draining["pid"].as_i64().unwrap_or_default() as i32,
            None => first.worker,
        };
        finish_requests(&mut held, pid, &mut tally);
    }
    let (answered, total) = (tally.answered, tally.sent);
    let figures = json!({
        "in_flight": total,
        "answered": answered,
        "closed": tally.closed,
        "reset": tally.reset,
        "timeout": tally.timeout,
    });
    let when = if stop { "a graceful stop" } else { "a reload" };
    if total > 0 && answered == total {
        Answer::new(
            question,
            Verdict::Good,
            format!("{answered} of {total} requests in flight when {when} told their worker to stop were answered"),
        )
        .figures(figures)
    } else if total == 0 {
        Answer::new(
            question,
            Verdict::NotChecked,
            format!("no worker holding a request was stopped by {when}"),
        )
    } else {
        Answer::new(
            question,
            Verdict::Bad,
            format!(
                "{} of {total} requests in flight when {when} told their worker to stop got no answer: \
                 it exits, or closes connections, without finishing them",
                total - answered
            ),
        )
        .figures(figures)
    }
}

/// During a graceful stop (already asked for): what a new connection gets,
/// every 50 ms until the master exits (or 5 s).
pub fn during_stop(checked: &mut Checked, protocol: Protocol) -> Answer {
    let question = "new conn on stop";
    let Some(addr) = checked.addr else {
        return Answer::new(question, Verdict::NotChecked, "no TCP listener".into());
    };
    let (mut refused, mut closed, mut served, mut hung) = (0, 0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && checked.exited().is_none() {
        let asked = Instant::now();
        match protocol {
            Protocol::Http => match answer_within(addr, Duration::from_secs(1)) {
                Ask::Refused => refused += 1,
                Ask::Closed => closed += 1,
                Ask::Served => served += 1,
                Ask::Hung => hung += 1,
            },
            Protocol::Tcp => match tcp_probe(addr) {
                Outcome::Refused => refused += 1,
                _ => served += 1,
            },
        }
        std::thread::sleep(Duration::from_millis(50).saturating_sub(asked.elapsed()));
    }
    let figures = json!({"refused": refused, "closed": closed, "served": served, "hung": hung});
    let summary = format!(
        "{refused} refused at once, {closed} closed at once, {served} served, {hung} left \
         hanging"
    );
    if hung == 0 {
        Answer::new(question, Verdict::Good, summary).figures(figures)
    } else {
        Answer::new(question, Verdict::Bad, summary)
            .fix("the workers keep their listening socket open without accepting while they drain: close it on the stop signal (or run with --http-drain)")
            .figures(figures)
    }
}

enum Ask {
    Refused,
    /// Closed or reset without an answer: a client knows at once.
    Closed,
    Served,
    Hung,
}

/// One request on a new connection: refused, closed, answered, or no word
/// within `within`.
fn answer_within(addr: SocketAddr, within: Duration) -> Ask {
    let request = b"GET / HTTP/1.1\r\nHost: rcluster-check\r\nConnection: close\r\n\r\n";
    match first_words(addr, request, within) {
        Got::Refused => Ask::Refused,
        Got::Closed | Got::Reset => Ask::Closed,
        Got::Bytes => Ask::Served,
        Got::NoConnect | Got::Nothing => Ask::Hung,
    }
}
