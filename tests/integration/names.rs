//! Masters have names and own their files: several on one host find their
//! own control sockets, clients say which one they mean, and one pid file
//! belongs to one master.

use crate::support::{Master, TempDir, WAIT, example, path_str, rcluster, rcluster_in, wait_until};

/// A master with its default control socket under `runtime`.
fn master_in(runtime: &TempDir, args: &[&str]) -> Master {
    let dir = runtime.0.clone();
    Master::start_with(args, move |cmd| {
        cmd.env("XDG_RUNTIME_DIR", &dir)
            .env_remove("RCLUSTER_CONTROL");
    })
}

#[test]
fn two_masters_have_their_own_sockets_and_clients_say_which() {
    let runtime = TempDir::new("names");
    let worker = example("test_worker");
    let hello = example("hello");
    let mut first = master_in(&runtime, &["-w", "1", "--", &worker, "--ready-after", "0"]);
    let mut second = master_in(&runtime, &["-w", "1", "-l", "127.0.0.1:0", "--", &hello]);
    first.expect_msg("workers ready");
    second.expect_msg("workers ready");
    let (code, out, err) = rcluster_in(&runtime.0, &["ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("test_worker") && out.contains("hello"),
        "{out}"
    );
    let (code, out, err) = rcluster_in(&runtime.0, &["ls", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    // Which one? It does not guess.
    let (code, _, err) = rcluster_in(&runtime.0, &["status"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("hello (pid") && err.contains("test_worker (pid"),
        "names them: {err}"
    );
    let (code, out, err) = rcluster_in(&runtime.0, &["status", "--name", "hello"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("master   hello, pid {}", second.pid)),
        "{out}"
    );
    // Every log record names its master.
    assert!(
        second
            .log_text()
            .lines()
            .filter(|l| l.starts_with('{'))
            .all(|l| l.contains("\"name\":\"hello\"")),
        "{}",
        second.log_text()
    );
}

#[test]
fn a_second_master_of_the_same_name_gets_a_socket_of_its_own() {
    let runtime = TempDir::new("same-name");
    let worker = example("test_worker");
    let args = [
        "-w",
        "1",
        "--name",
        "api",
        "--",
        &worker,
        "--ready-after",
        "0",
    ];
    let mut first = master_in(&runtime, &args);
    first.expect_msg("workers ready");
    let mut second = master_in(&runtime, &args);
    let moved = second.expect("the socket it took", |r| {
        r["msg"] == "control socket" && r["taken"].is_string()
    });
    assert!(
        moved["error"]
            .as_str()
            .unwrap()
            .contains("another rcluster master (api, pid"),
        "{moved}"
    );
    second.expect_msg("workers ready");
    let (code, _, err) = rcluster_in(&runtime.0, &["status", "--name", "api"]);
    assert_eq!(code, 64, "two are called api: {err}");
}

#[test]
fn one_pid_file_belongs_to_one_master() {
    let dir = TempDir::new("pid-file");
    let pid_file = dir.path("app.pid");
    let worker = example("test_worker");
    let args = [
        "-w",
        "1",
        "--pid-file",
        path_str(&pid_file),
        "--",
        &worker,
        "--ready-after",
        "0",
    ];
    let mut first = Master::start(&args);
    first.expect_msg("workers ready");
    let (code, _, err) = rcluster(&args);
    assert_eq!(code, 73, "{err}");
    assert!(err.contains(&format!("names pid {}", first.pid)), "{err}");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        first.pid.to_string()
    );
    // A master removes the file only while it holds its own pid.
    std::fs::write(&pid_file, "4242\n").unwrap();
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit().code(), Some(0));
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), "4242\n");
    // A stale file (no master) is taken over, and removed on exit.
    let mut third = Master::start(&args);
    third.expect_msg("workers ready");
    third.signal(libc::SIGTERM);
    assert_eq!(third.wait_exit().code(), Some(0));
    assert!(
        wait_until(WAIT, || !pid_file.exists()),
        "the master's own pid file is removed"
    );
}
