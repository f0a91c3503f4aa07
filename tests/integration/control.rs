//! The control socket and the commands that use it: `rcluster status`,
//! `reload [--wait]`, `scale N`, `stop [--wait]`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use crate::support::{Master, TempDir, WAIT, example, path_str, rcluster, release_switch};

fn hello_with_control(dir: &TempDir, extra: &[&str]) -> (Master, String) {
    let control = path_str(&dir.path("control.sock")).to_string();
    let hello = example("hello");
    let mut args = vec![
        "-w",
        "2",
        "--ready",
        "notify",
        "--control",
        &control,
        "-l",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", &hello]);
    let mut master = Master::start(&args);
    master.ready_workers();
    (master, control)
}

/// One raw request line; the response line, or what went wrong.
fn raw_request(control: &str, bytes: &[u8]) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(control)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.write_all(bytes)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn status_shows_every_worker_as_a_table_and_as_json() {
    let dir = TempDir::new("status");
    let (master, control) = hello_with_control(&dir, &[]);
    let (code, table, _) = rcluster(&["status", "--control", &control]);
    assert_eq!(code, 0, "every worker is ready: {table}");
    assert!(
        table.contains(&format!("master   hello, pid {}", master.pid)),
        "{table}"
    );
    assert!(table.contains("listen   tcp-0 127.0.0.1:"), "{table}");
    let rows: Vec<&str> = table.lines().filter(|l| l.contains(" ready ")).collect();
    assert_eq!(rows.len(), 2, "{table}");
    let (code, json, _) = rcluster(&["status", "--json", "--control", &control]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["master"]["pid"], master.pid);
    assert_eq!(status["master"]["workers"], 2);
    assert_eq!(status["master"]["all_ready"], true);
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for (slot, w) in workers.iter().enumerate() {
        assert_eq!(w["slot"], slot);
        assert_eq!(w["state"], "ready");
        assert_eq!(w["generation"], 1);
        assert_eq!(w["restarts"], 0);
    }
}

#[test]
fn reload_wait_succeeds_and_a_bad_release_makes_it_fail() {
    let dir = TempDir::new("reload-wait");
    let control = path_str(&dir.path("control.sock")).to_string();
    let flag = dir.path("release");
    std::fs::write(&flag, "good").unwrap();
    let script = release_switch(&flag, "exit 1");
    let mut master = Master::start(&[
        "-w",
        "2",
        "--ready",
        "notify",
        "--control",
        &control,
        "-l",
        "127.0.0.1:0",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    master.ready_workers();
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reload complete: generation 2"), "{out}");

    std::fs::write(&flag, "bad").unwrap();
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("reload aborted") && err.contains("exited with code 1"),
        "{err}"
    );
    let (code, table, _) = rcluster(&["status", "--control", &control]);
    assert_eq!(code, 0, "the old workers still serve: {table}");
    assert!(table.contains("last: ABORTED, generation 3"), "{table}");
}

#[test]
fn scale_sets_the_worker_count() {
    let dir = TempDir::new("scale");
    let (mut master, control) = hello_with_control(&dir, &[]);
    let (code, out, _) = rcluster(&["scale", "4", "--control", &control]);
    assert_eq!((code, out.as_str()), (0, "scaling from 2 to 4 workers\n"));
    assert_eq!(master.expect_msg("scaled")["workers"], 4);
    master.expect("slot 3 ready", |r| {
        r["msg"] == "worker ready" && r["slot"] == 3
    });
    let (code, out, _) = rcluster(&["scale", "1", "--control", &control]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(master.expect_msg("scaled")["workers"], 1);
    // PM2's `scale app +1` means one more, not one.
    let (code, out, _) = rcluster(&["scale", "+2", "--control", &control]);
    assert_eq!((code, out.as_str()), (0, "scaling from 1 to 3 workers\n"));
    assert_eq!(master.expect_msg("scaled")["workers"], 3);
    let (code, out, _) = rcluster(&["scale", "-1", "--control", &control]);
    assert_eq!((code, out.as_str()), (0, "scaling from 3 to 2 workers\n"));
    assert_eq!(master.expect_msg("scaled")["workers"], 2);
    let cpus = std::thread::available_parallelism().unwrap().get();
    let (code, out, _) = rcluster(&["scale", "auto", "--control", &control]);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with(&format!("{cpus} workers\n")), "{out}");
    let (code, _, err) = rcluster(&["scale", "0", "--control", &control]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn stop_wait_returns_once_the_master_has_stopped() {
    let dir = TempDir::new("stop-wait");
    let (mut master, control) = hello_with_control(&dir, &[]);
    let (code, out, _) = rcluster(&["stop", "--wait", "--control", &control]);
    assert_eq!((code, out.as_str()), (0, "stopped\n"));
    assert_eq!(master.wait_exit().code(), Some(0));
    assert!(
        !dir.path("control.sock").exists(),
        "the socket file is removed"
    );
    let (code, _, err) = rcluster(&["status", "--control", &control]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("no master answers at"), "{err}");
}

#[test]
fn the_control_socket_is_private_and_survives_bad_requests() {
    let dir = TempDir::new("control-bad");
    let (_master, control) = hello_with_control(&dir, &[]);
    let mode = std::fs::metadata(&control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let response = raw_request(&control, b"this is not json\n").unwrap();
    assert!(
        response.contains(r#""ok":false"#) && response.contains("malformed request"),
        "{response}"
    );
    let response = raw_request(&control, b"{\"cmd\":\"dance\"}\n").unwrap();
    assert!(response.contains("unknown request"), "{response}");

    // 1 MiB without a newline: an error reply, or the connection dropped.
    match raw_request(&control, &vec![b'x'; 1 << 20]) {
        Ok(response) => assert!(
            response.is_empty() || response.contains("request too large"),
            "{response}"
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
    }
    // A client that sends half a request and waits blocks no one.
    let mut half = UnixStream::connect(&control).unwrap();
    half.write_all(br#"{"cmd":"sta"#).unwrap();
    let (code, _, err) = rcluster(&["status", "--control", &control]);
    assert_eq!(code, 0, "{err}");
    drop(half);
}

#[test]
fn peers_of_another_user_are_refused() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 || !std::path::Path::new("/usr/sbin/runuser").exists() {
        crate::support::skip("needs root and runuser to connect as another user");
        return;
    }
    let dir = TempDir::new("control-peer");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_master, control) = hello_with_control(&dir, &[]);
    // The socket is 0600: another user may not even connect to it. Open it
    // to all for a moment, to see the peer-credentials check refuse them.
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let bin = crate::support::rcluster_bin();
    let args = [
        "-u",
        "nobody",
        "--",
        path_str(&bin),
        "status",
        "--control",
        &control,
    ];
    let (code, _, stderr) = crate::support::run("/usr/sbin/runuser", &args);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("permission denied: not the master's user"),
        "{stderr}"
    );
}

#[test]
fn a_master_that_does_not_answer_is_not_called_gone() {
    let dir = TempDir::new("control-stopped");
    let (master, control) = hello_with_control(&dir, &[]);
    master.signal(libc::SIGSTOP);
    let (code, _, err) = rcluster(&["status", "--timeout", "300ms", "--control", &control]);
    master.signal(libc::SIGCONT);
    assert_eq!(code, 75, "{err}");
    assert!(
        err.contains("did not answer within 300ms") && err.contains("running"),
        "{err}"
    );
    let (code, _, err) = rcluster(&["status", "--control", &control]);
    assert_eq!(code, 0, "it answers once continued: {err}");
}
