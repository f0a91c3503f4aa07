//! Servers that bind their own port, unmodified: `--adopt-bind` gives their
//! `bind()` rcluster's socket and drains them (the shim,
//! `src/launch/shim/`);
//! without it, the master says in a warning that the server listens on a
//! port of its own.

use crate::examples::path;
use crate::servers::{rcluster_with, reloads_under_wrk};
use crate::support::{
    Master, SHORT_LOOK, TempDir, WAIT, http, installs, path_str, rcluster, run, wait_until,
};

#[test]
fn an_unmodified_python_http_server_reloads_under_wrk_with_adopt_bind() {
    let www = path("examples");
    let server = ["python3", "-m", "http.server", "3000", "--directory", &www];
    // Served at all, on rcluster's port, only if the bind was adopted.
    reloads_under_wrk("python3 -m http.server, adopted", || {
        rcluster_with(&["--adopt-bind", SHORT_LOOK], &server, |_| {})
    });
}

#[test]
fn an_unmodified_express_app_reloads_under_wrk_with_adopt_bind() {
    let app = installs::express().join("plain.js");
    let app = app.to_str().unwrap();
    reloads_under_wrk("express app.listen(3000), adopted", || {
        rcluster_with(&["--adopt-bind", SHORT_LOOK], &["node", app], |_| {})
    });
}

#[test]
fn a_server_on_a_port_of_its_own_is_named_in_a_warning() {
    let app = installs::express().join("plain.js");
    let port = crate::support::free_port().to_string();
    let mut master = crate::support::Master::start_with(
        &[
            "-w",
            "1",
            "-l",
            "127.0.0.1:0",
            "--",
            "node",
            app.to_str().unwrap(),
        ],
        |cmd| {
            cmd.env("PORT", &port);
        },
    );
    let warning = master.expect_msg("worker listens on its own port");
    assert_eq!(warning["ports"], port.as_str(), "{warning}");
    assert!(
        warning["listen"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    master.stop_cleanly();
}

#[test]
fn adopt_bind_refuses_a_statically_linked_server() {
    let dir = TempDir::new("static");
    let source = dir.path("server.c");
    std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    let server = dir.path("server");
    let (code, _, err) = run(
        "cc",
        &["-static", "-o", path_str(&server), path_str(&source)],
    );
    assert_eq!(code, 0, "cc -static: {err}");
    let (code, out, err) = rcluster(&["--adopt-bind", "--", path_str(&server)]);
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.starts_with("rcluster: --adopt-bind cannot work with ")
            && err.contains("it is statically linked")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
}

/// An accept the shim has begun when the drain makes the listeners vanish
/// must not keep the worker from leaving. The drain waits for accepts under
/// way; one that went on to the vanished socket used to block there for
/// good when the server's socket was a blocking one, and the worker left
/// only when killed at --stop-timeout. The fixture holds its first accept
/// in that gap.
#[test]
fn an_accept_under_way_when_the_listeners_vanish_does_not_hold_the_drain() {
    let dir = TempDir::new("window");
    let server = dir.path("accept_window");
    let source = format!(
        "{}/tests/fixtures/accept_window.c",
        env!("CARGO_MANIFEST_DIR")
    );
    let (code, _, err) = run("cc", &["-rdynamic", "-o", path_str(&server), &source]);
    assert_eq!(code, 0, "cc accept_window.c: {err}");
    let mut master = Master::start(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--adopt-bind",
        "--",
        path_str(&server),
    ]);
    let old = master.ready_workers()[0].1;
    let held = wait_until(WAIT, || {
        master
            .log_text()
            .contains("accept_window: held between the shim's check and its accept")
    });
    assert!(
        held,
        "the accept never reached the gap:\n{}",
        master.log_text()
    );
    master.signal(libc::SIGHUP);
    let exited = master.expect("the old worker leaving by its drain", |r| {
        r["msg"] == "worker exited" && r["pid"] == old
    });
    assert_eq!(exited["code"], 0, "{exited}");
    master.stop_cleanly();
}

/// rcluster's drain spreads its `Connection: close` over the connections,
/// each from a moment of its own after the stop; a response that was
/// already under way when the stop came says close, as a server's own
/// drain would.
#[test]
fn a_response_under_way_at_the_stop_says_close_under_http_drain() {
    let server = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/naive_server.py"
    );
    let mut master = Master::start(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--http-drain",
        "--",
        "python3",
        server,
    ]);
    let addr = master.listening();
    master.ready_workers();
    // Two: the first connection's moment may be the stop itself.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mut conn = http::Conn::new(http::connect(addr).unwrap()).unwrap();
            assert!(!conn.request("/", false).unwrap().close);
            std::thread::spawn(move || conn.request("/sleep/1500", false))
        })
        .collect();
    master.signal(libc::SIGTERM);
    master.expect_msg("stop requested");
    for slow in slow {
        let response = slow
            .join()
            .unwrap()
            .expect("the request in flight is answered");
        assert_eq!(response.status, 200);
        assert!(response.close, "a drained connection is told to close");
    }
    master.stop_cleanly();
}

/// Python's http.server leaves SIGTERM at its default action: once the
/// shim has drained it, the signal it hands over kills the server with no
/// connection left. That end is logged as the clean drain it was (INFO,
/// `drained`), not as requests probably lost (it was a WARN on every worker
/// of every reload).
#[test]
fn a_server_that_dies_of_the_signal_after_the_shims_drain_is_not_warned_of() {
    let www = path("examples");
    let server = ["python3", "-m", "http.server", "3000", "--directory", &www];
    let mut args = vec!["-w", "1", "-l", "127.0.0.1:0", "--adopt-bind", "--"];
    args.extend_from_slice(&server);
    let mut master = Master::start(&args);
    let addr = master.listening();
    let old = master.ready_workers()[0].1;
    let mut conn = http::Conn::new(http::connect(addr).unwrap()).unwrap();
    assert_eq!(conn.request("/", false).unwrap().status, 200);
    drop(conn);
    master.signal(libc::SIGHUP);
    let exited = master.expect("the old worker's exit", |r| {
        r["msg"] == "worker exited" && r["pid"] == old
    });
    assert_eq!(exited["signal"], "SIGTERM", "{exited}");
    assert_eq!(exited["drained"], true, "{exited}");
    assert_eq!(exited["level"], "INFO", "{exited}");
    master.stop_cleanly();
}
