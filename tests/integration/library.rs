//! The worker library (`rcluster::worker`) in real processes: the sockets
//! it finds, the notify messages it sends, the exit tasks it runs.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{TempDir, WAIT, example, path_str, wait_until};

/// Runs `test_worker ARGS` with `env`, fds `fds` placed at 3, 4, …, and
/// `LISTEN_PID` set to its own pid when `own_pid`; returns its stdout.
fn worker_says(args: &[&str], env: &[(&str, &str)], fds: &[RawFd], own_pid: bool) -> String {
    let worker = example("test_worker");
    let mut cmd = if own_pid {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh", &worker]);
        cmd
    } else {
        Command::new(&worker)
    };
    cmd.args(args)
        .env_remove("NOTIFY_SOCKET")
        .envs(env.iter().copied());
    let fds = fds.to_vec();
    // SAFETY: dup2/fcntl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Copy above the target range first, then down, as rcluster does.
            let high: Vec<RawFd> = fds
                .iter()
                .map(|&fd| libc::fcntl(fd, libc::F_DUPFD, 100))
                .collect();
            for (i, &fd) in high.iter().enumerate() {
                if fd < 0 || libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("running test_worker");
    if exit_code_within(&mut child, WAIT).is_none() {
        panic!("test_worker {args:?} did not exit");
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    out
}

#[test]
fn listeners_refuse_when_no_sockets_were_passed() {
    let out = worker_says(&["--listeners"], &[], &[], false);
    assert!(out.starts_with("error: no sockets were passed"), "{out}");
}

#[test]
fn listeners_refuse_sockets_meant_for_another_process() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let env = [("LISTEN_FDS", "1"), ("LISTEN_PID", "1")];
    let out = worker_says(&["--listeners"], &env, &[tcp.as_raw_fd()], false);
    assert!(
        out.starts_with("error: LISTEN_PID is 1 but this process is"),
        "{out}"
    );
}

#[test]
fn listeners_are_found_by_position_and_name_and_checked() {
    let dir = TempDir::new("listeners");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let unix = UnixListener::bind(dir.path("u.sock")).unwrap();
    let fds = [tcp.as_raw_fd(), unix.as_raw_fd()];
    let env = [("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "web:admin")];
    let out = worker_says(
        &["--listeners", "--take-tcp", "web", "--take-unix", "admin"],
        &env,
        &fds,
        true,
    );
    let addr = tcp.local_addr().unwrap();
    assert_eq!(out, format!("ok: web,admin\ntcp web: {addr}\nunix admin\n"));

    let out = worker_says(&["--listeners", "--take-tcp", "nope"], &env, &fds, true);
    assert!(
        out.contains("error: no listener named 'nope' (LISTEN_FDNAMES names: web, admin)"),
        "{out}"
    );
    let out = worker_says(&["--listeners", "--take-unix", "web"], &env, &fds, true);
    assert!(
        out.contains("is not a listening Unix stream socket"),
        "{out}"
    );
}

#[test]
fn listeners_refuse_an_fd_that_is_not_a_socket() {
    let dir = TempDir::new("not-a-socket");
    std::fs::write(dir.path("file"), "").unwrap();
    let file = std::fs::File::open(dir.path("file")).unwrap();
    let env = [("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web")];
    let out = worker_says(&["--listeners"], &env, &[file.as_raw_fd()], true);
    assert_eq!(out, "error: fd 3 (web) is not a socket\n");
}

#[test]
fn ready_sends_only_when_there_is_a_notify_socket() {
    assert_eq!(worker_says(&["--notify"], &[], &[], false), "sent: false\n");
    let dir = TempDir::new("notify");
    let path = dir.path("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    let out = worker_says(
        &["--notify"],
        &[("NOTIFY_SOCKET", path_str(&path))],
        &[],
        false,
    );
    assert_eq!(out, "sent: true\n");
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
}

/// Starts `test_worker --exit-task FILE ARGS`, waits until its tasks are
/// registered, and returns it with the task file's path.
fn exit_task_worker(dir: &TempDir, args: &[&str]) -> (std::process::Child, std::path::PathBuf) {
    let file = dir.path("tasks");
    let mut child = Command::new(example("test_worker"))
        .arg("--exit-task")
        .arg(&file)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting test_worker");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "tasks registered\n");
    (child, file)
}

fn exit_code_within(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let mut code = None;
    wait_until(timeout, || match child.try_wait() {
        Ok(Some(status)) => {
            code = status.code();
            true
        }
        _ => false,
    });
    if code.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    code
}

#[test]
fn exit_tasks_run_on_sigterm_and_the_process_exits_128_plus_the_signal() {
    let dir = TempDir::new("exit-term");
    let (mut child, file) = exit_task_worker(&dir, &[]);
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(
        exit_code_within(&mut child, WAIT),
        Some(128 + libc::SIGTERM)
    );
    assert_eq!(std::fs::read_to_string(file).unwrap(), "ran Signal(15)\n");
}

#[test]
fn exit_tasks_run_on_a_panic_and_the_process_exits_1() {
    let dir = TempDir::new("exit-panic");
    let (mut child, file) = exit_task_worker(&dir, &["--panic-after", "10"]);
    assert_eq!(exit_code_within(&mut child, WAIT), Some(1));
    assert_eq!(std::fs::read_to_string(file).unwrap(), "ran Panic\n");
}

#[test]
fn a_hanging_exit_task_is_cut_off_at_the_deadline() {
    let dir = TempDir::new("exit-hang");
    let (mut child, file) = exit_task_worker(&dir, &["--hang-task", "--exit-deadline", "300"]);
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(
        exit_code_within(&mut child, WAIT),
        Some(128 + libc::SIGINT),
        "still exits"
    );
    assert_eq!(std::fs::read_to_string(file).unwrap(), "ran Signal(2)\n");
}
