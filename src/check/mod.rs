//! `rcluster check [rcluster options] -- COMMAND…`: know whether a server
//! is reload-safe before production does. It runs the server under
//! rcluster exactly as `rcluster [options] -- COMMAND` would (this binary,
//! as a child, on a free port of 127.0.0.1 unless `--listen` is given),
//! drives it with the project's own strict HTTP/1.1 client, and answers one
//! question a line: how the workers say ready, whether a crash heals,
//! whether reloads under keep-alive and `Connection: close` load lose
//! requests, whether a request in flight survives its worker's stop (in a
//! reload and in a stop), what a new connection gets during a stop, and
//! whether the server binds a port of its own, and whether it passes its
//! `--probe` (or has a health path to probe). Where an answer is bad and
//! rcluster has a cure (`--http-drain`, `--adopt-bind`), it asks again
//! with the cure and shows both.
//!
//! The check is a client: it may run threads (its load does); the master
//! it checks is the real one, in a process of its own.

mod child;
pub mod http;
pub mod load;
mod probe;
mod questions;
mod reloads;
mod report;
mod traffic;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use child::Checked;
use report::{Answer, Report, Verdict};

/// What the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    /// Not HTTP: connections are only accepted, or closed.
    Tcp,
}

/// A check as the command line asked for it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The run options and the command, as given after `check` (without
    /// the check's own options).
    pub args: Vec<OsString>,
    /// `--listen` was given: the server is checked there.
    pub listen_given: bool,
    /// The cures already given (none is tried again).
    pub http_drain: bool,
    pub adopt_bind: bool,
    /// About how long the whole check may take.
    pub duration: Duration,
    pub json: bool,
    pub protocol: Protocol,
}

impl Plan {
    /// The command, for the report.
    fn command(&self) -> String {
        let at = self
            .args
            .iter()
            .position(|a| a == "--")
            .map_or(0, |i| i + 1);
        let words: Vec<String> = self.args[at..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        words.join(" ")
    }

    /// The time each load phase may take: most of the check is reloads,
    /// under two loads, and again with a cure.
    fn phase(&self) -> Duration {
        self.duration / 6
    }
}

/// `args` without the options named (before `--`): `valued` take a value
/// (`--name api` or `--name=api`), `bare` do not.
pub fn strip(args: &[OsString], valued: &[&str], bare: &[&str]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            out.push(arg.clone());
            out.extend(iter.cloned());
            break;
        }
        let named = |names: &[&str]| names.iter().any(|name| text == *name);
        if named(valued) {
            iter.next();
        } else if !named(bare)
            && !valued
                .iter()
                .any(|name| text.strip_prefix(name).is_some_and(|v| v.starts_with('=')))
        {
            out.push(arg.clone());
        }
    }
    out
}

/// Runs the check and prints its report: exit 0 when every answer is
/// good, 1 otherwise, 2 when the server cannot be run at all.
pub fn run(plan: Plan) -> ExitCode {
    let progress = !plan.json && std::io::stderr().is_terminal();
    let say = |what: &str| {
        if progress {
            let _ = writeln!(std::io::stderr(), "rcluster check: {what}…");
        }
    };
    let report = check(&plan, &say);
    let text = if plan.json {
        serde_json::to_string_pretty(&report.json()).unwrap_or_default() + "\n"
    } else {
        report.text()
    };
    // A reader that went away (`| head`) is no error of the check's.
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::from(report.exit_code())
}

fn check(plan: &Plan, say: &dyn Fn(&str)) -> Report {
    let mut report = Report {
        command: plan.command(),
        ..Report::default()
    };
    say("starting the server under rcluster");
    let mut checked = match Checked::start(&plan.args, &[], plan.listen_given) {
        Ok(checked) => checked,
        Err(why) => {
            report.cannot_run = Some(why);
            return report;
        }
    };
    let start_by = Instant::now() + plan.duration.max(Duration::from_secs(20));
    let started = questions::start(&mut checked, start_by);
    report.listen = checked
        .addr
        .map_or_else(|| "its listeners".into(), |a| a.to_string());
    let ready = match started {
        Ok(answer) => answer,
        Err(why) => {
            let own_port = questions::own_port(&checked, false);
            drop(checked);
            report.cannot_run = Some(why);
            if own_port.verdict == Verdict::Bad {
                report.answers.push(cured_ports(plan, own_port, say));
            }
            return report;
        }
    };
    report.answers.push(ready);
    if plan.protocol == Protocol::Http {
        let path = probe::probe_path(&plan.args);
        report
            .answers
            .extend(probe::probe(&checked, path.as_deref()));
    }
    say("killing a worker");
    report
        .answers
        .push(questions::crash(&checked, plan.protocol));
    let mut load_phases = Vec::new();
    for keep_alive in load_modes(plan.protocol) {
        say(if keep_alive {
            "reloading under keep-alive load"
        } else {
            "reloading under Connection: close load"
        });
        load_phases.push(reloads::reloads(
            &checked,
            keep_alive,
            3,
            plan.protocol,
            plan.phase(),
        ));
    }
    say("reloading with requests in flight");
    let drain_reload = questions::drain(&checked, false, plan.protocol);
    let own_port = questions::own_port(&checked, true);
    say("stopping with requests in flight");
    let drain_stop = questions::drain(&checked, true, plan.protocol);
    let during_stop = questions::during_stop(&mut checked, plan.protocol);
    checked.wait_exit(Instant::now() + Duration::from_secs(10));
    drop(checked);
    let mut drains = vec![drain_reload, drain_stop, during_stop];
    if !plan.http_drain
        && (load_phases
            .iter()
            .chain(&drains)
            .any(|a| a.verdict == Verdict::Bad))
    {
        say("the same with --http-drain");
        cure_with_http_drain(plan, &mut load_phases, &mut drains);
    }
    report.answers.extend(load_phases);
    report.answers.extend(drains);
    report.answers.push(own_port);
    for answer in &mut report.answers {
        no_cure_known(answer);
    }
    report
}

/// A bad answer that no flag of rcluster's made good says so, with what
/// the server itself would have to change, where the question knows.
fn no_cure_known(answer: &mut Answer) {
    let cured = answer
        .cure
        .as_ref()
        .is_some_and(|(_, again)| again.verdict == Verdict::Good);
    if answer.verdict != Verdict::Bad || cured {
        return;
    }
    answer.fix = Some(match answer.fix.take() {
        Some(advice) => format!("no cure known in rcluster's flags; in the server: {advice}"),
        None => "no cure known in rcluster's flags: the server itself must change".into(),
    });
}

fn load_modes(protocol: Protocol) -> Vec<bool> {
    match protocol {
        Protocol::Http => vec![true, false],
        Protocol::Tcp => vec![true],
    }
}

/// Asks the questions that came out bad again, with `--http-drain`, and
/// attaches each new answer to the old one.
fn cure_with_http_drain(plan: &Plan, loads: &mut [Answer], drains: &mut [Answer]) {
    let Ok(mut checked) = Checked::start(&plan.args, &["--http-drain"], plan.listen_given) else {
        return;
    };
    let start_by = Instant::now() + plan.duration.max(Duration::from_secs(20));
    if questions::start(&mut checked, start_by).is_err() {
        return;
    }
    for answer in loads.iter_mut().filter(|a| a.verdict == Verdict::Bad) {
        let keep_alive = answer.question != "reload close";
        let again = reloads::reloads(&checked, keep_alive, 3, plan.protocol, plan.phase());
        attach(answer, "--http-drain", again);
    }
    if drains[0].verdict == Verdict::Bad {
        let again = questions::drain(&checked, false, plan.protocol);
        attach(&mut drains[0], "--http-drain", again);
    }
    if drains[1..].iter().any(|a| a.verdict == Verdict::Bad) {
        let stop = questions::drain(&checked, true, plan.protocol);
        let during = questions::during_stop(&mut checked, plan.protocol);
        for (answer, again) in drains[1..].iter_mut().zip([stop, during]) {
            if answer.verdict == Verdict::Bad {
                attach(answer, "--http-drain", again);
            }
        }
    }
}

/// Records what the cure did; where it made the answer good, the fix is
/// the flag.
fn attach(answer: &mut Answer, flag: &'static str, again: Answer) {
    if again.verdict == Verdict::Good {
        answer.fix = Some(format!("run it with {flag}"));
    }
    answer.cure = Some((flag, Box::new(again)));
}

/// A server on a port of its own, checked again with `--adopt-bind`.
fn cured_ports(plan: &Plan, mut answer: Answer, say: &dyn Fn(&str)) -> Answer {
    if plan.adopt_bind {
        return answer;
    }
    say("the same with --adopt-bind");
    let Ok(mut checked) = Checked::start(&plan.args, &["--adopt-bind"], plan.listen_given) else {
        return answer;
    };
    let start_by = Instant::now() + plan.duration.max(Duration::from_secs(20));
    let again = match questions::start(&mut checked, start_by) {
        Ok(_) => {
            let served = checked
                .addr
                .is_some_and(|addr| http::get(addr, "/").is_ok());
            let verdict = if served { Verdict::Good } else { Verdict::Bad };
            let summary = if served {
                "its bind() gets rcluster's socket, and it serves on rcluster's address"
            } else {
                "it starts, but does not answer on rcluster's address"
            };
            Answer::new("own port", verdict, summary.into())
        }
        Err(why) => Answer::new(
            "own port",
            Verdict::Bad,
            format!("it does not start: {why}"),
        ),
    };
    attach(&mut answer, "--adopt-bind", again);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_taken_out_before_the_command_only() {
        let args: Vec<OsString> = [
            "-w",
            "2",
            "--json",
            "--log-format",
            "human",
            "--control=/x",
            "--name",
            "api",
            "--",
            "srv",
            "--name",
            "x",
            "--json",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let kept: Vec<String> = strip(&args, &["--log-format", "--control", "--name"], &["--json"])
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept, ["-w", "2", "--", "srv", "--name", "x", "--json"]);
    }
}
