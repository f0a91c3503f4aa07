//! Listeners besides IPv4: Unix sockets (stale files replaced, live ones
//! refused, the file removed on exit) and IPv6.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};

use crate::support::{Master, TempDir, example, http, path_str, rcluster};

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
