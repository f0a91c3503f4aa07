//! The reload question of `rcluster check`: reloads under load, each
//! measured until every worker it replaced has exited, and judged on what
//! a client saw (failures, latency during the reloads beside outside them)
//! and on how each replaced worker ended.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Protocol;
use super::child::Checked;
use super::load::{Outcome, Sample, Samples};
use super::report::{Answer, Verdict};
use super::traffic::Traffic;
use crate::vocab::human;

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

/// `reloads` reloads under load (keep-alive or `Connection: close`; for
/// TCP, a connection each). Each reload's window runs from its request
/// until every worker it replaced has exited, so what happens at the end
/// of a drain is under load too. Bad: a request failed (a connection
/// closed while idle without `Connection: close` is a failure, as it is
/// under wrk), a reload did not complete, a replaced worker was killed at
/// `--stop-timeout` or did not exit cleanly, or requests waited much
/// longer during the reloads than outside them.
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
    let epoch = Instant::now();
    let load = Traffic::start(addr, keep_alive, protocol, epoch, checked.live_set());
    let mut run = Run::default();
    if load.progressed(20, Duration::from_secs(5)) {
        // A moment of steady load first: what "outside the reloads" is
        // measured on, with the gaps between them.
        std::thread::sleep(BASELINE);
        // The budget decides whether another reload starts (one that would
        // likely end past it does not), never how long one may take: a
        // reload cut short would be a failure of the check's, not of the
        // server's.
        let mut longest = Duration::ZERO;
        while run.done.len() < reloads
            && (run.done.is_empty() || Instant::now() + longest < deadline)
        {
            let before = checked.live();
            let from = epoch.elapsed();
            let answer = checked.reload(RELOAD_TIMEOUT);
            if let Some(generation) = answer.as_ref().ok().and_then(|a| a["generation"].as_u64()) {
                let until = Instant::now() + RELOAD_TIMEOUT;
                run.exits
                    .extend(checked.drained_exits(generation, &before, until));
            }
            let to = epoch.elapsed();
            run.windows.push((from, to));
            longest = longest.max(to - from);
            run.done.push(answer);
            load.progressed(20, Duration::from_secs(2));
        }
    }
    run.samples = load.finish();
    run.answer(question, protocol)
}

/// How long a load runs before the first reload.
const BASELINE: Duration = Duration::from_millis(300);
/// A request that waited longer than this during a reload is a bad answer.
const TOO_SLOW: Duration = Duration::from_secs(1);
/// A p99 during the reloads more than this many times the p99 outside
/// them (and above `NOTICEABLE`) is a bad answer.
const P99_RATIO: u32 = 3;
const NOTICEABLE: Duration = Duration::from_millis(10);

/// What one phase of reloads saw.
#[derive(Default)]
struct Run {
    /// Each reload's answer.
    done: Vec<Result<Value, String>>,
    /// Each reload's window: from its request to its replaced workers'
    /// exit, after the load's start.
    windows: Vec<(Duration, Duration)>,
    /// The replaced workers' exit records.
    exits: Vec<Value>,
    samples: Samples,
}

/// Latencies of answered requests: how many, p50, p99, the longest.
#[derive(Debug, Clone, Copy, Default)]
struct Spread {
    count: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Spread {
    fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> Spread {
        let mut latencies: Vec<Duration> = samples
            .filter(|s| s.outcome == Outcome::Ok)
            .map(|s| s.latency)
            .collect();
        latencies.sort_unstable();
        let Some(&max) = latencies.last() else {
            return Spread::default();
        };
        let at = |per_mille: usize| {
            latencies[(latencies.len() * per_mille / 1000).min(latencies.len() - 1)]
        };
        Spread {
            count: latencies.len(),
            p50: at(500),
            p99: at(990),
            max,
        }
    }

    fn json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        json!({"requests": self.count, "p50_ms": ms(self.p50), "p99_ms": ms(self.p99), "max_ms": ms(self.max)})
    }
}

/// What a phase of reloads came to, worked out once for the verdict, the
/// figures and the line.
struct Judged {
    sent: usize,
    answered: usize,
    during: Spread,
    outside: Spread,
    aborted: Vec<String>,
    killed: Vec<i64>,
    unclean: Vec<(i64, String)>,
    /// Why the answer is bad, beside failed requests.
    bad: Vec<String>,
}

impl Run {
    fn answer(&self, question: &'static str, protocol: Protocol) -> Answer {
        let judged = self.judge(protocol);
        let failed = judged.sent - judged.answered;
        let verdict = if failed == 0 && judged.bad.is_empty() && !self.done.is_empty() {
            Verdict::Good
        } else {
            Verdict::Bad
        };
        let mut summary = self.summary(&judged, protocol);
        if verdict == Verdict::Bad && judged.answered == 0 && protocol == Protocol::Http {
            summary.push_str("; nothing was answered (is it an HTTP server? try --protocol tcp)");
        }
        let answer = Answer::new(question, verdict, summary).figures(self.figures(&judged));
        match self.fix(&judged) {
            Some(fix) if verdict == Verdict::Bad => answer.fix(fix),
            _ => answer,
        }
    }

    fn count(&self, outcome: Outcome) -> usize {
        let samples = &self.samples.samples;
        samples.iter().filter(|s| s.outcome == outcome).count()
    }

    fn judge(&self, protocol: Protocol) -> Judged {
        let samples = &self.samples.samples;
        let (during, outside): (Vec<&Sample>, Vec<&Sample>) = samples
            .iter()
            .partition(|s| self.windows.iter().any(|w| s.overlaps(*w)));
        let (during, outside) = (
            Spread::of(during.into_iter()),
            Spread::of(outside.into_iter()),
        );
        let aborted: Vec<String> = self
            .done
            .iter()
            .filter_map(|r| match r {
                Ok(answer) if answer["ok"] == true => None,
                Ok(answer) => Some(answer["error"].as_str().unwrap_or("aborted").to_string()),
                Err(e) => Some(format!("no answer: {e}")),
            })
            .collect();
        let (killed, unclean) = judge_exits(&self.exits);
        let mut bad: Vec<String> = Vec::new();
        if let Some(why) = aborted.first() {
            bad.push(format!("a reload did not complete: {why}"));
        }
        bad.extend(killed.iter().map(|pid| {
            format!(
                "replaced worker {pid} was still draining at --stop-timeout and was killed: \
                 what it held was lost"
            )
        }));
        bad.extend(unclean.iter().map(|(pid, how)| {
            format!(
                "replaced worker {pid} did not exit cleanly while draining ({how}): requests \
                 in flight were probably lost"
            )
        }));
        if protocol == Protocol::Http {
            bad.extend(slow_reloads(&during, &outside));
        }
        Judged {
            sent: samples.len(),
            answered: self.count(Outcome::Ok),
            during,
            outside,
            aborted,
            killed,
            unclean,
            bad,
        }
    }

    fn window_ms(&self) -> Vec<u64> {
        let windows = self.windows.iter();
        windows.map(|(a, b)| (*b - *a).as_millis() as u64).collect()
    }

    fn figures(&self, judged: &Judged) -> Value {
        let mut took: Vec<u64> = self
            .done
            .iter()
            .filter_map(|r| r.as_ref().ok()?["duration_ms"].as_u64())
            .collect();
        took.sort_unstable();
        let unclean: Vec<Value> = judged
            .unclean
            .iter()
            .map(|(pid, how)| json!({"pid": pid, "exit": how}))
            .collect();
        json!({
            "reloads": self.done.len(),
            "reload_ms": took,
            "window_ms": self.window_ms(),
            "sent": judged.sent,
            "answered": judged.answered,
            "failed": judged.sent - judged.answered,
            "reset": self.count(Outcome::Reset),
            "closed": self.count(Outcome::Closed),
            "closed_while_idle": self.count(Outcome::SilentClose),
            "timeout": self.count(Outcome::Timeout),
            "refused": self.count(Outcome::Refused),
            "other": self.count(Outcome::Other) + self.count(Outcome::BadStatus),
            "idle_replaced": self.samples.idle_closed,
            "aborted": judged.aborted,
            "killed_at_stop_timeout": judged.killed,
            "unclean_exits": unclean,
            "during_reloads": judged.during.json(),
            "outside_reloads": judged.outside.json(),
        })
    }

    fn summary(&self, judged: &Judged, protocol: Protocol) -> String {
        let (sent, answered) = (judged.sent, judged.answered);
        let mut summary = format!(
            "{} under load, each until its replaced workers exited ({}): {sent} sent, \
             {answered} answered, {}",
            reloads_text(self.done.len()),
            window_text(&self.window_ms()),
            failures_text(&self.samples.samples, sent - answered),
        );
        if self.samples.idle_closed > 0 {
            summary.push_str(&format!(
                " ({} idle connections replaced after the server's stated idle timeout)",
                self.samples.idle_closed
            ));
        }
        let (during, outside) = (&judged.during, &judged.outside);
        if protocol == Protocol::Http && during.count > 0 {
            summary.push_str(&format!(
                "; latency during reloads p50 {}, p99 {}, max {}; outside p99 {}",
                short(during.p50),
                short(during.p99),
                short(during.max),
                short(outside.p99)
            ));
        }
        for why in &judged.bad {
            summary.push_str("; ");
            summary.push_str(why);
        }
        summary
    }

    /// What the server would change, for what the question knows the cause of.
    fn fix(&self, judged: &Judged) -> Option<&'static str> {
        if !judged.killed.is_empty() {
            Some(
                "once told to stop, say Connection: close on each connection's next response \
                 and close it, so that the drain ends within --stop-timeout",
            )
        } else if !judged.unclean.is_empty() {
            Some("on the stop signal, stop accepting, finish the requests in flight, then exit 0")
        } else if self.count(Outcome::SilentClose) > 0 {
            Some("say Connection: close on the last response of a connection the server will close")
        } else {
            None
        }
    }
}

/// Of the replaced workers' exits: those killed at `--stop-timeout`, and
/// those that did not end cleanly (an exit code other than 0, or their
/// stop signal's default action) and were not drained by the shim.
fn judge_exits(exits: &[Value]) -> (Vec<i64>, Vec<(i64, String)>) {
    let mut killed = Vec::new();
    let mut unclean = Vec::new();
    for exit in exits {
        let pid = exit["pid"].as_i64().unwrap_or_default();
        if exit["killed_by_rcluster"] == true {
            killed.push(pid);
        } else if exit["code"] != 0 && exit["drained"] != true {
            let how = match exit["signal"].as_str() {
                Some(signal) => format!("killed by {signal}"),
                None => format!("exit code {}", exit["code"]),
            };
            unclean.push((pid, how));
        }
    }
    (killed, unclean)
}

/// What is wrong with the latency during the reloads, beside outside.
fn slow_reloads(during: &Spread, outside: &Spread) -> Option<String> {
    let waited = format!(
        "during reloads requests waited up to {} (p99 {}); outside, p99 {}",
        short(during.max),
        short(during.p99),
        short(outside.p99)
    );
    let ratio_bad = during.p99 > NOTICEABLE && during.p99 > outside.p99 * P99_RATIO;
    (during.max > TOO_SLOW || ratio_bad).then_some(waited)
}

fn window_text(window_ms: &[u64]) -> String {
    let mut sorted = window_ms.to_vec();
    sorted.sort_unstable();
    match sorted.get(sorted.len() / 2) {
        Some(&median) if sorted.len() == 1 => human(Duration::from_millis(median)),
        Some(&median) => format!("{} each", human(Duration::from_millis(median))),
        None => "none".into(),
    }
}

fn reloads_text(n: usize) -> String {
    match n {
        1 => "1 reload".into(),
        n => format!("{n} reloads"),
    }
}

/// "0 failed", or "3 failed (2 reset, 1 closed while idle …)".
fn failures_text(samples: &[Sample], failed: usize) -> String {
    if failed == 0 {
        return "0 failed".into();
    }
    let kinds: Vec<String> = Outcome::FAILURES
        .iter()
        .map(|&o| (samples.iter().filter(|s| s.outcome == o).count(), o))
        .filter(|(n, _)| *n > 0)
        .map(|(n, o)| format!("{n} {}", describe(o)))
        .collect();
    format!("{failed} failed ({})", kinds.join(", "))
}

fn describe(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Reset => "reset",
        Outcome::Closed => "closed without an answer",
        Outcome::SilentClose => {
            "keep-alive connections closed while idle without Connection: close"
        }
        Outcome::Timeout => "timed out, or never taken by a worker",
        Outcome::Refused => "refused",
        Outcome::BadStatus => "answered with an error status",
        Outcome::Ok | Outcome::Other => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ok(start_ms: u64, latency: Duration) -> Sample {
        Sample {
            start: ms(start_ms),
            latency,
            outcome: Outcome::Ok,
            fresh: false,
        }
    }

    /// Steady 0.2 ms answers every 10 ms for 4 s, one reload asked at
    /// 1 s whose replaced workers exited at 3 s, and `late` added.
    fn run_with(late: Sample, exits: Vec<Value>) -> Run {
        let mut samples: Vec<Sample> = (0..400)
            .map(|i| ok(i * 10, Duration::from_micros(200)))
            .collect();
        samples.push(late);
        samples.sort_by_key(|s| s.start);
        Run {
            done: vec![Ok(json!({"ok": true, "generation": 2, "duration_ms": 100}))],
            windows: vec![(ms(1000), ms(3000))],
            exits,
            samples: Samples {
                samples,
                ..Samples::default()
            },
        }
    }

    /// `reload complete` came at 1.1 s; the drain went on to 3 s. A
    /// request that waited 1.2 s at 2.5 s, late in the drain, is during
    /// the reload and makes the answer bad (the window used to end at
    /// `reload complete`, and left it outside, unjudged).
    #[test]
    fn a_slow_answer_late_in_a_drain_is_measured_and_bad() {
        let run = run_with(ok(2500, ms(1200)), vec![]);
        let answer = run.answer("reload keep-alive", Protocol::Http);
        assert_eq!(answer.verdict, Verdict::Bad, "{}", answer.summary);
        assert!(
            answer.summary.contains("requests waited up to 1.2s"),
            "{}",
            answer.summary
        );
        let figures = &answer.figures;
        assert_eq!(figures["during_reloads"]["max_ms"], 1200.0);
        assert_eq!(figures["outside_reloads"]["max_ms"], 0.2);
    }

    /// The same answer after the last replaced worker exited is outside
    /// every reload: a slow request then is not the reload's.
    #[test]
    fn a_slow_answer_after_the_drain_is_outside_it() {
        let run = run_with(ok(3500, ms(1200)), vec![]);
        let answer = run.answer("reload keep-alive", Protocol::Http);
        assert_eq!(answer.verdict, Verdict::Good, "{}", answer.summary);
    }

    /// Every client answered, but a replaced worker was killed at
    /// `--stop-timeout`, and another died of its TERM: both bad, named.
    #[test]
    fn a_worker_killed_at_stop_timeout_or_dead_of_its_signal_is_bad_whatever_the_client_saw() {
        let killed = json!({"pid": 41, "signal": "SIGKILL", "killed_by_rcluster": true});
        let run = run_with(ok(2000, ms(1)), vec![killed]);
        let answer = run.answer("reload keep-alive", Protocol::Http);
        assert_eq!(answer.verdict, Verdict::Bad, "{}", answer.summary);
        assert!(
            answer
                .summary
                .contains("replaced worker 41 was still draining at --stop-timeout")
        );
        assert!(
            answer
                .fix
                .as_deref()
                .unwrap_or("")
                .contains("Connection: close")
        );

        let termed = json!({"pid": 42, "signal": "SIGTERM", "killed_by_rcluster": false});
        let drained = json!({"pid": 43, "signal": "SIGTERM", "drained": true});
        let clean = json!({"pid": 44, "code": 0});
        let run = run_with(ok(2000, ms(1)), vec![termed, drained, clean]);
        let answer = run.answer("reload close", Protocol::Http);
        assert_eq!(answer.verdict, Verdict::Bad, "{}", answer.summary);
        assert!(
            answer.summary.contains(
                "replaced worker 42 did not exit cleanly while draining (killed by SIGTERM)"
            ),
            "{}",
            answer.summary
        );
        assert!(!answer.summary.contains("43"), "{}", answer.summary);
    }
}
