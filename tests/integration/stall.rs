//! The master never stalls, and never silently changes what a worker gets
//! (#19): an env file that is a pipe, a FIFO, too big or gone; a worker
//! flooding the notify socket; a port kept by what an earlier master's
//! worker left; errors that name the call that failed; children the
//! master inherited; a worker that cannot start its stop thread.

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Master, TempDir, WAIT, environ, example, is_gone, path_str, rcluster, run, wait_until,
};

/// `rcluster status --json`, answered within `within` (the client's own
/// deadline: a master stalled in a read would not answer).
fn status_within(control: &str, within: &str) -> Value {
    let (code, out, err) = rcluster(&[
        "status",
        "--json",
        "--timeout",
        within,
        "--control",
        control,
    ]);
    assert!(code == 0 || code == 3, "status: {code} {err}");
    serde_json::from_str(&out).expect("status JSON")
}

fn reload_wait(control: &str) -> (i32, String) {
    let (code, out, err) =
        rcluster(&["reload", "--wait", "--timeout", "10s", "--control", control]);
    (code, format!("{out}{err}"))
}

#[test]
fn an_env_file_that_is_a_pipe_is_read_once_and_its_writer_is_left_alone() {
    let dir = TempDir::new("env-pipe");
    let control = path_str(&dir.path("control.sock")).to_string();
    let hello = example("hello");
    // As `rcluster --env-file <(sops -d secrets.env)` from a shell: the
    // writer is a child the shell leaves to rcluster, and lives on here.
    let script = format!(
        "exec {} --log-format json -w 2 -l 127.0.0.1:0 --control {control} \
         --env-file <(printf 'A=1\\n'; exec sleep 30 >&-) -- {hello}",
        crate::support::rcluster_bin().display()
    );
    let mut master = Master::start_program("bash", &["-c", &script]);
    master.expect_msg("env file read once");
    master.ready_workers();
    let writer = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", master.pid))
        .unwrap()
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|&pid| environ(pid, "RCLUSTER_WORKER_ID").is_none())
        .expect("the writer of the pipe, a child of the master");
    let (code, said) = reload_wait(&control);
    assert_eq!(code, 0, "{said}");
    let st = status_within(&control, "2s");
    for worker in st["workers"].as_array().unwrap() {
        assert_eq!(worker["generation"], 2, "{st}");
        let pid = worker["pid"].as_i64().unwrap() as i32;
        assert_eq!(
            environ(pid, "A").as_deref(),
            Some("1"),
            "generation 2 has A"
        );
    }
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
    let log = master.log_text();
    assert!(!log.contains("strays stopping"), "{log}");
    assert!(!is_gone(writer), "the inherited child was left alone");
    // SAFETY: the writer this test's shell started.
    unsafe { libc::kill(writer, libc::SIGKILL) };
}

#[test]
fn an_env_file_replaced_by_a_fifo_neither_blocks_the_master_nor_reaches_the_workers() {
    let dir = TempDir::new("env-fifo");
    let control = path_str(&dir.path("control.sock")).to_string();
    let env = dir.path(".env");
    std::fs::write(&env, "A=1\n").unwrap();
    let hello = example("hello");
    let mut master = Master::start(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--control",
        &control,
        "--env-file",
        path_str(&env),
        "--",
        &hello,
    ]);
    let old = master.ready_workers();
    std::fs::remove_file(&env).unwrap();
    nix::unistd::mkfifo(&env, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (code, said) = reload_wait(&control);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains(path_str(&env)) && said.contains("FIFO"),
        "{said}"
    );
    // The master answers at once, a crash is repaired, and TERM works.
    status_within(&control, "1s");
    // SAFETY: a worker of the master this test started.
    unsafe { libc::kill(old[0].1, libc::SIGKILL) };
    master.expect("the replacement", |r| {
        r["msg"] == "worker spawned" && r["slot"] == old[0].0
    });
    status_within(&control, "1s");
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn an_env_file_too_big_a_directory_or_gone_aborts_the_reload_with_one_line() {
    let dir = TempDir::new("env-bad");
    let control = path_str(&dir.path("control.sock")).to_string();
    let env = dir.path(".env");
    std::fs::write(&env, "A=1\n").unwrap();
    let hello = example("hello");
    let mut master = Master::start(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--control",
        &control,
        "--env-file",
        path_str(&env),
        "--",
        &hello,
    ]);
    let addr = master.listening();
    let old: Vec<i32> = master.ready_workers().iter().map(|w| w.1).collect();
    let zeros = || std::fs::write(&env, vec![0u8; 50 << 20]).unwrap();
    let directory = || {
        std::fs::remove_file(&env).unwrap();
        std::fs::create_dir(&env).unwrap();
    };
    let gone = || std::fs::remove_dir(&env).unwrap();
    let cases: [(&str, &dyn Fn()); 3] = [
        ("over the limit of 1 MiB", &zeros),
        ("a directory", &directory),
        ("No such file", &gone),
    ];
    for (why, make) in cases {
        make();
        let (code, said) = reload_wait(&control);
        assert_eq!(code, 1, "{why}: {said}");
        assert_eq!(said.lines().count(), 1, "one line: {said}");
        assert!(said.contains(why), "{said}");
        assert!(old.iter().all(|&pid| !is_gone(pid)));
        let answer = crate::support::get_once(addr, WAIT).expect("the old workers serve");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    master.stop_cleanly();
}

#[test]
fn a_worker_flooding_status_costs_a_few_lines_and_delays_nothing() {
    let dir = TempDir::new("status-flood");
    let control = path_str(&dir.path("control.sock")).to_string();
    let worker = example("test_worker");
    // Slot 0 sends 10,000 STATUS= a second for 5 s; slot 1 waits quietly.
    let script = format!(
        "if [ \"$RCLUSTER_WORKER_ID\" = 0 ]; then exec {worker} --status-flood 5000; fi; \
         exec {worker} --ready-after 0"
    );
    // --min-uptime 0s: the quiet worker's crash is restarted at once, not
    // after a backoff, so what is measured is the master's delay.
    let mut master = Master::start(&[
        "-w",
        "2",
        "--min-uptime",
        "0s",
        "--control",
        &control,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let workers = master.ready_workers();
    let started = Instant::now();
    assert!(wait_until(WAIT, || {
        status_within(&control, "2s")["workers"][0]["status"].is_string()
    }));
    // During the flood: status answers, and a crash is answered at once.
    let slowest = (0..5)
        .map(|_| {
            let asked = Instant::now();
            status_within(&control, "2s");
            asked.elapsed()
        })
        .max()
        .unwrap();
    let quiet = workers.iter().find(|w| w.0 == 1).unwrap().1;
    // SAFETY: a worker of the master this test started.
    unsafe { libc::kill(quiet, libc::SIGKILL) };
    let exited = master.expect("the quiet worker's exit", |r| {
        r["msg"] == "worker exited" && r["pid"] == quiet
    });
    let spawned = master.expect("its replacement", |r| {
        r["msg"] == "worker spawned" && r["slot"] == 1
    });
    let respawn = timestamp(&spawned) - timestamp(&exited);
    eprintln!("during the flood: status answered within {slowest:?}, respawn in {respawn:.1} ms");
    // Far below the seconds a stalled loop would take; no tighter, on a
    // busy 2-core machine.
    assert!(respawn < 500.0, "the respawn waited {respawn} ms");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "measured during the flood"
    );
    // After the flood: the last STATUS is kept, and was logged a few times.
    let mut last = String::new();
    assert!(wait_until(Duration::from_secs(15), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = status_within(&control, "2s")["workers"][0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let settled = now == last && started.elapsed() > Duration::from_secs(5);
        last = now;
        settled
    }));
    let (_, slot, _) = rcluster(&["status", "--slot", "0", "--control", &control]);
    assert!(slot.contains(&format!("STATUS={last}")), "{slot}");
    let logged = master
        .log_text()
        .lines()
        .filter(|l| l.contains("\"worker status\""))
        .count();
    assert!(logged <= 10, "{logged} status lines for 5 s of flood");
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

/// A record's `ts`, in milliseconds since the epoch.
fn timestamp(record: &Value) -> f64 {
    let ts = record["ts"].as_str().expect("ts");
    let at = humantime::parse_rfc3339(ts).expect("an RFC 3339 time");
    at.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

#[test]
fn a_port_kept_by_what_an_earlier_masters_worker_left_is_named_at_the_next_start() {
    let dir = TempDir::new("port-kept");
    let pidfile = dir.path("daemon.pid");
    let hello = example("hello");
    // A worker that starts a daemon, which inherits the listening socket.
    let script = format!(
        "setsid sleep 300 & echo $! > {}; exec {hello}",
        path_str(&pidfile)
    );
    let port = crate::support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut master = Master::start(&["-w", "1", "-l", &listen, "--", "sh", "-c", &script]);
    master.ready_workers();
    let daemon: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The worker is ready before its background `setsid` has left the
    // worker's process group; killed before that, it goes with the group
    // (the undertaker stops the group, as the master's own stop would).
    let detached = wait_until(WAIT, || {
        std::fs::read_to_string(format!("/proc/{daemon}/stat")).is_ok_and(|stat| {
            let fields: Vec<&str> = stat.split_whitespace().collect();
            fields.get(1) == Some(&"(sleep)") && fields.get(4) == Some(&daemon.to_string().as_str())
        })
    });
    assert!(detached, "the daemon never left the worker's process group");
    master.signal(libc::SIGKILL);
    master.wait_exit();
    let (code, _, err) = rcluster(&["-w", "1", "-l", &listen, "--", &hello]);
    // SAFETY: the daemon this test's worker started.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    assert_eq!(code, 71, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("held by pid {daemon} (sleep)")),
        "{err}"
    );
    assert!(err.contains(&format!("kill {daemon}")), "{err}");
}

#[test]
fn a_failed_start_names_the_call_that_failed() {
    // Fewer fds than a worker's pipes need: some call before the clone
    // runs out, and the log says which (not "fork failed: EMFILE").
    for limit in 8..40 {
        let mut master = Master::start_with(
            &["-w", "1", "--ready", "exec", "--", "sleep", "60"],
            |cmd| {
                // SAFETY: setrlimit only, between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        let max = libc::rlimit {
                            rlim_cur: limit,
                            rlim_max: limit,
                        };
                        libc::setrlimit(libc::RLIMIT_NOFILE, &max);
                        Ok(())
                    });
                }
            },
        );
        let first = master.expect("a worker's start", |r| {
            r["msg"] == "worker spawned" || r["msg"] == "spawn failed" || r["msg"] == "stopped"
        });
        if first["msg"] == "spawn failed" {
            let error = first["error"].as_str().unwrap();
            assert!(error.ends_with("failed: EMFILE"), "{error}");
            assert!(!error.starts_with("fork"), "{error}");
            return;
        }
    }
    panic!("no limit made the start of a worker fail");
}

#[test]
fn a_worker_that_cannot_start_its_stop_thread_is_told_and_still_drains() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        crate::support::skip("needs root, to run the worker as a user of its own");
        return;
    }
    let worker = example("test_worker");
    // The worker's user may have one process: no thread can start.
    let mut master = Master::start_with(
        &[
            "-w",
            "1",
            "--user",
            "daemon",
            "--stop-timeout",
            "5s",
            "--",
            &worker,
            "--receiver",
        ],
        |cmd| {
            // SAFETY: setrlimit only, between fork and exec. The master
            // (root) is not held to RLIMIT_NPROC; its worker is.
            unsafe {
                cmd.pre_exec(|| {
                    let one = libc::rlimit {
                        rlim_cur: 1,
                        rlim_max: 1,
                    };
                    libc::setrlimit(libc::RLIMIT_NPROC, &one);
                    Ok(())
                });
            }
        },
    );
    master.ready_workers();
    assert!(
        wait_until(WAIT, || master.log_text().contains("no stop channel")),
        "the worker was told: {}",
        master.log_text()
    );
    master.stop_cleanly();
}

#[test]
fn hello_out_of_threads_says_so_a_few_times_not_per_connection() {
    let (code, _, _) = run("id", &["daemon"]);
    // SAFETY: getuid has no preconditions.
    if code != 0 || unsafe { libc::getuid() } != 0 {
        crate::support::skip("needs root and a daemon user");
        return;
    }
    let hello = example("hello");
    let mut master = Master::start_with(
        &[
            "-w",
            "1",
            "-l",
            "127.0.0.1:0",
            "--user",
            "daemon",
            "--",
            &hello,
        ],
        |cmd| {
            // SAFETY: setrlimit only, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let few = libc::rlimit {
                        rlim_cur: 4,
                        rlim_max: 4,
                    };
                    libc::setrlimit(libc::RLIMIT_NPROC, &few);
                    Ok(())
                });
            }
        },
    );
    let addr = master.listening();
    master.ready_workers();
    let complaints = |master: &Master| {
        master
            .log_text()
            .lines()
            .filter(|l| l.contains("cannot start a thread"))
            .count()
    };
    // Idle connections hold the threads it may have; every other one then
    // finds none.
    let _held: Vec<_> = (0..8)
        .filter_map(|_| std::net::TcpStream::connect(addr).ok())
        .collect();
    assert!(
        wait_until(WAIT, || complaints(&master) > 0),
        "it never ran out"
    );
    // 300 more connections, each refused for want of a thread.
    let started = Instant::now();
    for _ in 0..300 {
        let _ = crate::support::get_once(addr, Duration::from_secs(5));
    }
    let seconds = started.elapsed().as_secs() + 1;
    // Its stderr comes through the master: wait until it has all come.
    let mut last = usize::MAX;
    wait_until(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(200));
        let now = complaints(&master);
        std::mem::replace(&mut last, now) == now
    });
    let lines = last as u64;
    assert!(
        lines <= 2 * seconds,
        "{lines} lines for 300 connections in {seconds} s"
    );
}

/// A blkio cgroup (v1) whose reads from one device are throttled; the
/// processes moved into it go back to the root group when it drops.
struct SlowDisk {
    dir: std::path::PathBuf,
    pids: Vec<i32>,
}

impl SlowDisk {
    /// `None` where the machine cannot: not root, no cgroup v1 blkio.
    fn new(dev: u64, bytes_per_second: u64) -> Option<SlowDisk> {
        let root = std::path::Path::new("/sys/fs/cgroup/blkio");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !root.join("cgroup.procs").exists() {
            return None;
        }
        let dir = root.join(format!("rcluster-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let disk = SlowDisk {
            dir,
            pids: Vec::new(),
        };
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        std::fs::write(
            disk.dir.join("blkio.throttle.read_bps_device"),
            format!("{major}:{minor} {bytes_per_second}"),
        )
        .ok()?;
        Some(disk)
    }

    fn take(&mut self, pid: i32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
        self.pids.push(pid);
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = std::fs::write("/sys/fs/cgroup/blkio/cgroup.procs", pid.to_string());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `{"cmd":"status"}` asked by the test itself, the same request each time
/// (an `rcluster status` would read the master's binary back into the
/// cache before the master ran): the answer's line.
fn raw_status(control: &str, within: Duration) -> std::io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(control)?;
    stream.set_read_timeout(Some(within))?;
    std::io::Write::write_all(&mut stream, b"{\"cmd\":\"status\"}\n")?;
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut answer)?;
    Ok(answer)
}

/// The stall of #35, reproduced: a master asleep, its binary's cache
/// evicted (as a host's reclaim of cold pages does; the test machine runs
/// DAMON `pageout`), its reads from the disk throttled to 64 KiB/s (a disk
/// busy with the suite's builds): `status` is answered within 1 s, since
/// the code it runs stays resident, locked as it faulted in. Before, the
/// master dropped its code when idle, and each page of it the status ran
/// was read from the disk again, in uninterruptible sleep (the suite saw
/// turns of 1.6 s to 19.9 s).
#[test]
fn a_master_whose_disk_is_slow_answers_status_from_memory() {
    use std::os::unix::fs::MetadataExt;
    let (master, control, _dirs) = crate::support::master_of_its_own("slow-disk", "1");
    raw_status(&control, WAIT).expect("status");
    assert!(
        crate::bench::procfs::wait_asleep(master.pid, Instant::now() + WAIT),
        "the master never went to sleep without a deadline"
    );
    let exe = std::fs::read_link(format!("/proc/{}/exe", master.pid)).unwrap();
    let dev = std::fs::metadata(&exe).unwrap().dev();
    let Some(mut disk) = SlowDisk::new(dev, 64 * 1024) else {
        return crate::support::skip("needs root and cgroup v1 blkio to slow the disk down");
    };
    disk.take(master.pid);
    crate::support::evict_cache(path_str(&exe));
    for _ in 0..3 {
        let asked = Instant::now();
        let answer = raw_status(&control, Duration::from_secs(1));
        assert!(
            answer.as_ref().is_ok_and(|a| a.contains("\"ok\":true")),
            "no answer to status within 1 s from a master whose disk is slow: {answer:?} after \
             {:?}",
            asked.elapsed()
        );
    }
    drop(disk);
    master.stop_cleanly();
}
