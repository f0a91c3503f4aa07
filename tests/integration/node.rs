//! The Node.js example serves under rcluster and drains on SIGTERM.

use std::path::Path;

use crate::support::{Master, http};

#[test]
fn the_node_example_serves_and_stops_cleanly() {
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node/server.js");
    let mut master = Master::start(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--",
        "node",
        server.to_str().unwrap(),
    ]);
    let addr = master.listening();
    let workers = master.ready_workers();
    // Node listens a moment after exec: poll (bounded) until it answers.
    let mut answered = None;
    crate::support::wait_until(crate::support::WAIT, || {
        answered = http::get(addr, "/").ok();
        answered.is_some()
    });
    let response = answered.expect("the node worker never answered");
    assert_eq!(response.status, 200);
    assert!(
        response.body.starts_with("hello from node worker"),
        "{}",
        response.body
    );
    let pid = response.pid().unwrap();
    assert!(workers.iter().any(|w| w.1 == pid));
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
    assert!(!master.log_text().contains("SIGKILL"));
}
