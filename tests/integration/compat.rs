//! Servers written for other process managers run unchanged: each finds its
//! socket in the variable its manager would have set.

use std::net::SocketAddr;
use std::path::Path;

use crate::support::{Master, http};

/// Runs the fixture in `mode` under rcluster; returns the bound address and
/// its answer.
fn compat_worker(mode: &str) -> (Master, SocketAddr, http::Response) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compat_worker.py");
    let mut master = Master::start(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--",
        "python3",
        script.to_str().unwrap(),
        mode,
    ]);
    let addr = master.listening();
    master.ready_workers();
    let mut response = None;
    crate::support::wait_until(crate::support::WAIT, || {
        response = http::get(addr, "/").ok();
        response.is_some()
    });
    (master, addr, response.expect("the compat worker answered"))
}

#[test]
fn server_starter_workers_find_their_socket_in_server_starter_port() {
    let (_master, addr, response) = compat_worker("server_starter");
    assert_eq!(response.body, format!("server_starter {addr} 1\n"));
}

#[test]
fn einhorn_workers_find_their_socket_in_einhorn_fd_0() {
    let (_master, _, response) = compat_worker("einhorn");
    assert_eq!(response.body, "einhorn 1\n");
}

#[test]
fn pm2_workers_read_their_instance_from_node_app_instance() {
    let (_master, _, response) = compat_worker("pm2");
    assert_eq!(response.body, "pm2 0\n");
}
