//! `rcluster check` (#21): the verdicts on servers whose behaviour the test
//! controls, read from `--json`; what it leaves behind (nothing: no
//! process, no file), even when it is killed.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    SHORT_HOLD, SHORT_LOOK, TempDir, example, is_gone, load, path_str, rcluster_bin, wait_until,
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
    /// pid to.
    pids: Vec<i32>,
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

/// `rcluster check --json --duration 10s ARGS -- sh -c 'echo $$ >> pids;
/// exec SERVER'`, with its temp dir in a directory of the test's (so that
/// what it leaves there shows), one load at a time in this process.
fn check(args: &[&str], server: &str, env: &[(&str, &str)]) -> Checked {
    let dir = TempDir::new("check");
    let pids = dir.path("pids");
    let tmp = dir.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let script = format!("echo $$ >> {}; exec {server}", path_str(&pids));
    let _gate = load::gate();
    let mut cmd = Command::new(rcluster_bin());
    cmd.args(["check", "--json", "--duration", "10s", "-w", "2"])
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
    let pids: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let checked = Checked {
        code: output.status.code().unwrap_or(-1),
        report,
        pids,
    };
    leaves_nothing(&checked, &tmp);
    checked
}

/// Every worker it started is gone, and its temp dir is empty.
fn leaves_nothing(checked: &Checked, tmp: &Path) {
    assert!(
        !checked.pids.is_empty(),
        "no worker ran: {:#}",
        checked.report
    );
    for &pid in &checked.pids {
        let gone = wait_until(Duration::from_secs(10), || is_gone(pid));
        if !gone {
            // SAFETY: a worker of this test's check, left behind.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        assert!(gone, "worker {pid} outlived the check");
    }
    let left: Vec<_> = std::fs::read_dir(tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "the check left files behind: {left:?}");
}

#[test]
fn hello_is_reload_safe() {
    let checked = check(&[], &example("hello"), &[]);
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
}

/// The naive server: it says nothing, which the check says plainly; it
/// dies on SIGTERM with requests in flight and keep-alive connections
/// open, which loses requests; and `--http-drain` cures it, shown by a run
/// with it.
#[test]
fn a_server_that_dies_on_term_loses_requests_and_http_drain_cures_it() {
    // The hold and the first look are not what this test is about.
    let naive = format!("python3 {}", naive_server());
    let checked = check(&[SHORT_HOLD, SHORT_LOOK], &naive, &[]);
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
}

/// A free port of 127.0.0.1 for a server to bind itself.
fn free_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[test]
fn a_server_on_its_own_port_cannot_run_and_adopt_bind_is_the_fix() {
    let port = free_port().to_string();
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

/// The Python recipe, with the default flags: good throughout.
#[test]
fn the_python_recipe_is_reload_safe() {
    let server = format!(
        "python3 {}/examples/python/server.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let checked = check(&[], &server, &[]);
    assert_eq!(checked.code, 0, "{:#}", checked.report);
    for answer in checked.report["answers"].as_array().unwrap() {
        assert_eq!(answer["verdict"], "good", "{answer:#}");
    }
    assert_eq!(checked.answer("ready")["figures"]["ready_by"][0], "READY=1");
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
