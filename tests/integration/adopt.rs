//! Servers that bind their own port, unmodified: `--adopt-bind` gives their
//! `bind()` rcluster's socket and drains them (the shim, `src/shim/`);
//! without it, the master says in a warning that the server listens on a
//! port of its own.

use std::net::TcpListener;

use crate::examples::path;
use crate::servers::{rcluster_with, reloads_under_wrk};
use crate::support::{TempDir, installs, path_str, rcluster, run};

#[test]
fn an_unmodified_python_http_server_reloads_under_wrk_with_adopt_bind() {
    let www = path("examples");
    let server = ["python3", "-m", "http.server", "3000", "--directory", &www];
    // Served at all, on rcluster's port, only if the bind was adopted.
    reloads_under_wrk("python3 -m http.server, adopted", || {
        rcluster_with(&["--adopt-bind"], &server, |_| {})
    });
}

#[test]
fn an_unmodified_express_app_reloads_under_wrk_with_adopt_bind() {
    let app = installs::express().join("plain.js");
    let app = app.to_str().unwrap();
    reloads_under_wrk("express app.listen(3000), adopted", || {
        rcluster_with(&["--adopt-bind"], &["node", app], |_| {})
    });
}

#[test]
fn a_server_on_a_port_of_its_own_is_named_in_a_warning() {
    let app = installs::express().join("plain.js");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
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
