//! `rcluster check` (#21): the verdicts on servers whose behaviour the test
//! controls, read from `--json`, each beside what wrk sees through as many
//! reloads with the same flags (the check is bad exactly when wrk saw a
//! failed request, a timeout or a request over 1 s, and with the cure it
//! names wrk sees none); what it leaves behind (nothing: no process, no
//! file), even when it is killed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::wrk::{Wrk, WrkStats};
use crate::support::{
    Master, SHORT_HOLD, TempDir, example, is_gone, is_gone_since, load, path_str, rcluster_bin,
    wait_until,
};

/// The longest a check may run here: its `--duration`, the cures' second
/// runs, and a slow machine.
const CHECK_BOUND: Duration = Duration::from_secs(240);

/// The fixture server: never says READY=1, keeps connections alive, dies
/// at once on SIGTERM.
fn naive_server() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/naive_server.py"
    )
    .into()
}

/// What one check said, and what it started.
struct Checked {
    code: i32,
    report: Value,
    /// Every worker process it started, from a file each one wrote its
    /// pid and start time to.
    pids: Vec<(i32, u64)>,
}

impl Checked {
    fn answer(&self, question: &str) -> &Value {
        self.report["answers"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["question"] == question))
            .unwrap_or_else(|| panic!("no answer to {question}: {:#}", self.report))
    }

    fn verdict(&self, question: &str) -> &str {
        self.answer(question)["verdict"]
            .as_str()
            .unwrap_or_default()
    }
}

/// `rcluster check --json --duration 6s ARGS -- sh -c 'echo $$ >> pids;
/// exec SERVER'`, with its temp dir in a directory of the test's (so that
/// what it leaves there shows).
fn check(args: &[&str], server: &str, env: &[(&str, &str)]) -> Checked {
    let dir = TempDir::new("check");
    let pids = dir.path("pids");
    let tmp = dir.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    // Each worker's pid and start time: pids wrap during a long check.
    let script = format!(
        "echo $$ $(cut -d' ' -f22 /proc/$$/stat) >> {}; exec {server}",
        path_str(&pids)
    );
    // Its loads take turns with the suite's through the gate's file
    // (RCLUSTER_LOAD_GATE, which cargo sets from .cargo/config.toml): the
    // test need not hold the gate while the check starts, kills and stops.
    // Without the file, the whole check is one turn of this process's.
    let _gate = std::env::var_os(load::GATE_FILE).is_none().then(load::gate);
    let mut cmd = Command::new(rcluster_bin());
    cmd.args(["check", "--json", "--duration", "6s", "-w", "2"])
        .args(args)
        .args(["--", "sh", "-c", &script])
        .env("TMPDIR", &tmp)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting rcluster check");
    let pid = child.id() as i32;
    let exited = wait_until(CHECK_BOUND, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        // SAFETY: the check this test started; its master goes with it.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let output = child.wait_with_output().expect("the check's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(exited, "the check did not end: {stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}{stderr}"));
    let pids: Vec<(i32, u64)> = std::fs::read_to_string(&pids)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, ticks) = l.trim().split_once(' ')?;
            Some((pid.parse().ok()?, ticks.parse().ok()?))
        })
        .collect();
    let checked = Checked {
        code: output.status.code().unwrap_or(-1),
        report,
        pids,
    };
    leaves_nothing(&checked, &tmp);
    checked
}

/// The reload answers: bad if either is.
fn reloads_bad(checked: &Checked) -> bool {
    ["reload keep-alive", "reload close"]
        .iter()
        .any(|q| checked.verdict(q) == "bad")
}

/// What wrk saw through the check's number of reloads in each mode, with
/// the same flags (and `extra`): every failure, every timeout, and the
/// longest wait. Each reload's window runs until the workers it replaced
/// have exited, as the check's does.
fn wrk_through_the_same_reloads(
    checked: &Checked,
    flags: &[&str],
    extra: &[&str],
    server: &str,
) -> Vec<WrkStats> {
    let reloads = |q: &str| {
        checked.answer(q)["figures"]["reloads"]
            .as_u64()
            .unwrap_or(1)
    };
    let mut args = vec!["-w", "2", "-l", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    args.extend_from_slice(extra);
    let script = format!("exec {server}");
    args.extend_from_slice(&["--", "sh", "-c", &script]);
    let mut master = Master::start(&args);
    let addr = master.listening();
    master.ready_workers();
    let mut seen = Vec::new();
    for (keep_alive, question) in [(true, "reload keep-alive"), (false, "reload close")] {
        let wrk = Wrk::start(addr, 8, keep_alive);
        for _ in 0..reloads(question) {
            reload_until_drained(&mut master);
        }
        seen.push(wrk.finish());
    }
    seen
}

/// A HUP, then waits until the reload has ended and every worker it told
/// to drain has exited.
fn reload_until_drained(master: &mut Master) {
    master.signal(libc::SIGHUP);
    let records = master.collect_until("the reload's end", |r| {
        r["msg"] == "reload complete" || r["msg"] == "reload aborted"
    });
    let mut draining: std::collections::BTreeSet<i64> = records
        .iter()
        .filter(|r| r["msg"] == "worker draining")
        .filter_map(|r| r["pid"].as_i64())
        .collect();
    for r in records.iter().filter(|r| r["msg"] == "worker exited") {
        draining.remove(&r["pid"].as_i64().unwrap_or_default());
    }
    while !draining.is_empty() {
        let exited = master.expect_msg("worker exited");
        draining.remove(&exited["pid"].as_i64().unwrap_or_default());
    }
}

/// What a client would call a bad reload: a failure, a timeout, or a
/// request that waited over a second.
fn wrk_bad(seen: &[WrkStats]) -> bool {
    seen.iter().any(|s| s.failed() > 0 || s.max_us > 1_000_000)
}

/// The check beside wrk: the same verdict, and with the cure the check
/// names, wrk sees nothing wrong.
fn agrees_with_wrk(checked: &Checked, flags: &[&str], server: &str) {
    let seen = wrk_through_the_same_reloads(checked, flags, &[], server);
    eprintln!("wrk without a cure: {seen:?}");
    assert_eq!(
        reloads_bad(checked),
        wrk_bad(&seen),
        "the check and wrk disagree: wrk saw {seen:?}; the check said {:#}",
        checked.report
    );
    let cure = ["reload keep-alive", "reload close"].iter().find_map(|q| {
        let fix = checked.answer(q)["fix"].as_str()?;
        fix.strip_prefix("run it with ").map(str::to_string)
    });
    if let Some(cure) = cure {
        let seen = wrk_through_the_same_reloads(checked, flags, &[&cure], server);
        eprintln!("wrk with {cure}: {seen:?}");
        assert!(
            !wrk_bad(&seen),
            "wrk with {cure}, the check's cure: {seen:?}"
        );
    }
}

/// Every worker it started is gone, and its temp dir is empty.
fn leaves_nothing(checked: &Checked, tmp: &Path) {
    assert!(
        !checked.pids.is_empty(),
        "no worker ran: {:#}",
        checked.report
    );
    for &(pid, ticks) in &checked.pids {
        let gone = wait_until(Duration::from_secs(10), || is_gone_since(pid, ticks));
        let what = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !gone {
            // SAFETY: a worker of this test's check (the same start time),
            // left behind.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        assert!(gone, "worker {pid} outlived the check: {what:?}");
    }
    let left: Vec<_> = std::fs::read_dir(tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "the check left files behind: {left:?}");
}

#[test]
fn hello_is_reload_safe() {
    let hello = example("hello");
    let checked = check(&[SHORT_HOLD], &hello, &[]);
    assert_eq!(checked.code, 0, "{:#}", checked.report);
    assert_eq!(checked.report["ok"], true);
    for answer in checked.report["answers"].as_array().unwrap() {
        assert_eq!(answer["verdict"], "good", "{answer:#}");
    }
    let ready = checked.answer("ready");
    assert_eq!(ready["figures"]["ready_by"][0], "READY=1", "{ready:#}");
    for question in ["reload keep-alive", "reload close"] {
        let figures = &checked.answer(question)["figures"];
        assert!(figures["sent"].as_u64() > Some(0), "{figures:#}");
        assert_eq!(figures["failed"], 0, "{figures:#}");
        assert!(figures["reloads"].as_u64() >= Some(1), "{figures:#}");
    }
    assert!(checked.answer("drain on reload")["figures"]["in_flight"].as_u64() > Some(0));
    agrees_with_wrk(&checked, &[SHORT_HOLD], &hello);
}

/// The naive server: it says nothing, which the check says plainly; it
/// dies on SIGTERM with requests in flight and keep-alive connections
/// open, which loses requests; and `--http-drain` cures it, shown by a run
/// with it.
#[test]
fn a_server_that_dies_on_term_loses_requests_and_http_drain_cures_it() {
    // The hold is not what this test is about; the first look is (at the
    // default --min-uptime: a shorter one found python still starting on
    // a loaded machine, and the worker was ready only by the timer).
    let naive = format!("python3 {}", naive_server());
    let flags = [SHORT_HOLD];
    let checked = check(&flags, &naive, &[]);
    assert_eq!(checked.code, 1, "{:#}", checked.report);
    assert_eq!(checked.report["ok"], false);

    let ready = checked.answer("ready");
    assert_eq!(ready["verdict"], "notice", "{ready:#}");
    assert_eq!(ready["figures"]["ready_by"][0], "listening", "{ready:#}");
    let said = ready["summary"].as_str().unwrap();
    assert!(said.contains("say nothing"), "{said}");
    assert!(
        ready["fix"].as_str().unwrap().contains("READY=1"),
        "{ready:#}"
    );

    // Deterministic: each request held in flight is on a worker that dies.
    for question in ["drain on reload", "drain on stop"] {
        let drain = checked.answer(question);
        assert_eq!(drain["verdict"], "bad", "{drain:#}");
        assert_eq!(drain["figures"]["answered"], 0, "{drain:#}");
        let cured = &drain["with_cure"];
        assert_eq!(cured["flag"], "--http-drain", "{drain:#}");
        assert_eq!(cured["verdict"], "good", "{drain:#}");
        assert_eq!(drain["fix"], "run it with --http-drain", "{drain:#}");
    }
    // Every keep-alive connection on a worker that dies fails its next
    // request; with the drain, none does.
    let reload = checked.answer("reload keep-alive");
    assert_eq!(reload["verdict"], "bad", "{reload:#}");
    assert!(reload["figures"]["failed"].as_u64() > Some(0), "{reload:#}");
    assert_eq!(reload["with_cure"]["verdict"], "good", "{reload:#}");
    assert_eq!(reload["with_cure"]["figures"]["failed"], 0, "{reload:#}");
    // It dies of its stop signal: each replaced worker's end says so.
    let unclean = &reload["figures"]["unclean_exits"];
    assert!(
        unclean.as_array().is_some_and(|u| !u.is_empty()),
        "{reload:#}"
    );
    agrees_with_wrk(&checked, &flags, &naive);
}

/// `tests/fixtures/drain_fixture.py MODE`, with the flags its tests give.
fn drain_fixture(mode: &str) -> String {
    format!(
        "python3 {}/tests/fixtures/drain_fixture.py {mode}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Flags for the drain fixtures: a short hold and first look, and a short
/// `--stop-timeout`, so that a drain that never ends ends in a second.
const FIXTURE_FLAGS: [&str; 2] = [SHORT_HOLD, "--stop-timeout=1s"];

/// A server that drains as Node's `server.close()` did before v19: it
/// stops accepting and serves its keep-alive clients for as long as they
/// send, so a busy one holds it until `--stop-timeout` kills it (and what
/// it held with it). Every check answer looked good while the window ended
/// at `reload complete`.
#[test]
fn a_server_that_lingers_on_its_keep_alive_clients_is_bad_and_http_drain_cures_it() {
    let server = drain_fixture("linger");
    let checked = check(&FIXTURE_FLAGS, &server, &[]);
    let reload = checked.answer("reload keep-alive");
    assert_eq!(reload["verdict"], "bad", "{reload:#}");
    let killed = &reload["figures"]["killed_at_stop_timeout"];
    assert!(
        killed.as_array().is_some_and(|k| !k.is_empty()),
        "{reload:#}"
    );
    assert!(
        reload["summary"]
            .as_str()
            .unwrap()
            .contains("--stop-timeout"),
        "{reload:#}"
    );
    assert_eq!(reload["with_cure"]["verdict"], "good", "{reload:#}");
    agrees_with_wrk(&checked, &FIXTURE_FLAGS, &server);
}

/// A slow handler (120 ms) whose worker, once told to stop, closes each
/// keep-alive connection after its next response without saying
/// `Connection: close`: wrk's next request there fails. The load's idle
/// check (a connection whose last request went out over 100 ms before
/// was quietly replaced) hid it.
#[test]
fn a_server_that_closes_keep_alive_silently_at_drain_is_bad_and_http_drain_cures_it() {
    let server = drain_fixture("close-silently");
    let checked = check(&FIXTURE_FLAGS, &server, &[]);
    let reload = checked.answer("reload keep-alive");
    assert_eq!(reload["verdict"], "bad", "{reload:#}");
    let figures = &reload["figures"];
    let lost = figures["closed_while_idle"].as_u64().unwrap_or(0)
        + figures["closed"].as_u64().unwrap_or(0)
        + figures["reset"].as_u64().unwrap_or(0);
    assert!(lost > 0, "{reload:#}");
    assert_eq!(reload["with_cure"]["verdict"], "good", "{reload:#}");
    agrees_with_wrk(&checked, &FIXTURE_FLAGS, &server);
}

/// A worker that answers 1.5 s late once told to stop: nothing fails, but
/// requests wait over a second during every reload, which is bad.
#[test]
fn a_server_whose_draining_worker_answers_slowly_is_bad_on_latency() {
    let server = drain_fixture("slow");
    // The default --stop-timeout: its drain ends in time, only slowly.
    let flags = [SHORT_HOLD];
    let checked = check(&flags, &server, &[]);
    let reload = checked.answer("reload keep-alive");
    assert_eq!(reload["verdict"], "bad", "{reload:#}");
    assert_eq!(reload["figures"]["failed"], 0, "{reload:#}");
    assert!(
        reload["summary"]
            .as_str()
            .unwrap()
            .contains("during reloads requests waited up to"),
        "{reload:#}"
    );
    assert!(
        reload["figures"]["during_reloads"]["max_ms"].as_f64() > Some(1000.0),
        "{reload:#}"
    );
    agrees_with_wrk(&checked, &flags, &server);
}

#[test]
fn a_server_on_its_own_port_cannot_run_and_adopt_bind_is_the_fix() {
    let port = crate::support::free_port().to_string();
    let server = format!("python3 {} --own-port", naive_server());
    let checked = check(&[], &server, &[("PORT", &port)]);
    assert_eq!(checked.code, 2, "{:#}", checked.report);
    let why = checked.report["cannot_run"].as_str().unwrap_or_default();
    assert!(why.contains("port of their own"), "{why}");
    let own = checked.answer("own port");
    assert_eq!(own["verdict"], "bad", "{own:#}");
    assert_eq!(own["figures"]["ports"], port, "{own:#}");
    assert_eq!(own["with_cure"]["flag"], "--adopt-bind", "{own:#}");
    assert_eq!(own["with_cure"]["verdict"], "good", "{own:#}");
    assert_eq!(own["fix"], "run it with --adopt-bind", "{own:#}");
}

/// The Python recipe: good throughout (the hold shortened, as it is not
/// what the check asks about).
#[test]
fn the_python_recipe_is_reload_safe() {
    let server = format!(
        "python3 {}/examples/python/server.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let checked = check(&[SHORT_HOLD], &server, &[]);
    assert_eq!(checked.code, 0, "{:#}", checked.report);
    for answer in checked.report["answers"].as_array().unwrap() {
        assert_eq!(answer["verdict"], "good", "{answer:#}");
    }
    assert_eq!(checked.answer("ready")["figures"]["ready_by"][0], "READY=1");
    agrees_with_wrk(&checked, &[SHORT_HOLD], &server);
}

/// `--protocol tcp`: connections only.
#[test]
fn a_tcp_check_counts_connections() {
    let checked = check(&["--protocol", "tcp", SHORT_HOLD], &example("hello"), &[]);
    assert_eq!(checked.code, 0, "{:#}", checked.report);
    assert_eq!(checked.verdict("reload"), "good");
    assert!(checked.answer("reload")["figures"]["sent"].as_u64() > Some(0));
    assert_eq!(checked.verdict("drain on reload"), "not checked");
}

/// A command that does not exist: exit 2, the reason, at once.
#[test]
fn a_server_that_cannot_run_is_said_so() {
    let dir = TempDir::new("check-missing");
    let (code, out, err) = crate::support::run_command(
        {
            let mut cmd = Command::new(rcluster_bin());
            cmd.env("TMPDIR", &dir.0);
            cmd
        },
        &["check", "--json", "--", "/nonexistent/server"],
    );
    assert_eq!(code, 2, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let why = report["cannot_run"].as_str().unwrap_or_default();
    assert!(why.contains("/nonexistent/server"), "{why}");
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
}

/// Killed mid-check, it takes its master and workers with it.
#[test]
fn a_killed_check_leaves_no_process() {
    let dir = TempDir::new("check-killed");
    let pids = dir.path("pids");
    let script = format!("echo $$ >> {}; exec {}", path_str(&pids), example("hello"));
    let mut child = Command::new(rcluster_bin())
        .args(["check", "-w", "2", "--", "sh", "-c", &script])
        .env("TMPDIR", &dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting rcluster check");
    let read = || -> Vec<i32> {
        std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let started = wait_until(crate::support::WAIT, || read().len() >= 2);
    // SAFETY: the check this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert!(started, "no workers started");
    for pid in read() {
        let gone = wait_until(Duration::from_secs(10), || is_gone(pid));
        if !gone {
            // SAFETY: a worker of this test's check, left behind.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        assert!(gone, "worker {pid} outlived the killed check");
    }
}

/// `--probe` (#37): the check asks it, and says why no worker is ever
/// ready when it fails; without it, a server with a health path is told
/// to probe it. gunicorn (from PyPI) serving `tests/fixtures/health_app.py`
/// (`/` and `/healthz`; any other path 404).
#[test]
fn the_check_asks_the_probe_and_suggests_one() {
    let server = format!(
        "gunicorn --workers 1 --threads 4 --preload --no-control-socket --chdir {}/tests/fixtures \
         health_app:app",
        env!("CARGO_MANIFEST_DIR")
    );
    let python = crate::support::installs::path_with_python();
    let path = python.to_str().unwrap();
    // --http-drain given: no question is asked again with it (not what
    // this test is about), which halves its time.
    let flags = ["--ready", "notify", SHORT_HOLD, "--http-drain"];

    let checked = check(&flags, &server, &[("PATH", path)]);
    let probe = checked.answer("probe");
    assert_eq!(probe["verdict"], "notice", "{probe:#}");
    assert!(
        probe["fix"].as_str().unwrap().contains("--probe /healthz"),
        "{probe:#}"
    );

    let probed = [&flags[..], &["--probe", "/healthz"]].concat();
    let checked = check(&probed, &server, &[("PATH", path)]);
    assert_eq!(checked.verdict("probe"), "good", "{:#}", checked.report);

    let failing = [&probed[..], &["--ready-timeout", "3s"]].concat();
    let checked = check(
        &failing,
        &server,
        &[("PATH", path), ("HEALTH_STATUS", "503")],
    );
    assert_eq!(checked.code, 2, "{:#}", checked.report);
    let why = checked.report["cannot_run"].as_str().unwrap_or_default();
    assert!(
        why.contains("fail their probe") && why.contains("answered 503 to GET /healthz"),
        "{why}"
    );
}
