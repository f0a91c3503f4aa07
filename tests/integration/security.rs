//! The trust boundaries, tested from the attacker's side: another user (or
//! a process no worker started) cannot steer the master through the notify
//! socket.

use crate::support::{
    Master, TempDir, WAIT, environ, example, path_str, rcluster, run, status, wait_until,
};

fn dropped(control: &str) -> u64 {
    status(control)["master"]["notify_dropped"]
        .as_u64()
        .unwrap()
}

/// What became of a datagram sent from outside the workers.
#[derive(Debug, PartialEq)]
enum Sent {
    /// It reached the master's socket.
    Delivered,
    /// The file system kept the sender out (the notify socket's directory
    /// is the workers' user's alone).
    Refused,
    /// runuser may not be used here.
    Skipped,
}

/// Sends `text` to the master's notify socket from another process: as
/// `user` (through runuser), or as this test (root, but no worker's
/// descendant).
fn send_as(user: Option<&str>, socket: &str, text: &str) -> Sent {
    let worker = example("test_worker");
    let env = format!("NOTIFY_SOCKET={socket}");
    let (code, _, err) = match user {
        Some(user) => run(
            "runuser",
            &[
                "-u",
                user,
                "--",
                "env",
                &env,
                &worker,
                "--send-notify",
                text,
            ],
        ),
        None => run("env", &[&env, &worker, "--send-notify", text]),
    };
    if code != 0 && err.contains("runuser:") {
        crate::support::skip(&format!("runuser is not permitted here: {err}"));
        return Sent::Skipped;
    }
    if code != 0 && err.contains("PermissionDenied") {
        return Sent::Refused;
    }
    assert_eq!(code, 0, "sending {text:?} as {user:?}: {err}");
    Sent::Delivered
}

/// Another user cannot even reach the notify socket: the datagram is
/// refused by the file system before the master's own check (by sender
/// and uid) would drop it. False if that cannot be tried here.
fn kept_out(socket: &str, text: &str) -> bool {
    match send_as(Some("nobody"), socket, text) {
        Sent::Skipped => false,
        Sent::Refused => true,
        Sent::Delivered => panic!("another user reached the notify socket {socket}"),
    }
}

/// Waits until the master has counted `n` more dropped datagrams.
fn expect_dropped(control: &str, before: u64, n: u64) {
    assert!(
        wait_until(WAIT, || dropped(control) >= before + n),
        "the master did not drop the forged messages ({} dropped)",
        dropped(control)
    );
}

#[test]
fn a_forged_stopping_from_another_user_or_a_stranger_is_dropped() {
    let dir = TempDir::new("forge-stopping");
    let control = path_str(&dir.path("control.sock")).to_string();
    let hello = example("hello");
    let mut master = Master::start(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--control",
        &control,
        "--log-level",
        "debug",
        "--",
        &hello,
    ]);
    let workers = master.ready_workers();
    let victim = workers[0].1;
    let socket = environ(victim, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    let forged = format!("MAINPID={victim}\\nSTOPPING=1");
    let before = dropped(&control);
    if !kept_out(&socket, &forged) {
        return;
    }
    // Root reaches it, but is not a worker or started by one: dropped.
    assert_eq!(send_as(None, &socket, &forged), Sent::Delivered);
    expect_dropped(&control, before, 1);
    let st = status(&control);
    let victim_row = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["pid"] == victim)
        .expect("the worker is still there");
    assert_eq!(victim_row["state"], "ready", "{st}");
    let log = master.log_text();
    assert!(!log.contains("\"worker stopping\""), "{log}");
    assert!(
        log.contains("not sent by a worker or a process it started"),
        "the debug log says why:\n{log}"
    );
}

#[test]
fn a_forged_ready_does_not_pass_the_readiness_gate() {
    let dir = TempDir::new("forge-ready");
    let control = path_str(&dir.path("control.sock")).to_string();
    let flag = dir.path("release");
    std::fs::write(&flag, "good").unwrap();
    // The bad release never says READY=1.
    let never_ready = format!("exec {}", example("test_worker"));
    let script = crate::support::release_switch(&flag, &never_ready);
    let mut master = Master::start(&[
        "-w",
        "1",
        "--ready",
        "notify",
        "--ready-timeout",
        "2s",
        "--control",
        &control,
        "-l",
        "127.0.0.1:0",
        "--log-level",
        "debug",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let old = master.ready_workers()[0].1;
    std::fs::write(&flag, "bad").unwrap();
    master.signal(libc::SIGHUP);
    let spawned = master.expect("the new worker", |r| {
        r["msg"] == "worker spawned" && r["generation"] == 2
    });
    let new = spawned["pid"].as_i64().unwrap();
    let socket = environ(old, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    let before = dropped(&control);
    if !kept_out(&socket, &format!("MAINPID={new}\\nREADY=1")) {
        return;
    }
    let forged = format!("MAINPID={new}\\nREADY=1");
    assert_eq!(send_as(None, &socket, &forged), Sent::Delivered);
    assert_eq!(send_as(None, &socket, "READY=1"), Sent::Delivered);
    expect_dropped(&control, before, 2);
    let aborted = master.expect_msg("reload aborted");
    assert!(
        aborted["cause"]
            .as_str()
            .unwrap()
            .contains("not ready within 2.0s"),
        "{aborted}"
    );
    assert!(!crate::support::is_gone(old), "the old worker serves on");
}

#[test]
fn a_forged_watchdog_ping_does_not_keep_a_hung_worker_alive() {
    let dir = TempDir::new("forge-watchdog");
    let control = path_str(&dir.path("control.sock")).to_string();
    let worker = example("test_worker");
    // Pings for 300 ms, then hangs.
    let mut master = Master::start(&[
        "-w",
        "1",
        "--ready",
        "notify",
        "--watchdog",
        "1s",
        "--control",
        &control,
        "--",
        &worker,
        "--watchdog-for",
        "300",
    ]);
    let hung = master.ready_workers()[0].1;
    let socket = environ(hung, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    let before = dropped(&control);
    let forged = format!("MAINPID={hung}\\nWATCHDOG=1");
    if !kept_out(&socket, &forged) {
        return;
    }
    for _ in 0..4 {
        assert_eq!(send_as(None, &socket, &forged), Sent::Delivered);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let timeout = master.expect_msg("watchdog timeout");
    assert_eq!(timeout["pid"], hung);
    assert!(dropped(&control) >= before + 4);
}

#[test]
fn a_control_path_never_replaces_what_is_not_a_stale_socket() {
    let dir = TempDir::new("control-paths");
    let worker = example("test_worker");
    let notes = dir.path("notes.txt");
    std::fs::write(&notes, "my notes").unwrap();
    let folder = dir.path("folder");
    std::fs::create_dir(&folder).unwrap();
    let fifo = dir.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let app = dir.path("app.sock");
    let live = std::os::unix::net::UnixListener::bind(&app).unwrap();
    for (path, code, says) in [
        (&notes, 73, "it is a regular file"),
        (&folder, 73, "it is a directory"),
        (&fifo, 73, "it is a FIFO"),
        (
            &app,
            71,
            "a server that is not an rcluster master listens on it",
        ),
    ] {
        let (got, _, err) = rcluster(&["--control", path_str(path), "--", &worker]);
        assert_eq!(got, code, "{path:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(says), "{path:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes");
    assert!(folder.is_dir());
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // The app's socket still works.
    let _client = std::os::unix::net::UnixStream::connect(&app).unwrap();
    assert!(live.accept().is_ok());
}

#[test]
fn a_unix_listen_path_never_replaces_a_file() {
    let dir = TempDir::new("listen-paths");
    let notes = dir.path("notes.txt");
    std::fs::write(&notes, "my notes").unwrap();
    let listen = format!("unix:{}", path_str(&notes));
    let (got, _, err) = rcluster(&["-l", &listen, "--", &example("test_worker")]);
    assert_eq!(got, 73, "{err}");
    assert!(err.contains("it is a regular file"), "{err}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes");
}

/// `count` idle connections to `control`, held until dropped.
fn idle_clients(control: &str, count: usize) -> Vec<std::os::unix::net::UnixStream> {
    (0..count)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(control).ok())
        .collect()
}

#[test]
fn the_control_plane_recovers_when_it_ran_out_of_fds() {
    let dir = TempDir::new("emfile");
    let control = path_str(&dir.path("control.sock")).to_string();
    let worker = example("test_worker");
    let mut master = Master::start_with(
        &[
            "-w",
            "1",
            "--control",
            &control,
            "--",
            &worker,
            "--ready-after",
            "0",
        ],
        |cmd| {
            // SAFETY: setrlimit only, between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(cmd, || {
                    let limit = libc::rlimit {
                        rlim_cur: 24,
                        rlim_max: 24,
                    };
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                    Ok(())
                });
            }
        },
    );
    master.expect_msg("workers ready");
    let held = idle_clients(&control, 40);
    assert_eq!(held.len(), 40, "connecting is not what runs out");
    drop(held);
    let (code, out, err) = rcluster(&["status", "--control", &control, "--timeout", "1s"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn idle_clients_do_not_lock_the_others_out() {
    let dir = TempDir::new("idle-clients");
    let control = path_str(&dir.path("control.sock")).to_string();
    let worker = example("test_worker");
    let mut master = Master::start(&[
        "-w",
        "1",
        "--control",
        &control,
        "--",
        &worker,
        "--ready-after",
        "0",
    ]);
    master.expect_msg("workers ready");
    let held = idle_clients(&control, 200);
    assert_eq!(held.len(), 200);
    let (code, out, err) = rcluster(&["status", "--control", &control, "--timeout", "1s"]);
    assert_eq!(code, 0, "with 200 idle clients: {out}{err}");
    drop(held);
}
