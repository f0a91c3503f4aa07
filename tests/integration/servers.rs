//! The servers people run, as the README's recipes run them, installed
//! from their registries by the tests (`support/installs.rs`): Express,
//! gunicorn, uvicorn, and Go's net/http. Each goes through 5 reloads under
//! wrk (32 connections, keep-alive and `Connection: close`) with zero
//! socket errors and zero non-2xx answers.

use std::process::Command;

use crate::examples::{RELOADS, path};
use crate::support::installs::{self, path_with_python};
use crate::support::{Master, reload_under_wrk};

/// `rcluster -w 2 -l 127.0.0.1:0 FLAGS -- COMMAND`, with `setup` last.
pub fn rcluster_with(flags: &[&str], command: &[&str], setup: impl Fn(&mut Command)) -> Master {
    let mut args = vec!["-w", "2", "-l", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(command);
    Master::start_with(&args, setup)
}

/// Five reloads under wrk, keep-alive then close, each on a master of its
/// own from `start`.
pub fn reloads_under_wrk(name: &str, start: impl Fn() -> Master) {
    for keep_alive in [true, false] {
        let mode = if keep_alive { "keep-alive" } else { "close" };
        let mut master = start();
        let wrk = reload_under_wrk(&mut master, 2, keep_alive, RELOADS, true);
        eprintln!(
            "{name}, {mode}, {RELOADS} reloads: wrk {} served, {} failed (p50 {} us, p99 {} us)",
            wrk.requests,
            wrk.failed(),
            wrk.p50_us,
            wrk.p99_us
        );
        master.stop_cleanly();
    }
}

#[test]
fn express_reloads_under_wrk_without_a_failed_request() {
    let app = installs::express().join("app.js");
    let app = app.to_str().unwrap();
    reloads_under_wrk("express", || {
        rcluster_with(&["--ready", "notify"], &["node", app], |_| {})
    });
}

#[test]
fn gunicorn_reloads_under_wrk_without_a_failed_request() {
    let dir = path("examples/python");
    let gunicorn = [
        "gunicorn",
        "--workers",
        "1",
        "--threads",
        "4",
        "--preload",
        "--no-control-socket",
        "--chdir",
        &dir,
        "wsgi_app:app",
    ];
    let env = path_with_python();
    reloads_under_wrk("gunicorn", || {
        rcluster_with(&["--ready", "notify"], &gunicorn, |cmd| {
            cmd.env("PATH", &env);
        })
    });
}

#[test]
fn uvicorn_reloads_under_wrk_without_a_failed_request() {
    let dir = path("examples/python");
    let uvicorn = [
        "uvicorn",
        "--fd",
        "3",
        "--no-access-log",
        "--app-dir",
        &dir,
        "asgi_app:app",
    ];
    let env = path_with_python();
    reloads_under_wrk("uvicorn", || {
        rcluster_with(&["--http-drain"], &uvicorn, |cmd| {
            cmd.env("PATH", &env);
        })
    });
}

#[test]
fn go_reloads_under_wrk_without_a_failed_request() {
    let Some(server) = installs::go_server() else {
        return;
    };
    let server = server.to_str().unwrap();
    reloads_under_wrk("go net/http", || {
        rcluster_with(&["--ready", "notify"], &[server], |_| {})
    });
}
