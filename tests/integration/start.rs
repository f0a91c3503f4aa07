//! Starting: N workers share one socket, each with the systemd environment
//! and nothing else of the master's.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{
    Master, TempDir, environ, example, fd_target, http, open_fds, path_str, wait_until,
};

#[test]
fn workers_serve_on_one_port_each_with_its_own_listen_pid_and_names() {
    let hello = example("hello");
    let mut master = Master::start(&["-w", "3", "--listen", "web=127.0.0.1:0", "--", &hello]);
    let addr = master.listening();
    let workers = master.ready_workers();
    assert_eq!(workers.iter().map(|w| w.0).collect::<Vec<_>>(), [0, 1, 2]);
    for &(slot, pid) in &workers {
        assert_eq!(environ(pid, "LISTEN_PID"), Some(pid.to_string()));
        assert_eq!(environ(pid, "LISTEN_FDS").as_deref(), Some("1"));
        assert_eq!(environ(pid, "LISTEN_FDNAMES").as_deref(), Some("web"));
        assert_eq!(environ(pid, "RCLUSTER_WORKER_ID"), Some(slot.to_string()));
        assert_eq!(environ(pid, "RCLUSTER_GENERATION").as_deref(), Some("1"));
    }
    let pids: BTreeSet<i32> = workers.iter().map(|w| w.1).collect();
    for _ in 0..20 {
        let response = http::get(addr, "/").expect("a response");
        assert_eq!(response.status, 200);
        let pid = response.pid().expect("hello names its pid");
        assert!(
            pids.contains(&pid),
            "answered by {pid}, not one of {pids:?}"
        );
    }
}

#[test]
fn a_worker_holds_only_stdio_and_the_listeners() {
    let dir = TempDir::new("fds");
    let sock = dir.path("app.sock");
    let unix = format!("unix:{}", path_str(&sock));
    // coreutils sleep: a worker that opens nothing and sets no signal
    // handler of its own, so what /proc shows is what rcluster handed over.
    // `sleep` serves nothing: ready when exec'd.
    let mut master = Master::start(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "-l",
        &unix,
        "--ready",
        "exec",
        "--",
        "sleep",
        "3600",
    ]);
    let (_, pid) = master.ready_workers()[0];
    // The exec pipe reports exec as soon as its own end closes; the kernel
    // may still be closing the worker's other close-on-exec fds, and sleep
    // may briefly open locale files. So wait (bounded) for the settled set.
    let expected = [0, 1, 2, 3, 4];
    let settled = wait_until(Duration::from_secs(5), || open_fds(pid) == expected);
    assert!(
        settled,
        "fd 3 and 4 are the listeners and nothing else leaks; found {:?}",
        open_fds(pid)
    );
    assert!(fd_target(pid, 3).starts_with("socket:"));
    assert!(fd_target(pid, 4).starts_with("socket:"));
    assert_eq!(
        environ(pid, "LISTEN_FDNAMES").as_deref(),
        Some("tcp-0:unix-1")
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap()
            .to_string()
    };
    assert_eq!(field("SigBlk:"), "0000000000000000", "signal mask reset");
    assert_eq!(
        field("SigIgn:"),
        "0000000000000000",
        "dispositions reset, SIGPIPE too"
    );
    let pgid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let pgid: i32 = pgid
        .rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pgid, pid, "each worker leads its own process group");
}

#[test]
fn options_are_read_from_rcluster_environment_variables() {
    let worker = example("test_worker");
    let mut master = Master::start_with(&["--", &worker], |cmd| {
        cmd.env("RCLUSTER_WORKERS", "2")
            .env("RCLUSTER_LISTEN", "env=127.0.0.1:0");
    });
    let listening = master.expect_msg("listening");
    assert_eq!(listening["listener"], "env");
    assert_eq!(master.ready_workers().len(), 2);
}

#[test]
fn the_pid_file_holds_the_master_pid_and_is_removed_on_exit() {
    let dir = TempDir::new("pidfile");
    let pid_file = dir.path("rcluster.pid");
    let worker = example("test_worker");
    let mut master = Master::start(&["-w", "1", "--pid-file", path_str(&pid_file), "--", &worker]);
    master.ready_workers();
    let written = std::fs::read_to_string(&pid_file).expect("the pid file exists");
    assert_eq!(written.trim(), master.pid.to_string());
    master.signal(libc::SIGTERM);
    assert!(master.wait_exit().success());
    assert!(!pid_file.exists(), "removed on exit");
}
