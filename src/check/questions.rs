//! The questions `rcluster check` asks of a server running under it, one
//! function each: how its workers say ready, whether a crash heals,
//! whether a request in flight survives its worker's stop, what a new
//! connection gets during a stop, and whether it binds a port of its own.
//! The reloads under load have a file of their own (`reloads.rs`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Protocol;
use super::child::Checked;
use super::load::Outcome;
use super::report::{Answer, Verdict};
use super::traffic::{Got, Workers, first_words, tcp_probe};
use crate::vocab::human;

/// A worker's exits in a row at start after which it is crash-looping.
const CRASH_LOOP: u64 = 5;

/// How long a worker seen on a port of its own has to say ready.
const OWN_PORT_GRACE: Duration = Duration::from_secs(3);

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
/// the workers listen elsewhere, fail their `--probe`, or keep exiting
/// (the last one's cause), or they say and do nothing.
fn why_not_ready(checked: &mut Checked) -> String {
    let exits = checked.seen(|r| r["msg"] == "worker exited");
    if checked.log_ended() {
        // Its stderr closes just before it exits: its code, not a guess.
        checked.wait_exit(Instant::now() + Duration::from_secs(5));
    }
    let own = checked.seen(|r| r["msg"] == "worker listens on its own port");
    let probes = checked.seen(|r| r["msg"] == "probe failed");
    match (checked.exited(), exits.last()) {
        (None, _) if !own.is_empty() => {
            "its workers listen on a port of their own, not on rcluster's socket".to_string()
        }
        (None, _) if !probes.is_empty() => format!(
            "its workers fail their probe, so none is ever ready ({} failures; the last: {})",
            probes.len(),
            probes[probes.len() - 1]["cause"].as_str().unwrap_or("?")
        ),
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
    let workers = checked.live_set();
    let served = ready.is_some() && probe_until(addr, protocol, &workers, deadline);
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
fn probe_until(addr: SocketAddr, protocol: Protocol, workers: &Workers, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        let ok = match protocol {
            Protocol::Http => super::http::get(addr, "/").is_ok_and(|r| r.status < 500),
            Protocol::Tcp => tcp_probe(addr, workers) == Outcome::Ok,
        };
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
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
            if let Some(worker) = crate::control::holder::holder(addr, local, &workers) {
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
        // The stop is asked all the same: what a new connection gets
        // during it is the next question.
        if stop {
            let _ = checked.ask(json!({"cmd": "stop"}), Duration::from_secs(5));
        }
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
    let told = |pid: i32| {
        let told = checked.seen(|r| r["msg"] == "worker draining" && r["pid"] == pid);
        !told.is_empty()
    };
    while let Some(first) = held.first() {
        // Each request is finished once its worker was told to stop; one
        // whose worker was not within the deadline, then. A worker told
        // before the question was asked (the last reload's old worker,
        // still serving as the requests were placed, replaced since) has
        // its record in the past: waiting for a new one would hold its
        // request until --stop-timeout killed it.
        let before = held.iter().map(|f| f.worker).find(|&pid| told(pid));
        let pid = match before {
            Some(pid) => pid,
            None => match checked.expect(deadline, |r| r["msg"] == "worker draining") {
                Some(draining) => draining["pid"].as_i64().unwrap_or_default() as i32,
                None => first.worker,
            },
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
/// every 50 ms until the master exits (or 5 s). Refused is good (a client
/// knows at once, and may go elsewhere); closed without an answer is not
/// (a client that does not retry, a POST, has failed), nor is left
/// hanging.
pub fn during_stop(checked: &mut Checked, protocol: Protocol) -> Answer {
    let question = "new conn on stop";
    let Some(addr) = checked.addr else {
        return Answer::new(question, Verdict::NotChecked, "no TCP listener".into());
    };
    let workers = checked.live_set();
    let (mut refused, mut closed, mut served, mut hung) = (0, 0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    // At least one connection, even if the stop was over before the first:
    // what it gets then (refused) is what a client would get.
    loop {
        let asked = Instant::now();
        match protocol {
            Protocol::Http => match answer_within(addr, Duration::from_secs(1)) {
                Ask::Refused => refused += 1,
                Ask::Closed => closed += 1,
                Ask::Served => served += 1,
                Ask::Hung => hung += 1,
            },
            // The probe sends nothing: a reset is the kernel's, for a
            // connection still in the queue as the last listening socket
            // closed (an accepted one is closed with a FIN). No process
            // had it: refused, as a client sees it, and a race no server
            // can close (a SYN may land the instant before the close).
            Protocol::Tcp => match tcp_probe(addr, &workers) {
                Outcome::Refused | Outcome::Reset => refused += 1,
                Outcome::Ok => served += 1,
                Outcome::Closed => closed += 1,
                _ => hung += 1,
            },
        }
        if Instant::now() >= deadline || checked.exited().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50).saturating_sub(asked.elapsed()));
    }
    let figures = json!({"refused": refused, "closed": closed, "served": served, "hung": hung});
    let summary = format!(
        "{refused} refused at once, {closed} closed at once, {served} served, {hung} left \
         hanging"
    );
    if hung > 0 {
        Answer::new(question, Verdict::Bad, summary)
            .fix("the workers keep their listening socket open without accepting while they drain: close it on the stop signal")
            .figures(figures)
    } else if closed > 0 {
        Answer::new(question, Verdict::Bad, summary)
            .fix("the workers accept new connections during the stop and close them unanswered: stop accepting and close the listening socket on the stop signal, so that they are refused")
            .figures(figures)
    } else {
        Answer::new(question, Verdict::Good, summary).figures(figures)
    }
}

enum Ask {
    Refused,
    /// Closed or reset without an answer.
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
