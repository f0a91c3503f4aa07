//! The servers people run, as docs/servers.md's recipes run them (the
//! command lines are read from there: `support/recipes.rs`), installed
//! from their registries by the tests (`support/installs.rs`): Express,
//! gunicorn, uvicorn, and Go's net/http. Each goes through 5 reloads under
//! wrk (32 connections, keep-alive and `Connection: close`) with zero
//! socket errors and zero non-2xx answers.

use std::process::Command;

use crate::examples::{RELOADS, path};
use crate::support::installs::{self, path_with_python};
use crate::support::recipes::{Recipe, recipe};
use crate::support::{Master, SHORT_HOLD, SHORT_LOOK, reload_under_wrk};

/// `rcluster -w 2 -l 127.0.0.1:0 FLAGS -- COMMAND`, with `setup` last,
/// and a short canary hold (`SHORT_HOLD`: the hold is not what these
/// tests test).
pub fn rcluster_with(flags: &[&str], command: &[&str], setup: impl Fn(&mut Command)) -> Master {
    let mut args = vec!["-w", "2", SHORT_HOLD, "-l", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(command);
    Master::start_with(&args, setup)
}

/// A worker whose PATH has no rcluster still says READY=1 through
/// `rcluster notify`: it runs `$RCLUSTER_BIN` (before, Node's `execFile`
/// failed with ENOENT and the worker was never ready under `notify`).
#[test]
fn express_says_ready_without_rcluster_on_its_path() {
    let app = installs::express().join("app.js");
    let node = which("node");
    let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let mut master = rcluster_with(
        &["--ready", "notify"],
        &[&node, app.to_str().unwrap()],
        |cmd| {
            cmd.env("PATH", path);
        },
    );
    let records = master.collect_until("workers ready", |r| r["msg"] == "workers ready");
    let ready: Vec<_> = records
        .iter()
        .filter(|r| r["msg"] == "worker ready")
        .collect();
    assert_eq!(ready.len(), 2, "{records:?}");
    for r in ready {
        assert_eq!(r["ready_by"], "READY=1", "{r}");
    }
    master.stop_cleanly();
}

/// `program`'s path on this PATH.
fn which(program: &str) -> String {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on the PATH"))
        .to_string_lossy()
        .into_owned()
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

/// `recipe`'s command line under rcluster (2 workers, a port of its
/// own, an early first look at a silent server), run from `dir` with the
/// Python servers on the PATH.
fn start_recipe(recipe: &Recipe, dir: &str) -> Master {
    let env = path_with_python();
    let mut flags = recipe.flags();
    flags.push(SHORT_LOOK);
    rcluster_with(&flags, &recipe.command(), |cmd| {
        cmd.env("PATH", &env).current_dir(dir);
    })
}

#[test]
fn express_reloads_under_wrk_without_a_failed_request() {
    installs::express();
    let recipe = recipe("express");
    reloads_under_wrk("express", || start_recipe(&recipe, &path(".")));
}

#[test]
fn gunicorn_reloads_under_wrk_without_a_failed_request() {
    let recipe = recipe("gunicorn");
    let dir = path("examples/python");
    reloads_under_wrk("gunicorn", || start_recipe(&recipe, &dir));
}

#[test]
fn uvicorn_reloads_under_wrk_without_a_failed_request() {
    let recipe = recipe("uvicorn");
    let dir = path("examples/python");
    reloads_under_wrk("uvicorn", || start_recipe(&recipe, &dir));
}

/// uvicorn without `--http-drain` loses requests at every reload: the log
/// says so at start, with the flag; with it, nothing is said.
#[test]
fn uvicorn_without_http_drain_is_warned_of() {
    let dir = path("examples/python");
    let uvicorn = ["uvicorn", "--fd", "3", "--app-dir", &dir, "asgi_app:app"];
    let env = path_with_python();
    let mut master = rcluster_with(&[], &uvicorn, |cmd| {
        cmd.env("PATH", &env);
    });
    let records = master.collect_until("workers ready", |r| r["msg"] == "workers ready");
    let warned: Vec<_> = records
        .iter()
        .filter(|r| r["msg"] == "loses requests")
        .collect();
    assert_eq!(warned.len(), 1, "{records:?}");
    assert_eq!(warned[0]["level"], "WARN");
    assert_eq!(warned[0]["cure"], "--http-drain");
    drop(master);
    let mut master = rcluster_with(&["--http-drain"], &uvicorn, |cmd| {
        cmd.env("PATH", &env);
    });
    let records = master.collect_until("workers ready", |r| r["msg"] == "workers ready");
    assert!(
        records.iter().all(|r| r["msg"] != "loses requests"),
        "{records:?}"
    );
}

#[test]
fn go_reloads_under_wrk_without_a_failed_request() {
    let Some(server) = installs::go_server() else {
        return;
    };
    let server = server.to_str().unwrap();
    let recipe = recipe("go");
    assert_eq!(
        recipe.command,
        ["./server"],
        "the recipe runs what it built"
    );
    reloads_under_wrk("go net/http", || {
        rcluster_with(&recipe.flags(), &[server], |_| {})
    });
}
