//! Safe by default: every promise holds with the default flags. A release
//! that crashes soon after start never replaces a good one; a crash loop is
//! caught however slowly the app boots; a reload does not wait out a
//! backoff; a command that can never run stops rcluster at start; and a log
//! that cannot be written never takes the service down.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::load::Load;
use crate::support::{
    Master, TempDir, WAIT, environ, example, http, path_str, rcluster, release_switch,
    reload_under_both, status, wait_until,
};

/// `rcluster status --json` against `control`.
#[test]
fn a_release_that_dies_200ms_after_start_never_replaces_the_good_one() {
    // The seed story: new code that crashes 200 ms after start (a missing
    // variable), deployed with the default flags.
    let dir = TempDir::new("seed");
    let flag = dir.path("release");
    let control = path_str(&dir.path("control.sock")).to_string();
    std::fs::write(&flag, "good").unwrap();
    let bad = "sleep 0.2; echo 'DATABASE_URL is not set' >&2; exit 1";
    let script = release_switch(&flag, bad);
    let mut master = Master::start(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--control",
        &control,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let addr = master.listening();
    let old: Vec<i32> = master.ready_workers().into_iter().map(|w| w.1).collect();
    let load = Load::start(addr, 8, true);
    load.wait_for_more(100);

    std::fs::write(&flag, "bad").unwrap();
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 1, "reload --wait of a bad release: {out}{err}");
    assert!(err.contains("reload aborted"), "{err}");
    let aborted = master.expect_msg("reload aborted");
    assert!(
        aborted["cause"]
            .as_str()
            .unwrap()
            .contains("exited with code 1"),
        "{aborted}"
    );
    load.wait_for_more(100);
    for pid in &old {
        assert!(!crate::support::is_gone(*pid), "old worker {pid} is gone");
    }
    let st = status(&control);
    assert_eq!(st["master"]["serving_generations"], serde_json::json!([1]));
    assert_eq!(st["master"]["generation"], 2);
    // The failed new worker's exit is on a row of its own, not on the row
    // of the old worker still serving in its slot (it was, once).
    let rows = st["workers"].as_array().unwrap();
    for row in rows.iter().filter(|r| r["generation"] == 1) {
        assert_eq!(row["last_exit"], Value::Null, "{row}");
    }
    let exited: Vec<_> = rows.iter().filter(|r| r["state"] == "exited").collect();
    assert_eq!(exited.len(), 1, "{rows:?}");
    assert_eq!(exited[0]["generation"], 2);
    assert_eq!(exited[0]["last_exit"], "code 1");
    assert_eq!(exited[0]["last_exit_line"], "DATABASE_URL is not set");

    std::fs::write(&flag, "good").unwrap();
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reload complete: generation 3"), "{out}");
    load.wait_for_more(100);
    let stats = load.finish();
    assert_eq!(stats.failed(), 0, "{:?}", stats.errors);
}

/// A reload under load loses nothing with the default flags (`--ready
/// auto`, the canary's 2 s hold), counted by wrk and by the project's
/// client at once; the other load tests shorten the hold they do not test.
#[test]
fn reloads_with_the_default_flags_lose_nothing() {
    let hello = example("hello");
    let mut master = Master::start(&["-w", "2", "-l", "127.0.0.1:0", "--", &hello]);
    reload_under_both(&mut master, 2, true, 4, true);
    master.stop_cleanly();
}

#[test]
fn a_slow_boot_then_a_crash_backs_off_and_max_restarts_gives_up() {
    // Ready after 1.2 s, exit 200 ms later: more than --min-uptime since
    // start, but a crash loop all the same.
    let worker = example("test_worker");
    let mut master = Master::start(&[
        "-w",
        "1",
        "--max-restarts",
        "3",
        "--",
        &worker,
        "--ready-after",
        "1200",
        "--exit-after",
        "200",
    ]);
    let mut delays = Vec::new();
    for _ in 0..3 {
        let exited = master.expect_msg("worker exited");
        assert_eq!(exited["next"], "restart", "{exited}");
        delays.push(exited["restart_in_ms"].as_u64().unwrap());
    }
    assert_eq!(delays, [100, 200, 400]);
    master.expect_msg("giving up");
    assert_eq!(master.wait_exit().code(), Some(1));
}

#[test]
fn a_reload_during_a_long_backoff_starts_the_new_generation_now() {
    let worker = example("test_worker");
    let mut master = Master::start(&[
        "-w",
        "1",
        "--restart-delay",
        "10s",
        "--",
        &worker,
        "--exit",
        "1",
    ]);
    let exited = master.expect_msg("worker exited");
    assert_eq!(exited["restart_in_ms"], 10_000, "{exited}");
    master.signal(libc::SIGHUP);
    let records = master.collect_until("the new generation spawned", |r| {
        r["msg"] == "worker spawned" && r["generation"] == 2
    });
    let cut = records
        .iter()
        .find(|r| r["msg"] == "backoff cut")
        .expect("the backoff cut is logged");
    assert!(cut["was_due_in_ms"].as_u64().unwrap() > 5000, "{cut}");
    // Spawned in the same turn as the HUP: the master's own timestamps.
    let at =
        |r: &Value| humantime::parse_rfc3339(r["ts"].as_str().unwrap()).expect("an RFC 3339 time");
    let started = records
        .iter()
        .find(|r| r["msg"] == "reload started")
        .unwrap();
    let spawned = records.last().unwrap();
    let took = at(spawned).duration_since(at(started)).unwrap_or_default();
    assert!(
        took < Duration::from_secs(1),
        "the new generation waited {took:?}"
    );
}

#[test]
fn a_script_without_a_shebang_stops_rcluster_at_start_with_126() {
    let dir = TempDir::new("noexec");
    let script = dir.path("server");
    std::fs::write(&script, "echo I am not a program\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out, err) = rcluster(&["-l", "127.0.0.1:0", "--", path_str(&script)]);
    assert_eq!(code, 126, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(path_str(&script)) && err.contains("#!/bin/sh"),
        "names the file and the fix: {err}"
    );
    assert!(!err.contains("worker spawned"));
}

#[test]
fn a_binary_the_kernel_refuses_stops_rcluster_with_126_after_its_first_try() {
    // An ELF file for no machine passes the start-up check; the first exec
    // fails with ENOEXEC, and no worker ever ran: stop, do not loop.
    let dir = TempDir::new("badelf");
    let binary = dir.path("server");
    let mut elf = b"\x7fELF".to_vec();
    elf.extend([0u8; 60]);
    std::fs::write(&binary, elf).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut master = Master::start(&["-w", "2", "--", path_str(&binary)]);
    let status = master.wait_exit();
    assert_eq!(status.code(), Some(126));
    let log = master.log_text();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("rcluster: cannot run") && last.contains("ENOEXEC"),
        "{log}"
    );
    assert_eq!(
        log.matches("\"worker spawned\"").count(),
        2,
        "no restart loop"
    );
}

/// rcluster with `stderr` as its stderr, killed (with its workers, by
/// PDEATHSIG) when the guard drops; up once `control` says all are ready.
fn start(args: &[&str], control: &str, stderr: Stdio) -> KillOnDrop {
    let child = std::process::Command::new(crate::support::rcluster_bin())
        .args(["--control", control])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starting rcluster");
    let guard = KillOnDrop(child);
    let up = wait_until(WAIT, || {
        std::os::unix::net::UnixStream::connect(control).is_ok()
            && status(control)["master"]["all_ready"] == true
    });
    assert!(up, "the master did not come up");
    guard
}

/// The TCP address the master listens on, as `status` says.
fn listening(control: &str) -> std::net::SocketAddr {
    status(control)["master"]["listeners"][0]["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("a TCP listener")
}

/// Kills a worker and waits until its slot serves again, through the
/// control socket (the log may be unreadable).
fn crash_one_and_see_it_restarted(control: &str) {
    let before = status(control);
    let victim = before["workers"][0]["pid"].as_i64().unwrap() as i32;
    // SAFETY: killing a worker this test started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let restarted = wait_until(WAIT, || {
        let st = status(control);
        st["master"]["all_ready"] == true
            && st["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["pid"].as_i64() != Some(victim.into()))
    });
    assert!(restarted, "the killed worker was not replaced");
    let response = http::get(listening(control), "/").expect("the service answers");
    assert_eq!(response.status, 200);
}

/// Stops the master with TERM and expects exit 0.
fn stop(mut guard: KillOnDrop) {
    // SAFETY: signalling the master this test started.
    unsafe { libc::kill(guard.0.id() as i32, libc::SIGTERM) };
    let exited = wait_until(WAIT, || matches!(guard.0.try_wait(), Ok(Some(_))));
    assert!(exited, "the master did not stop");
    assert_eq!(guard.0.wait().unwrap().code(), Some(0));
}

#[test]
fn a_log_file_on_a_full_disk_loses_lines_but_not_the_service() {
    let dir = TempDir::new("devfull");
    let control = path_str(&dir.path("control.sock")).to_string();
    let hello = example("hello");
    let args = [
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--log-file",
        "/dev/full",
        "--",
        &hello,
    ];
    let master = start(&args, &control, Stdio::null());
    crash_one_and_see_it_restarted(&control);
    let lost = status(&control)["master"]["log_lines_lost"]
        .as_u64()
        .unwrap();
    assert!(lost >= 5, "{lost} lines lost");
    stop(master);
}

#[test]
fn a_closed_stderr_loses_lines_but_not_the_service() {
    // `rcluster ... 2>&1 | head -1`: the reader goes away.
    let dir = TempDir::new("closed-stderr");
    let control = path_str(&dir.path("control.sock")).to_string();
    let hello = example("hello");
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let args = ["-w", "2", "-l", "127.0.0.1:0", "--", &hello];
    let master = start(&args, &control, Stdio::from(write));
    drop(read);
    crash_one_and_see_it_restarted(&control);
    let lost = status(&control)["master"]["log_lines_lost"]
        .as_u64()
        .unwrap();
    assert!(lost >= 3, "{lost} lines lost");
    stop(master);
}

#[test]
fn a_stalled_reader_loses_lines_and_is_told_when_it_reads_again() {
    // The master's stderr is a pipe this test does not read for a while.
    let dir = TempDir::new("stalled");
    let control = path_str(&dir.path("control.sock")).to_string();
    let worker = example("test_worker");
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).unwrap();
    // The master's end blocks as any inherited stderr would.
    nix::fcntl::fcntl(
        &write,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .unwrap();
    let args = [
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "-w",
        "1",
        "--",
        &worker,
        "--ready-after",
        "0",
    ];
    let master = start(&args, &control, Stdio::from(write));
    // Each datagram from a process that is not a worker is a debug record:
    // 4000 of them are more than the pipe and the master's backlog hold.
    let worker_pid = status(&control)["workers"][0]["pid"].as_i64().unwrap() as i32;
    let socket = environ(worker_pid, "NOTIFY_SOCKET").expect("the worker's NOTIFY_SOCKET");
    let addr = std::os::unix::net::SocketAddr::from_pathname(&socket).unwrap();
    let sender = UnixDatagram::unbound().unwrap();
    let padding = "x".repeat(200);
    for _ in 0..4000 {
        let _ = sender.send_to_addr(format!("STATUS={padding}").as_bytes(), &addr);
    }
    let lost = wait_until(WAIT, || {
        status(&control)["master"]["log_lines_lost"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    assert!(lost, "nothing was lost, though nobody read");
    // Read again: once lines get through, a record says how many were lost.
    let mut pipe = std::fs::File::from(read);
    let mut seen = String::new();
    let mut buf = vec![0u8; 1 << 16];
    let told = wait_until(WAIT, || {
        let _ = sender.send_to_addr(b"STATUS=again", &addr);
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        seen.contains("\"msg\":\"log lines lost\"")
    });
    assert!(told, "no record of the lost lines");
    stop(master);
}

/// Kills the process when dropped, even if the test fails (its workers
/// die with it: PDEATHSIG).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
