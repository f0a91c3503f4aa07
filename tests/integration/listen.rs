//! Listeners besides IPv4: Unix sockets (stale files replaced, live ones
//! refused, the file removed on exit) and IPv6.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use crate::support::{Master, TempDir, example, http, open_fds, path_str, rcluster, wait_until};

#[test]
fn a_unix_socket_listener_replaces_a_stale_file_and_removes_it_on_exit() {
    let dir = TempDir::new("unix");
    let sock = dir.path("app.sock");
    // A stale socket file: bound once, nobody listening any more.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let listen = format!("api=unix:{}", path_str(&sock));
    let worker = example("test_worker");
    let mut master = Master::start(&["-w", "1", "-l", &listen, "--", &worker]);
    assert_eq!(
        master.expect_msg("listening")["addr"],
        format!("unix:{}", path_str(&sock))
    );
    master.ready_workers();
    // The kernel queues a connection on the shared socket.
    UnixStream::connect(&sock).expect("the socket accepts connections");
    // A second master refuses the live socket and leaves it alone.
    let (code, _, stderr) = rcluster(&["-l", &listen, "--", &worker]);
    assert_eq!(code, 71, "{stderr}");
    assert!(
        stderr.contains("a server is already listening on it"),
        "{stderr}"
    );
    assert!(sock.exists());
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
    assert!(!sock.exists(), "the socket file is removed on exit");
}

#[test]
fn an_ipv6_listener_serves_on_loopback() {
    if TcpListener::bind("[::1]:0").is_err() {
        crate::support::skip("this machine has no ::1");
        return;
    }
    let hello = example("hello");
    let mut master = Master::start(&["-w", "1", "-l", "[::1]:0", "--", &hello]);
    let addr: SocketAddr = master.listening();
    assert!(addr.is_ipv6());
    master.ready_workers();
    let response = http::get(addr, "/").expect("a response over IPv6");
    assert_eq!(response.status, 200);
}

/// A reverse proxy that runs as another user (nginx's `www-data`) must be
/// able to connect to a Unix listener: 0666 by default (systemd's
/// `SocketMode=`), `--socket-mode 0600` keeps others out. Before, the file had the
/// master's umask (0755 here): every request through nginx was refused.
#[test]
fn another_user_may_connect_to_a_unix_listener_unless_its_mode_says_not() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 || !std::path::Path::new("/usr/sbin/runuser").exists() {
        crate::support::skip("needs root and runuser to connect as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("unix-mode");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path("app.sock");
    let worker = example("test_worker");
    let connect = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])";
    let listen = format!("unix:{}", path_str(&sock));
    for (mode, allowed) in [("0666", true), ("0600", false)] {
        let args = [
            "-w",
            "1",
            "-l",
            &listen,
            "--socket-mode",
            mode,
            "--",
            &worker,
        ];
        let mut master = Master::start(&args);
        master.ready_workers();
        let args = [
            "-u",
            "nobody",
            "--",
            "python3",
            "-c",
            connect,
            path_str(&sock),
        ];
        let (code, _, err) = crate::support::run("/usr/sbin/runuser", &args);
        assert_eq!(code == 0, allowed, "--socket-mode {mode}: {err}");
        if !allowed {
            assert!(err.contains("PermissionError"), "{err}");
        }
        master.stop_cleanly();
    }
}

/// A worker holds stdin, stdout, stderr and its listeners (at 3, 4, …),
/// nothing else of the master's: a start shares the master's fd table
/// until the child's first call takes a table of its own
/// (`src/launch/spawn/fds.rs`), so this holds for workers started when the
/// master already keeps a pidfd and a pipe per worker, as in a reload.
#[test]
fn a_worker_holds_only_its_stdio_and_listeners() {
    let mut master = Master::start(&[
        "-w",
        "3",
        "-l",
        "127.0.0.1:0",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "exec",
        "--min-ready",
        "0",
        "--",
        "sleep",
        "1000",
    ]);
    let mut pids: Vec<i32> = master.ready_workers().iter().map(|w| w.1).collect();
    master.signal(libc::SIGHUP);
    let reload = master.collect_until("reload complete", |r| r["msg"] == "reload complete");
    pids.extend(
        reload
            .iter()
            .filter(|r| r["msg"] == "worker ready")
            .map(|r| r["pid"].as_i64().unwrap() as i32),
    );
    assert_eq!(pids.len(), 6, "{reload:?}");
    // As in start.rs: sleep may briefly hold a locale file open as it
    // starts (fd 5, seen once), so wait (bounded) for the settled set; a
    // leaked fd never goes.
    for &pid in pids.iter().skip(3) {
        let expected = [0, 1, 2, 3, 4];
        let settled = wait_until(Duration::from_secs(5), || open_fds(pid) == expected);
        assert!(settled, "worker {pid}: {:?}", open_fds(pid));
    }
    master.stop_cleanly();
}
