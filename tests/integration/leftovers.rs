//! Nothing a worker started outlives it: its process group goes with it,
//! processes that left the group come back to the master (a child
//! subreaper), and the master stops them all before it exits. What still
//! escapes without cgroups is shown here too.

use std::path::Path;

use crate::support::{Master, TempDir, WAIT, example, is_gone, path_str, wait_until};

/// The pids in `file`, one per line.
fn pids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The session `pid` is in.
fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    // state, ppid, pgrp, session
    rest.split(' ').nth(3)?.parse().ok()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// A worker that leaves `sleep`s behind: one in its process group, one
/// double-forked into a session of its own, and (with `clean_env`) one
/// that also drops its environment. Their pids go to `file`.
fn leaving_behind(file: &Path, clean_env: bool) -> String {
    let file = path_str(file);
    let mut script = format!(
        "sleep 1000 & echo $! >> {file}; \
         (setsid sleep 1000 & echo $! >> {file});"
    );
    if clean_env {
        script.push_str(&format!(" (env -i setsid sleep 1001 & echo $! >> {file});"));
    }
    script.push_str(&format!(" exec {}", example("hello")));
    script
}

#[test]
fn what_a_worker_started_goes_with_it_on_a_crash_and_at_shutdown() {
    let dir = TempDir::new("leftovers");
    let file = dir.path("pids");
    let script = leaving_behind(&file, false);
    let mut master = Master::start(&["-w", "1", "-l", "127.0.0.1:0", "--", "sh", "-c", &script]);
    let addr = master.listening();
    let first = master.ready_workers()[0].1;
    assert!(wait_until(WAIT, || pids(&file).len() == 2));
    let before_crash = pids(&file);
    // The double-forked one has left the worker's group: only the master's
    // search for what the worker left behind can find it, once it came back
    // to the master (its parent, the subshell, exited). One whose parent
    // still lives when the worker crashes is found only at shutdown: the
    // search runs once, at the crash (a known limit, docs/security.md).
    assert!(wait_until(WAIT, || session_of(before_crash[1])
        == Some(before_crash[1])));
    assert!(wait_until(WAIT, || parent_of(before_crash[1]) == Some(master.pid)));
    // A crash: its group and its double-forked child go too.
    // SAFETY: killing a worker this test started.
    unsafe { libc::kill(first, libc::SIGKILL) };
    master.expect("the replacement", |r| {
        r["msg"] == "worker ready" && r["pid"] != first
    });
    for pid in &before_crash {
        assert!(
            wait_until(WAIT, || is_gone(*pid)),
            "pid {pid}, started by the crashed worker, is still running"
        );
    }
    assert!(wait_until(WAIT, || pids(&file).len() == 4));
    let after_restart = pids(&file)[2..].to_vec();
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
    for pid in &after_restart {
        assert!(is_gone(*pid), "pid {pid} outlived the master");
    }
    // Nothing holds the port.
    std::net::TcpListener::bind(addr).expect("the port is free once the master is gone");
}

#[test]
fn the_documented_limit_a_process_that_drops_its_environment_waits_for_shutdown() {
    // Without cgroups, a process that left the worker's group *and* dropped
    // the environment it was given cannot be told apart from the master's
    // other children while the master runs: it survives the worker's crash
    // (README, "What still escapes"), and is stopped with the master.
    let dir = TempDir::new("leftovers-limit");
    let file = dir.path("pids");
    let script = leaving_behind(&file, true);
    let mut master = Master::start(&["-w", "1", "-l", "127.0.0.1:0", "--", "sh", "-c", &script]);
    let first = master.ready_workers()[0].1;
    assert!(wait_until(WAIT, || pids(&file).len() == 3));
    let escaped = pids(&file)[2];
    // Once it has its own session, it is out of the worker's group.
    assert!(wait_until(WAIT, || session_of(escaped) == Some(escaped)));
    // SAFETY: killing a worker this test started.
    unsafe { libc::kill(first, libc::SIGKILL) };
    master.expect("the replacement", |r| {
        r["msg"] == "worker ready" && r["pid"] != first
    });
    for pid in &pids(&file)[..2] {
        assert!(wait_until(WAIT, || is_gone(*pid)), "pid {pid} still runs");
    }
    assert!(
        !is_gone(escaped),
        "the documented limit: it survives a crash"
    );
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
    assert!(is_gone(escaped), "it is stopped with the master");
}

#[test]
fn a_worker_that_said_stopping_is_stopped_at_shutdown_at_once() {
    let worker = example("test_worker");
    let mut master = Master::start(&[
        "-w",
        "1",
        "--stop-timeout",
        "60s",
        "--",
        &worker,
        "--say-stopping",
    ]);
    let stopping = master.expect_msg("worker stopping");
    let pid = stopping["pid"].as_i64().unwrap();
    master.signal(libc::SIGTERM);
    let exited = master.expect("its exit", |r| {
        r["msg"] == "worker exited" && r["pid"] == pid
    });
    // It took its TERM and returned (test_worker exits 0), long before the
    // stop timeout would have killed it.
    assert_eq!(exited["code"], 0, "{exited}");
    assert_eq!(exited["killed_by_rcluster"], false, "{exited}");
    // Well inside --stop-timeout (60s): the harness waits 20s at most.
    assert_eq!(master.wait_exit().code(), Some(0));
}
