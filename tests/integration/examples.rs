//! Every example server under rcluster: reloads under load (the project's
//! client and wrk at once, 8 connections each, keep-alive and
//! `Connection: close`) with zero failed requests counted by either. `hello` has its
//! own, longer tests in reload.rs.

use std::path::Path;

use crate::support::{
    Master, SHORT_HOLD, TempDir, WAIT, example, http, is_gone, open_fds, reload_under_both,
    wait_until,
};

/// Reloads per connection mode and client: enough to cross every worker's
/// life cycle several times; the runtimes here take 100-300 ms to start.
pub const RELOADS: u64 = 5;

pub fn path(relative: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(relative)
        .to_string_lossy()
        .into_owned()
}

/// Reloads under both clients at once (see `reload_under_both`),
/// keep-alive and close, each on a master of its own from `start`; prints
/// what each client counted.
pub fn reloads_lose_nothing(name: &str, exec_workers: bool, start: impl Fn() -> Master) {
    for keep_alive in [true, false] {
        let mode = if keep_alive { "keep-alive" } else { "close" };
        let mut master = start();
        let (ours, wrk) = reload_under_both(&mut master, 2, keep_alive, RELOADS, exec_workers);
        master.stop_cleanly();
        eprintln!(
            "{name}, {mode}, {RELOADS} reloads: our client {} served, {} failed; \
             wrk {} served, {} failed (p50 {} us, p99 {} us)",
            ours.ok(),
            ours.failed(),
            wrk.requests,
            wrk.failed(),
            wrk.p50_us,
            wrk.p99_us,
        );
    }
}

/// rcluster with 2 workers on a port of its choice, `--ready notify`, a
/// short canary hold.
pub fn under_rcluster(command: &[&str], extra: &[&str]) -> Master {
    let mut args = vec![
        "-w",
        "2",
        "--ready",
        "notify",
        SHORT_HOLD,
        "-l",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(command);
    Master::start(&args)
}

#[test]
fn node_example_reloads_under_load_without_a_failed_request() {
    let server = path("examples/node/server.js");
    reloads_lose_nothing("node", true, || under_rcluster(&["node", &server], &[]));
}

#[test]
fn python_example_reloads_under_load_without_a_failed_request() {
    let server = path("examples/python/server.py");
    reloads_lose_nothing("python", true, || {
        under_rcluster(&["python3", &server], &[])
    });
}

#[test]
fn async_example_reloads_under_load_without_a_failed_request() {
    let server = example("async_hello");
    reloads_lose_nothing("async (hyper on tokio)", true, || {
        under_rcluster(&[&server], &[])
    });
}

/// Node listens again on fd 3, with a backlog of 511 unless given one:
/// the recipe keeps rcluster's `--backlog` (`ss` shows a listener's
/// backlog as its Send-Q).
#[test]
fn the_node_recipe_keeps_the_backlog_rcluster_listens_with() {
    let server = path("examples/node/server.js");
    let mut master = under_rcluster(&["node", &server], &["--backlog", "1000"]);
    let addr = master.listening();
    master.ready_workers();
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{}", addr.port())])
        .output()
        .expect("ss (Debian: apt install iproute2; ./test.sh does)");
    let out = String::from_utf8_lossy(&out.stdout);
    let backlog: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(backlog, ["1000"], "{out}");
}

/// `ab` counts an answer whose length differs from the first as a failure
/// (11,518 of 75,786 once pids gained a digit): every worker of `hello`
/// answers with the same length, whatever its pid.
#[test]
fn hello_answers_with_one_length_whatever_its_pid() {
    let hello = example("hello");
    let mut master = under_rcluster(&[&hello], &[]);
    let addr = master.listening();
    master.ready_workers();
    for _ in 0..4 {
        let answer = http::get(addr, "/").expect("GET /");
        assert_eq!(answer.body.len(), 41, "{:?}", answer.body);
        assert!(answer.pid().is_some(), "{:?}", answer.body);
    }
}

/// `hello` serves every listener it is given, a Unix socket and a port
/// at once (it refused a Unix one with `WrongKind { wanted: "TCP" }`, and
/// then served only the first of two, leaving a client of the second to
/// wait in the kernel's queue for ever): the docs' nginx recipe puts it
/// behind a Unix socket.
#[test]
fn hello_serves_every_listener_it_is_given_a_unix_socket_and_a_port() {
    use std::io::{Read, Write};
    let dir = TempDir::new("hello-unix");
    let socket = dir.path("app.sock");
    let listen = format!("unix:{}", socket.display());
    let hello = example("hello");
    let mut master = Master::start(&[
        "-w",
        "2",
        "--ready",
        "notify",
        "-l",
        &listen,
        "-l",
        "127.0.0.1:0",
        "--",
        &hello,
    ]);
    let tcp = master.expect("the port's listening record", |r| {
        r["msg"] == "listening" && r["addr"].as_str().is_some_and(|a| a.starts_with("127."))
    });
    let tcp: std::net::SocketAddr = tcp["addr"].as_str().unwrap().parse().unwrap();
    master.collect_until("workers ready", |r| r["msg"] == "workers ready");
    for _ in 0..4 {
        let mut conn = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
        conn.set_read_timeout(Some(WAIT)).unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("hello from worker"), "{answer}");
        let answer = crate::support::get_once(tcp, WAIT).expect("an answer on the port");
        assert!(answer.contains("hello from worker"), "{answer}");
    }
    master.stop_cleanly();
}

#[test]
fn hello_example_reloads_under_wrk_without_a_failed_request() {
    let server = example("hello");
    reloads_lose_nothing("hello", true, || under_rcluster(&[&server], &[]));
}

#[test]
fn cluster_example_reloads_under_load_without_a_failed_request() {
    let cluster = example("cluster");
    reloads_lose_nothing("cluster (fork mode)", false, || {
        Master::start_program(
            &cluster,
            &[
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--min-ready-ms",
                "50",
                "--json",
            ],
        )
    });
}

/// Limits for a worker run as `daemon` (a user no other test runs as, so
/// its process count is the worker's alone): enough threads and fds to
/// start any of the runtimes here, too few for 100 connections at once.
const FEW_THREADS: u64 = 16;
const FEW_FDS: u64 = 24;
const MANY: u64 = 256;
const CONNECTIONS: usize = 100;

#[test]
fn examples_refuse_a_connection_not_the_server_when_out_of_threads_or_fds() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        crate::support::skip("needs root, to run the workers as a user of their own");
        return;
    }
    let (hello, async_hello) = (example("hello"), example("async_hello"));
    let (python, node) = (
        path("examples/python/server.py"),
        path("examples/node/server.js"),
    );
    // The system's interpreter: one under root's home (pyenv) is not the
    // worker's to run.
    let python3 = "/usr/bin/python3";
    // (name, command, max threads, max fds): Node needs more fds to start.
    let servers: [(&str, Vec<&str>, u64, u64); 5] = [
        ("hello, out of threads", vec![&hello], FEW_THREADS, MANY),
        ("hello, out of fds", vec![&hello], MANY, FEW_FDS),
        ("async", vec![&async_hello], FEW_THREADS, FEW_FDS),
        ("python", vec![python3, &python], FEW_THREADS, MANY),
        ("node", vec!["node", &node], FEW_THREADS, 64),
    ];
    for (name, command, max_threads, max_fds) in servers {
        if name == "python" && !Path::new(python3).exists() {
            crate::support::skip(&format!("python: no {python3} for the worker's user"));
            continue;
        }
        let mut args = vec!["-w", "1", "--ready", "notify", "--user", "daemon"];
        args.extend_from_slice(&["-l", "127.0.0.1:0", "--"]);
        args.extend_from_slice(&command);
        let mut master = Master::start_with(&args, |cmd| {
            // SAFETY: setrlimit only, between fork and exec. The master
            // (root) is not held to RLIMIT_NPROC; its worker is.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                    let set = |resource, max| {
                        let limit = libc::rlimit {
                            rlim_cur: max,
                            rlim_max: max,
                        };
                        libc::setrlimit(resource, &limit)
                    };
                    set(libc::RLIMIT_NPROC, max_threads);
                    set(libc::RLIMIT_NOFILE, max_fds);
                    Ok(())
                });
            }
        });
        let addr = master.listening();
        let (_, pid) = master.ready_workers()[0];
        let held: Vec<_> = (0..CONNECTIONS)
            .filter_map(|_| {
                let mut conn = std::net::TcpStream::connect(addr).ok()?;
                std::io::Write::write_all(&mut conn, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
                Some(conn)
            })
            .collect();
        assert_eq!(held.len(), CONNECTIONS);
        // It ran out: of fds (they are all open), or of threads (it said so).
        let out_of_something = || {
            !is_gone(pid)
                && (open_fds(pid).len() as u64 >= max_fds - 4
                    || master.log_text().contains("thread"))
        };
        assert!(
            wait_until(WAIT, out_of_something),
            "{name}: never ran out ({} fds)\n{}",
            open_fds(pid).len(),
            master.log_text()
        );
        drop(held);
        let response = wait_for_answer(addr);
        assert_eq!(
            (response.status, response.pid()),
            (200, Some(pid)),
            "{name}: the same worker serves on\n{}",
            master.log_text()
        );
        master.stop_cleanly();
    }
}

/// The first 200 on a fresh connection, trying again (bounded) while the
/// worker frees what the released connections held.
fn wait_for_answer(addr: std::net::SocketAddr) -> http::Response {
    let mut last = None;
    let answered = wait_until(WAIT, || match http::get(addr, "/") {
        Ok(response) if response.status == 200 => {
            last = Some(response);
            true
        }
        _ => false,
    });
    assert!(answered, "no answer after the connections were released");
    last.unwrap()
}
