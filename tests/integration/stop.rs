//! Stopping: graceful on TERM (requests in flight finish, however many
//! TERMs arrive), forced after the stop timeout or a second INT, immediate
//! on QUIT; a worker stopped with SIGSTOP is continued and drains; a
//! master killed with SIGKILL is a graceful stop, bounded by the stop
//! timeout.
//!
//! Workers started with `--ignore-stop` say READY=1 once they ignore their
//! stop signal (`--ready notify`), so no stop can reach them before.

use std::time::Duration;

use crate::support::{Master, example, http, is_gone, wait_until};

#[test]
fn term_lets_a_request_in_flight_finish_then_exits_zero() {
    let hello = example("hello");
    let mut master = Master::start(&["-w", "2", "-l", "127.0.0.1:0", "--", &hello]);
    let addr = master.listening();
    master.ready_workers();
    // Prove the connection is established with a worker, then start a slow
    // request on it and stop the master while it runs.
    let mut conn = http::Conn::new(http::connect(addr).unwrap()).unwrap();
    assert_eq!(conn.request("/", false).unwrap().status, 200);
    let slow = std::thread::spawn(move || conn.request("/sleep/1500", false));
    master.signal(libc::SIGTERM);
    master.expect_msg("stop requested");
    let response = slow
        .join()
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(response.status, 200);
    assert!(
        response.close,
        "a draining worker closes the connection after it"
    );
    let status = master.wait_exit();
    assert_eq!(status.code(), Some(0));
    let log = master.log_text();
    assert!(!log.contains("SIGKILL"), "nothing was killed:\n{log}");
}

/// A worker asked to drain that exits non-zero (the README's old Go
/// snippet did, at `ln.Close()`) probably lost requests: a WARN with its
/// last line on stderr, not an INFO.
#[test]
fn a_drain_that_fails_is_a_warning_with_the_workers_last_words() {
    // Ready once the trap is set: a TERM before it (under `--ready exec`,
    // 7 ms after the exec once) would kill the shell outright.
    let script = "trap 'echo \"close tcp: use of closed network connection\" >&2; exit 1' TERM; \
                  rcluster notify --ready; while :; do sleep 0.05; done";
    let mut master = Master::start(&["-w", "1", "--ready", "notify", "--", "sh", "-c", script]);
    master.ready_workers();
    master.signal(libc::SIGTERM);
    let exited = master.expect_msg("worker exited");
    assert_eq!(exited["level"], "WARN", "{exited}");
    assert_eq!(exited["reason"], "shutdown", "{exited}");
    assert_eq!(
        exited["last_line"], "close tcp: use of closed network connection",
        "{exited}"
    );
    master.wait_exit();
}

#[test]
fn a_worker_that_ignores_its_stop_signal_is_killed_after_the_stop_timeout() {
    let worker = example("test_worker");
    let mut master = Master::start(&[
        "-w",
        "2",
        "--ready",
        "notify",
        "--stop-timeout",
        "300ms",
        "--",
        &worker,
        "--ignore-stop",
    ]);
    master.ready_workers();
    master.signal(libc::SIGTERM);
    master.expect_msg("stop timeout");
    let exited = master.expect_msg("worker exited");
    assert_eq!(exited["signal"], "SIGKILL");
    assert_eq!(exited["killed_by_rcluster"], true);
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn a_second_int_stops_at_once() {
    // A person pressing Ctrl-C twice means it.
    let worker = example("test_worker");
    let mut master = Master::start(&[
        "-w",
        "2",
        "--ready",
        "notify",
        "--stop-timeout",
        "1h",
        "--",
        &worker,
        "--ignore-stop",
    ]);
    master.ready_workers();
    master.signal(libc::SIGINT);
    master.expect("graceful stop", |r| {
        r["msg"] == "stop requested" && r["graceful"] == true
    });
    master.signal(libc::SIGINT);
    master.expect("forced stop", |r| {
        r["msg"] == "stop requested" && r["graceful"] == false
    });
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn term_twice_within_a_millisecond_stays_graceful() {
    // timeout(1), systemd and the kubelet may send TERM to the pid and to
    // its process group at once; and again later.
    let hello = example("hello");
    let mut master = Master::start(&["-w", "2", "-l", "127.0.0.1:0", "--", &hello]);
    let addr = master.listening();
    master.ready_workers();
    let mut conn = http::Conn::new(http::connect(addr).unwrap()).unwrap();
    assert_eq!(conn.request("/", false).unwrap().status, 200);
    let slow = std::thread::spawn(move || conn.request("/sleep/2000", false));
    // SAFETY: signalling the master this test started, and its group.
    unsafe {
        libc::kill(master.pid, libc::SIGTERM);
        libc::kill(-master.pid, libc::SIGTERM);
    }
    master.expect("graceful stop", |r| {
        r["msg"] == "stop requested" && r["graceful"] == true
    });
    master.signal(libc::SIGTERM);
    let ignored = master.expect_msg("signal ignored");
    assert_eq!(ignored["signal"], "SIGTERM");
    let response = slow
        .join()
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(response.status, 200);
    assert_eq!(master.wait_exit().code(), Some(0));
    let log = master.log_text();
    assert!(!log.contains("\"graceful\":false"), "forced:\n{log}");
    assert!(!log.contains("SIGKILL"), "nothing was killed:\n{log}");
}

#[test]
fn quit_stops_at_once() {
    let worker = example("test_worker");
    let mut master = Master::start(&[
        "-w",
        "2",
        "--ready",
        "notify",
        "--stop-timeout",
        "1h",
        "--",
        &worker,
        "--ignore-stop",
    ]);
    let workers = master.ready_workers();
    master.signal(libc::SIGQUIT);
    assert_eq!(master.wait_exit().code(), Some(0));
    assert!(workers.iter().all(|&(_, pid)| is_gone(pid)));
}

/// Workers that ignore their stop signal outlive a master killed with
/// SIGKILL by `--stop-timeout` at most: the undertaker kills them then.
#[test]
fn no_worker_outlives_a_master_killed_with_sigkill_by_more_than_the_stop_timeout() {
    let worker = example("test_worker");
    let mut master = Master::start(&[
        "-w",
        "3",
        "--ready",
        "notify",
        "--stop-timeout",
        "1s",
        "--",
        &worker,
        "--ignore-stop",
    ]);
    let workers = master.ready_workers();
    master.signal(libc::SIGKILL);
    master.wait_exit();
    let all_gone = wait_until(Duration::from_secs(10), || {
        workers.iter().all(|&(_, pid)| is_gone(pid))
    });
    assert!(
        all_gone,
        "workers still running 10 s after the master died (--stop-timeout 1s): {workers:?}"
    );
}

/// The master's death is a graceful stop (#35): `kill -9` of the master
/// with requests of 300 ms in flight on both workers: each is answered,
/// every worker is gone within `--stop-timeout`, and a new master started
/// on the same address serves. Before, the workers died with the master
/// (SIGKILL) and the requests were reset.
#[test]
fn a_master_killed_with_sigkill_lets_its_workers_finish_what_they_hold() {
    let listen = format!("127.0.0.1:{}", crate::support::free_port());
    let hello = example("hello");
    let args = [
        "-w",
        "2",
        "--stop-timeout",
        "5s",
        "-l",
        &listen,
        "--",
        &hello,
    ];
    let mut master = Master::start(&args);
    let addr = master.listening();
    let workers = master.ready_workers();
    // Each connection proven taken by a worker (a first answer), then a
    // slow request on it.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let mut conn = http::Conn::new(http::connect(addr).unwrap()).unwrap();
            assert_eq!(conn.request("/", false).unwrap().status, 200);
            std::thread::spawn(move || conn.request("/sleep/300", false))
        })
        .collect();
    master.signal(libc::SIGKILL);
    master.wait_exit();
    for request in slow {
        let response = request
            .join()
            .unwrap()
            .expect("a request in flight when the master died is answered");
        assert_eq!(response.status, 200);
    }
    let all_gone = wait_until(Duration::from_secs(10), || {
        workers.iter().all(|&(_, pid)| is_gone(pid))
    });
    assert!(all_gone, "workers outlived --stop-timeout: {workers:?}");
    let started = std::time::Instant::now();
    let mut next = Master::start(&args);
    assert_eq!(next.listening(), addr, "the same address, bound again");
    next.ready_workers();
    assert_eq!(http::get(addr, "/").unwrap().status, 200);
    eprintln!(
        "a new master served {:?} after its start",
        started.elapsed()
    );
    next.stop_cleanly();
}

#[test]
fn a_worker_stopped_with_sigstop_shows_as_stopped_and_still_drains() {
    let dir = crate::support::TempDir::new("sigstop");
    let control = dir.path("control.sock");
    let control = crate::support::path_str(&control);
    let hello = example("hello");
    let args = [
        "-w",
        "1",
        "--stop-timeout",
        "60s",
        "--control",
        control,
        "-l",
        "127.0.0.1:0",
        "--",
        &hello,
    ];
    let mut master = Master::start(&args);
    let (_, pid) = master.ready_workers()[0];
    // SAFETY: stopping the worker this test's master started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let state = || {
        let (_, out, _) = crate::support::rcluster(&["status", "--json", "--control", control]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["workers"][0]["state"].clone()
    };
    assert!(wait_until(Duration::from_secs(5), || state() == "stopped"));
    // Its stop signal is followed by SIGCONT: it drains at once, not after
    // the 60 s stop timeout.
    master.signal(libc::SIGTERM);
    let exit = master.expect_msg("worker exited");
    assert_eq!(exit["pid"], pid, "{exit}");
    assert_eq!(exit["code"], 0, "it ended on its own stop signal: {exit}");
    assert_eq!(master.wait_exit().code(), Some(0));
}
