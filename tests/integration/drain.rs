//! How hello drains keep-alive connections: an idle one is closed politely;
//! a request that arrives during the drain is answered with
//! `Connection: close`.

use std::io::Read;

use crate::support::{Master, WAIT, example, http, wait_until};

#[test]
fn an_idle_keep_alive_connection_is_closed_politely_on_stop() {
    let hello = example("hello");
    let mut master = Master::start(&["-w", "1", "-l", "127.0.0.1:0", "--", &hello]);
    let addr = master.listening();
    master.ready_workers();
    let stream = http::connect(addr).unwrap();
    let mut conn = http::Conn::new(stream.try_clone().unwrap()).unwrap();
    assert!(!conn.request("/", false).unwrap().close);
    master.signal(libc::SIGTERM);
    let mut buf = [0u8; 16];
    let mut stream = stream;
    // EOF (a FIN), not a reset, and nothing else on the wire.
    assert_eq!(stream.read(&mut buf).expect("a clean close"), 0);
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn a_request_arriving_during_the_drain_is_answered_with_connection_close() {
    let hello = example("hello");
    // A long grace, so the request surely arrives within it on a slow machine.
    let mut master = Master::start_with(
        &[
            "-w",
            "1",
            "--ready",
            "notify",
            "-l",
            "127.0.0.1:0",
            "--",
            &hello,
        ],
        |cmd| {
            cmd.env("HELLO_DRAIN_GRACE_MS", "10000");
        },
    );
    let addr = master.listening();
    let old = master.ready_workers()[0].1;
    let mut conn = http::Conn::new(http::connect(addr).unwrap()).unwrap();
    assert_eq!(conn.request("/", false).unwrap().pid(), Some(old));
    master.signal(libc::SIGHUP);
    master.expect("the old worker draining", |r| {
        r["msg"] == "worker draining" && r["pid"] == old
    });
    // The master has sent the signal; the worker may not have run its
    // handler yet, and until it has, it answers as usual. Every request is
    // answered, by the old worker, until one says to reconnect.
    let told_to_reconnect = wait_until(WAIT, || {
        let response = conn.request("/", false).expect("answered during the drain");
        assert_eq!(response.status, 200);
        assert_eq!(response.pid(), Some(old));
        response.close
    });
    assert!(told_to_reconnect, "never told to reconnect");
    master.expect("the old worker exit", |r| {
        r["msg"] == "worker exited" && r["pid"] == old
    });
}
