//! `--config FILE`: every setting a new generation can take is changed by
//! editing the file and reloading, under wrk (keep-alive and close at
//! once) against gunicorn from PyPI, and the workers show it (their
//! command line, their environment, their count, the addresses that
//! answer). A broken file aborts the reload with its line, and `config
//! check` says the same; flags and variables override the file; a rollback
//! restores the whole configuration before; a live upgrade runs the file
//! in force, not the one being edited.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::support::installs::path_with_python;
use crate::support::wrk::Wrk;
use crate::support::{
    Master, TempDir, WAIT, environ, example, free_port, get_once, path_str, rcluster, ready_pids,
    status, wait_until,
};

/// The file, as an operator would write it: gunicorn as docs/servers.md's
/// recipe runs it (`--preload`: ready only once the app is imported).
struct File {
    workers: usize,
    ports: Vec<u16>,
    /// gunicorn's `--timeout`, to see the arguments change.
    timeout: u32,
    mark: &'static str,
    stop_timeout: &'static str,
}

impl File {
    fn text(&self) -> String {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let listen: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        format!(
            "# the app, as deployed\n\
             workers = {}\n\
             listen = [{}]\n\
             ready = \"notify\"\n\
             min-ready = \"1s\"\n\
             stop-timeout = \"{}\"\n\
             command = [\"gunicorn\", \"--workers\", \"1\", \"--threads\", \"4\",\n  \
             \"--preload\", \"--no-control-socket\", \"--chdir\", \"{}\", \"--timeout\", \"{}\", \"health_app:app\"]\n\
             \n[env]\nAPP_STATUS = \"200\"\nMARK = \"{}\"\n",
            self.workers,
            listen.join(", "),
            self.stop_timeout,
            fixtures.display(),
            self.timeout,
            self.mark
        )
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Writes `text`, reloads and waits for the reload; then for `workers`
/// ready workers of the new generation. Returns the new generation's
/// release (from `status`).
fn reload_to(control: &str, file: &Path, text: &str, workers: usize) -> Value {
    std::fs::write(file, text).unwrap();
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", control]);
    assert_eq!(code, 0, "reload: {out}{err}");
    let mut last = Value::Null;
    let settled = wait_until(WAIT, || {
        last = status(control);
        let target = &last["master"]["generation"];
        let ready: Vec<&Value> = last["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "ready")
            .collect();
        ready.len() == workers
            && last["workers"].as_array().unwrap().len() == workers
            && ready.iter().all(|w| &w["generation"] == target)
    });
    assert!(
        settled,
        "{workers} ready workers of the new generation: {last}"
    );
    let generation = last["master"]["generation"].as_u64().unwrap();
    release_of(&last, generation)
}

/// Generation `generation`'s release, from `status --json`.
fn release_of(status: &Value, generation: u64) -> Value {
    status["master"]["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["generation"] == generation)
        .cloned()
        .unwrap_or_else(|| panic!("generation {generation}'s release in {status}"))
}

fn changed(release: &Value) -> Vec<String> {
    release["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

fn cmdline(pid: i64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn pids(control: &str) -> Vec<i64> {
    ready_pids(control)
        .into_iter()
        .map(|(_, pid)| pid)
        .collect()
}

fn refused(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, WAIT)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[test]
fn every_change_a_reload_applies_loses_no_request() {
    let dir = TempDir::new("config-reload");
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let mut file = File {
        workers: 2,
        ports: vec![p1, p2],
        timeout: 30,
        mark: "a",
        stop_timeout: "5s",
    };
    let path = dir.path("app.toml");
    std::fs::write(&path, file.text()).unwrap();
    let control = path_str(&dir.path("control.sock")).to_string();
    let python = path_with_python();
    let mut master = Master::start_with(
        &["--config", path_str(&path), "--control", &control],
        |cmd| {
            cmd.env("PATH", &python);
        },
    );
    master.ready_workers();
    // Both kinds of client at once, on the address every generation has.
    let keep_alive = Wrk::start(addr(p1), 8, true);
    let close = Wrk::start(addr(p1), 8, false);
    let traffic = |n| {
        keep_alive.wait_for_more(n);
        close.wait_for_more(n);
    };
    traffic(200);

    file.timeout = 31;
    let release = reload_to(&control, &path, &file.text(), 2);
    assert_eq!(changed(&release), ["command arguments changed"]);
    for pid in pids(&control) {
        assert!(cmdline(pid).contains("--timeout 31 "), "{}", cmdline(pid));
    }
    traffic(200);

    file.mark = "b";
    let release = reload_to(&control, &path, &file.text(), 2);
    assert_eq!(changed(&release), ["env MARK changed"]);
    for pid in pids(&control) {
        assert_eq!(environ(pid as i32, "MARK").as_deref(), Some("b"));
    }
    traffic(200);

    file.workers = 3;
    let release = reload_to(&control, &path, &file.text(), 3);
    assert_eq!(changed(&release), ["workers 2 → 3"]);
    traffic(200);
    file.workers = 1;
    reload_to(&control, &path, &file.text(), 1);
    traffic(200);

    file.stop_timeout = "7s";
    let release = reload_to(&control, &path, &file.text(), 1);
    assert_eq!(changed(&release), ["stop-timeout 5s → 7s"]);
    traffic(200);

    // An address added is bound before the new generation starts.
    assert!(refused(addr(p3)));
    file.ports = vec![p1, p2, p3];
    let release = reload_to(&control, &path, &file.text(), 1);
    assert_eq!(release["changed"].as_array().unwrap().len(), 1, "{release}");
    let pid = pids(&control)[0];
    assert_eq!(environ(pid as i32, "LISTEN_FDS").as_deref(), Some("3"));
    let answer = get_once(addr(p3), WAIT).expect("the new address answers");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    traffic(200);

    // One removed is closed once the last worker that had it is gone.
    file.ports = vec![p1, p3];
    reload_to(&control, &path, &file.text(), 1);
    let closed = master.expect_msg("listener closed");
    assert_eq!(closed["addr"], format!("127.0.0.1:{p2}"));
    assert!(refused(addr(p2)), "a removed address refuses once drained");
    traffic(200);

    let (keep_alive, close) = (keep_alive.finish(), close.finish());
    assert!(keep_alive.requests > 0 && close.requests > 0);
    assert_eq!(
        (keep_alive.failed(), close.failed()),
        (0, 0),
        "failed requests: keep-alive {keep_alive:?}, close {close:?}"
    );
    master.stop_cleanly();
}

/// A master of `hello` run from the file at `path`, and its control socket.
fn hello_master(dir: &TempDir, path: &Path, text: &str, flags: &[&str]) -> (Master, String) {
    std::fs::write(path, text).unwrap();
    let control = path_str(&dir.path("control.sock")).to_string();
    let mut args = vec!["--config", path_str(path), "--control", &control];
    args.extend_from_slice(flags);
    let mut master = Master::start(&args);
    master.ready_workers();
    (master, control)
}

fn hello_file(workers: usize, listen: &[&str], word: &str, mark: &str) -> String {
    let listen: Vec<String> = listen.iter().map(|l| format!("\"{l}\"")).collect();
    format!(
        "workers = {workers}\nlisten = [{}]\nmin-ready = \"100ms\"\n\
         command = [\"{}\", \"{word}\"]\n[env]\nMARK = \"{mark}\"\n",
        listen.join(", "),
        example("hello")
    )
}

#[test]
fn a_broken_file_aborts_the_reload_with_its_line_and_changes_nothing() {
    let dir = TempDir::new("config-broken");
    let path = dir.path("app.toml");
    let good = hello_file(2, &["127.0.0.1:0"], "one", "a");
    let (mut master, control) = hello_master(&dir, &path, &good, &[]);
    let before = pids(&control);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let file = path_str(&path);
    let cases = [
        (format!("{good}workers = [\n"), format!("{file}:7: "), true),
        (
            good.replace("min-ready", "min-redy"),
            format!("{file}:3: min-redy: unknown key"),
            true,
        ),
        (
            good.replace("\"100ms\"", "\"100\""),
            format!("{file}:3: min-ready = 100: invalid value '100'"),
            true,
        ),
        (
            good.replace("\"127.0.0.1:0\"", &format!("\"127.0.0.1:0\", \"{taken}\"")),
            format!("{file}:2: listen: cannot listen on {taken}: address already in use"),
            // `config check` binds nothing.
            false,
        ),
        (
            format!("log-level = \"debug\"\n{good}"),
            "log-level changed (info → debug), which a reload cannot apply".into(),
            false,
        ),
    ];
    for (text, line, check_says_it) in cases {
        std::fs::write(&path, &text).unwrap();
        let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
        assert_eq!(code, 1, "{text}: {out}{err}");
        assert!(err.contains(&line), "{line} in {err}");
        let (code, out, err) = rcluster(&["config", "check", file]);
        if check_says_it {
            assert_eq!(code, 1, "{out}{err}");
            assert!(err.contains(&line), "config check: {line} in {err}");
        } else {
            assert_eq!(code, 0, "{out}{err}");
        }
        let status = status(&control);
        assert_eq!(status["master"]["generation"], 1, "{status}");
        assert_eq!(status["master"]["listeners"].as_array().unwrap().len(), 1);
        assert_eq!(pids(&control), before, "the workers keep serving");
    }
    let refusals = master.collect_until("five refusals", |r| {
        r["msg"] == "reload aborted" && r["cause"].as_str().unwrap().contains("log-level")
    });
    let logged = refusals.iter().filter(|r| r["msg"] == "reload aborted");
    assert_eq!(logged.count(), 5, "each one logged");
    drop(held);
    std::fs::write(&path, hello_file(2, &["127.0.0.1:0"], "two", "a")).unwrap();
    let (code, out, err) = rcluster(&["config", "check", file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"), "{out}");
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    master.stop_cleanly();
}

#[test]
fn flags_and_variables_override_the_file() {
    let dir = TempDir::new("config-layers");
    let path = dir.path("app.toml");
    let text = hello_file(3, &["127.0.0.1:0"], "one", "a");
    std::fs::write(
        &path,
        format!("stop-timeout = \"9s\"\nmax-age = \"1h\"\n{text}"),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(crate::support::rcluster_bin());
    cmd.env("RCLUSTER_STOP_TIMEOUT", "4s");
    let (code, out, err) = crate::support::run_command(
        cmd,
        &[
            "config",
            "show",
            "--config",
            path_str(&path),
            "--workers",
            "2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let row = |key: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("{key} in {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("workers"), "workers 2 flag");
    assert_eq!(
        row("stop-timeout"),
        "stop-timeout 4s variable RCLUSTER_STOP_TIMEOUT"
    );
    assert_eq!(row("max-age"), "max-age 1h file, line 2");
    assert_eq!(row("min-uptime"), "min-uptime 1s default");
    assert_eq!(row("env.MARK"), "env.MARK set file");

    // A running master: the flag's count, whatever the file says, at
    // start and after a reload that changes the file's.
    let (master, control) = hello_master(&dir, &path, &text, &["--workers", "2"]);
    assert_eq!(pids(&control).len(), 2);
    let edited = hello_file(4, &["127.0.0.1:0"], "two", "a");
    let release = reload_to(&control, &path, &edited, 2);
    assert_eq!(changed(&release), ["command arguments changed"]);
    // What it runs now, and where each value came from.
    let (code, shown, err) = rcluster(&["config", "show", "--control", &control]);
    assert_eq!(code, 0, "{err}");
    let version = release["config"]["version"].as_str().unwrap();
    assert!(
        shown.starts_with(&format!("# {} (version {version})", path.display())),
        "{shown}"
    );
    let row = |key: &str| {
        let line = shown
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key));
        line.map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    assert_eq!(row("workers").as_deref(), Some("workers 2 flag"));
    let command = row("command").expect("the command");
    assert!(command.ends_with(" two file, line 4"), "{command}");
    master.stop_cleanly();
}

#[test]
fn a_rollback_restores_the_whole_configuration_before() {
    let dir = TempDir::new("config-rollback");
    let path = dir.path("app.toml");
    let (p1, p2) = (free_port(), free_port());
    let (a1, a2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let first = hello_file(2, &[&a1], "one", "a");
    let (mut master, control) = hello_master(&dir, &path, &first, &[]);
    let second = format!(
        "watchdog = \"1h\"\n{}",
        hello_file(3, &[&a1, &a2], "two", "b")
    );
    let release = reload_to(&control, &path, &second, 3);
    assert_eq!(
        changed(&release),
        [
            "workers 2 → 3",
            format!("listen {a1} → {a1},{a2}").as_str(),
            "watchdog none → 1h",
            "command arguments changed",
            "env MARK changed"
        ]
    );
    assert!(get_once(addr(p2), WAIT).is_ok());
    for pid in pids(&control) {
        let usec = environ(pid as i32, "WATCHDOG_USEC");
        assert_eq!(usec.as_deref(), Some("3600000000"));
    }

    let (code, out, err) = rcluster(&["rollback", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    let mut now = Vec::new();
    let settled = wait_until(WAIT, || {
        now = pids(&control);
        now.len() == 2 && status(&control)["workers"].as_array().unwrap().len() == 2
    });
    assert!(settled, "two workers again: {now:?}");
    for pid in now {
        assert!(cmdline(pid).ends_with(" one "), "{}", cmdline(pid));
        assert_eq!(environ(pid as i32, "MARK").as_deref(), Some("a"));
        assert_eq!(environ(pid as i32, "LISTEN_FDS").as_deref(), Some("1"));
        assert_eq!(environ(pid as i32, "WATCHDOG_USEC"), None);
    }
    let closed = master.expect_msg("listener closed");
    assert_eq!(closed["addr"], a2);
    assert!(refused(addr(p2)));
    let status = status(&control);
    let (first, third) = (release_of(&status, 1), release_of(&status, 3));
    assert_eq!(third["rollback_of"], 1, "{status}");
    assert_eq!(third["config"]["version"], first["config"]["version"]);
    master.stop_cleanly();
}

#[test]
fn a_reload_applies_a_shorter_stop_timeout_to_the_workers_it_replaces() {
    let dir = TempDir::new("config-stop-timeout");
    let path = dir.path("app.toml");
    let worker = example("test_worker");
    let text = |timeout: &str| {
        format!(
            "workers = 2\nready = \"notify\"\nmin-ready = \"0s\"\nstop-timeout = \"{timeout}\"\n\
             command = [\"{worker}\", \"--ready-after\", \"0\", \"--ignore-stop\"]\n"
        )
    };
    let (mut master, control) = hello_master(&dir, &path, &text("1h"), &[]);
    std::fs::write(&path, text("300ms")).unwrap();
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    // Workers that ignore their stop signal are killed after the new one.
    for _ in 0..2 {
        let killed = master.expect_msg("stop timeout");
        assert_eq!(killed["timeout_ms"], 300, "{killed}");
    }
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn a_live_upgrade_runs_the_file_in_force_not_the_one_being_edited() {
    let dir = TempDir::new("config-upgrade");
    let path = dir.path("app.toml");
    let first = hello_file(2, &["127.0.0.1:0"], "one", "a");
    let (mut master, control) = hello_master(&dir, &path, &first, &[]);
    let version = |status: &Value| release_of(status, 1)["config"]["version"].clone();
    let before = version(&status(&control));
    // Being edited: not reloaded, not even valid yet.
    std::fs::write(&path, "workers = [\n").unwrap();
    let (code, out, err) = rcluster(&["upgrade", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    master.expect_msg("upgraded");
    let after = status(&control);
    assert_eq!(version(&after), before, "{after}");
    assert_eq!(pids(&control).len(), 2);
    // The edit takes effect by the reload that follows.
    let release = reload_to(
        &control,
        &path,
        &hello_file(3, &["127.0.0.1:0"], "two", "b"),
        3,
    );
    assert_eq!(
        changed(&release),
        [
            "workers 2 → 3",
            "command arguments changed",
            "env MARK changed"
        ]
    );
    master.stop_cleanly();
}

#[test]
fn after_an_aborted_reload_the_same_file_fixed_applies_whole() {
    let dir = TempDir::new("config-aborted");
    let path = dir.path("app.toml");
    let (p1, p2) = (free_port(), free_port());
    let (a1, a2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let (mut master, control) = hello_master(&dir, &path, &hello_file(2, &[&a1], "one", "a"), &[]);
    // Three workers on two addresses, of a release that dies at start.
    let broken =
        hello_file(3, &[&a1, &a2], "two", "a").replace(&example("hello"), &example("test_worker"));
    let broken = broken.replace("\"two\"]", "\"--exit\", \"1\"]");
    std::fs::write(&path, &broken).unwrap();
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 1, "{out}{err}");
    let closed = master.expect_msg("listener closed");
    assert_eq!(closed["addr"], a2);
    assert!(refused(addr(p2)));
    assert_eq!(pids(&control).len(), 2, "the count before");
    // The same addresses and count, with a release that runs.
    let release = reload_to(&control, &path, &hello_file(3, &[&a1, &a2], "two", "a"), 3);
    assert!(
        changed(&release).contains(&"command changed".to_string()),
        "{release}"
    );
    let answer = get_once(addr(p2), WAIT).expect("the second address answers");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    master.stop_cleanly();
}
