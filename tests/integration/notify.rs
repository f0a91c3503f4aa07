//! The notify protocol around rcluster: the watchdog for workers, and
//! rcluster itself under systemd (its readiness, and sockets it is given).

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

use crate::support::{Master, TempDir, WAIT, environ, example, http, pass_as_fd_3, path_str};

#[test]
fn a_worker_that_stops_pinging_the_watchdog_is_replaced() {
    let worker = example("test_worker");
    let mut master = Master::start(&[
        "-w",
        "1",
        "--watchdog",
        "400ms",
        "--",
        &worker,
        "--watchdog-for",
        "1000",
    ]);
    let (slot, pid) = master.ready_workers()[0];
    assert_eq!(environ(pid, "WATCHDOG_USEC").as_deref(), Some("400000"));
    assert_eq!(environ(pid, "WATCHDOG_PID"), Some(pid.to_string()));
    let timeout = master.expect_msg("watchdog timeout");
    assert_eq!(timeout["pid"], pid);
    let spawned = master.expect_msg("worker spawned");
    assert_eq!(spawned["slot"], slot);
    assert_ne!(spawned["pid"], pid);
    let exited = master.expect(&format!("pid {pid} exit"), |r| {
        r["msg"] == "worker exited" && r["pid"] == pid
    });
    assert_eq!(exited["signal"], "SIGABRT");
}

/// Reads datagrams until one contains `what`.
fn expect_datagram(socket: &UnixDatagram, what: &str) -> String {
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no {what} from rcluster");
        socket.set_read_timeout(Some(left)).unwrap();
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.contains(what) {
            return text;
        }
    }
}

#[test]
fn under_systemd_rcluster_reports_ready_reloading_and_stopping() {
    let dir = TempDir::new("systemd-notify");
    let path = dir.path("notify");
    let systemd = UnixDatagram::bind(&path).unwrap();
    let worker = example("test_worker");
    let mut master = Master::start_with(&["-w", "2", "--", &worker], |cmd| {
        cmd.env("NOTIFY_SOCKET", &path);
    });
    let workers = master.ready_workers();
    expect_datagram(&systemd, "READY=1");
    // Workers get rcluster's own socket, never systemd's.
    let theirs = environ(workers[0].1, "NOTIFY_SOCKET").unwrap();
    assert_ne!(theirs, path_str(&path));
    master.signal(libc::SIGHUP);
    let reloading = expect_datagram(&systemd, "RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    expect_datagram(&systemd, "READY=1");
    // A live upgrade of the master is a reload of the unit: the same pid
    // says RELOADING=1, then READY=1 from the new image.
    master.signal(libc::SIGUSR2);
    expect_datagram(&systemd, "RELOADING=1");
    expect_datagram(&systemd, "READY=1");
    master.expect_msg("upgraded");
    master.signal(libc::SIGTERM);
    expect_datagram(&systemd, "STOPPING=1");
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn sockets_passed_with_listen_fds_are_adopted_instead_of_bound() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let hello = example("hello");
    // systemd-style: the socket at fd 3, LISTEN_PID naming rcluster itself.
    let mut master = Master::start_via(
        "sh",
        &[
            "-c",
            "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec \"$@\"",
            "sh",
        ],
        &["-w", "2", "--", &hello],
        |cmd| pass_as_fd_3(cmd, fd),
    );
    let listening = master.expect_msg("listening");
    assert_eq!(listening["listener"], "web");
    assert_eq!(listening["addr"], addr.to_string());
    let workers = master.ready_workers();
    assert_eq!(
        environ(workers[0].1, "LISTEN_FDNAMES").as_deref(),
        Some("web")
    );
    drop(listener);
    let response = http::get(addr, "/").expect("served on the adopted socket");
    assert_eq!(response.status, 200);
}

/// The `worker ready` records of a master whose workers all say READY=1
/// with `client`, under `--ready notify` and under the default.
fn ready_by_notify(name: &str, command: &[&str]) {
    for rule in ["notify", "auto"] {
        let mut args = vec!["-w", "2", "-l", "127.0.0.1:0", "--ready", rule, "--"];
        args.extend_from_slice(command);
        let mut master = Master::start_with(&args, |cmd| {
            cmd.env("PATH", crate::support::installs::path_with_python());
        });
        master.listening();
        let records = master.collect_until("workers ready", |r| r["msg"] == "workers ready");
        let ready: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["msg"] == "worker ready")
            .collect();
        assert_eq!(ready.len(), 2, "{name} under {rule}");
        for record in ready {
            assert_eq!(
                record["ready_by"], "READY=1",
                "{name} under {rule}: {record}"
            );
        }
        master.stop_cleanly();
    }
}

#[test]
fn every_sd_notify_client_reaches_the_master() {
    // Rust's sd-notify crate (it takes NOTIFY_SOCKET for a path), in an
    // axum server built the usual way.
    ready_by_notify("the sd-notify crate", &[&example("axum_hello")]);
    // Python's sdnotify package.
    let python = "import socket, sdnotify, time; \
                  s = socket.socket(fileno=3); \
                  sdnotify.SystemdNotifier(debug=True).notify('READY=1'); \
                  time.sleep(3600)";
    ready_by_notify("Python's sdnotify", &["python3", "-c", python]);
    // systemd's helper, and rcluster's own, from a shell (a helper process:
    // MAINPID and BARRIER are how their word reaches the worker's).
    ready_by_notify(
        "systemd-notify",
        &[
            "sh",
            "-c",
            "systemd-notify --ready --pid=$$ && exec sleep 3600",
        ],
    );
    ready_by_notify(
        "rcluster notify",
        &["sh", "-c", "rcluster notify --ready && exec sleep 3600"],
    );
    // Go's net.DialUnix, in the Go example.
    if let Some(go) = crate::support::installs::go_server() {
        ready_by_notify("Go's net.DialUnix", &[go.to_str().unwrap()]);
    }
}
