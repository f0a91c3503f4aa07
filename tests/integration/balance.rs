//! `--balance reuseport`: a listening socket per slot, kept by the master;
//! steered onto the slots with a ready worker; checked with wrk.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::wrk::Wrk;
use crate::support::{
    Master, SHORT_HOLD, TempDir, environ, example, fd_target, get_once, path_str, rcluster,
    reload_under_wrk, wait_until,
};

fn reuseport(workers: &str, extra: &[&str], command: &[&str]) -> Master {
    let mut args = vec![
        "-w",
        workers,
        "--balance",
        "reuseport",
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

/// The master's workers now: slot -> (pid, fd 3's socket inode).
fn sockets(master: &Master) -> BTreeMap<u64, (i32, String)> {
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", master.pid)).unwrap();
    children
        .split_whitespace()
        .filter_map(|pid| pid.parse::<i32>().ok())
        .filter_map(|pid| {
            let slot = environ(pid, "RCLUSTER_WORKER_ID")?.parse().ok()?;
            Some((slot, (pid, fd_target(pid, 3))))
        })
        .collect()
}

/// Whether fd `fd` of process `pid` is a socket with `SO_REUSEPORT` set,
/// looked at through a duplicate (pidfd_getfd: the test is its ancestor).
fn has_reuseport(pid: i32, fd: i32) -> bool {
    // SAFETY: plain syscalls on fds this function owns and closes.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(pidfd >= 0, "pidfd_open({pid})");
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        libc::close(pidfd);
        assert!(dup >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let rc = libc::getsockopt(
            dup,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        );
        libc::close(dup);
        rc == 0 && on == 1
    }
}

#[test]
fn each_slot_has_its_own_sockets_which_its_workers_take_in_turn_under_wrk() {
    let hello = example("hello");
    for keep_alive in [true, false] {
        let mut master = reuseport("4", &[], &[&hello]);
        assert!(
            wait_until(Duration::from_secs(10), || sockets(&master).len() == 4),
            "4 workers"
        );
        let before = sockets(&master);
        let inodes: std::collections::BTreeSet<&String> =
            before.values().map(|(_, inode)| inode).collect();
        assert_eq!(inodes.len(), 4, "a socket per slot: {before:?}");
        for (pid, inode) in before.values() {
            assert!(inode.starts_with("socket:"), "{inode}");
            assert!(has_reuseport(*pid, 3), "pid {pid}'s fd 3 has SO_REUSEPORT");
        }
        // An odd number: each slot's worker now has the slot's other socket
        // (a replacement gets no connection until it is proven).
        reload_under_wrk(&mut master, 4, keep_alive, 11, true);
        let after = sockets(&master);
        let new: std::collections::BTreeSet<&String> =
            after.values().map(|(_, inode)| inode).collect();
        assert_eq!(new.len(), 4, "a socket per slot: {after:?}");
        for (slot, (pid, inode)) in &after {
            let (old_pid, old_inode) = &before[slot];
            assert_ne!(pid, old_pid, "slot {slot} was replaced");
            assert_ne!(
                inode, old_inode,
                "slot {slot}'s new worker has its other socket"
            );
            assert!(!inodes.contains(inode), "no other slot's socket");
        }
        master.stop_cleanly();
    }
}

#[test]
fn connections_during_a_crash_loop_backoff_go_to_the_other_slots() {
    let dir = TempDir::new("balance-backoff");
    let flag = dir.path("crash");
    let script = format!(
        "if [ \"$RCLUSTER_WORKER_ID\" = 1 ] && [ -e {} ]; then exit 1; fi; exec \"$0\"",
        flag.display()
    );
    let hello = example("hello");
    let control = dir.path("control.sock");
    let mut master = reuseport(
        "4",
        &["--restart-delay", "10s", "--control", path_str(&control)],
        &["sh", "-c", &script, &hello],
    );
    let addr = master.listening();
    let workers = master.ready_workers();
    std::fs::write(&flag, "").unwrap();
    let (_, pid) = workers.iter().find(|(slot, _)| *slot == 1).unwrap();
    // SAFETY: a worker of the master this test started.
    unsafe { libc::kill(*pid, libc::SIGKILL) };
    // Killed after less than --min-uptime, or restarted and crashing at
    // once: either way slot 1 now waits out a 10 s backoff.
    let backoff = master.expect("slot 1 backing off", |r| {
        r["msg"] == "worker exited" && r["slot"] == 1 && r["restart_in_ms"].as_u64() >= Some(5000)
    });
    let until = Instant::now() + Duration::from_millis(backoff["restart_in_ms"].as_u64().unwrap());
    // The steering away from slot 1 is carried out in the same turn as
    // the exit is logged, just after: a status answered comes after it.
    let (code, _, err) = rcluster(&["status", "--control", path_str(&control)]);
    assert!(code == 0 || code == 3, "{err}");
    // Each request would wait out the backoff on slot 1's queue if the
    // kernel still hashed connections there; 2 s is far below 10 s.
    let mut served = 0;
    while served < 200 && Instant::now() + Duration::from_secs(3) < until {
        let answer = get_once(addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("request {served} during the backoff: {e}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(!answer.contains("worker 1 "), "{answer}");
        served += 1;
    }
    assert_eq!(served, 200);
    drop(master);
}

#[test]
fn scaling_4_to_2_to_4_under_wrk_loses_nothing() {
    let hello = example("hello");
    let dir = TempDir::new("balance-scale");
    let control = dir.path("control.sock");
    let control = control.to_str().unwrap();
    let scale = |n: &str| {
        let (code, out, err) = rcluster(&["scale", n, "--control", control]);
        assert_eq!(code, 0, "{out}{err}");
    };
    for keep_alive in [true, false] {
        let mut master = reuseport("4", &["--control", control], &[&hello]);
        let addr = master.listening();
        master.ready_workers();
        let wrk = Wrk::start(addr, 32, keep_alive);
        wrk.wait_for_more(200);
        for _ in 0..2 {
            scale("2");
            for _ in 0..2 {
                master.expect("a scaled-away worker's exit", |r| {
                    r["msg"] == "worker exited" && r["reason"] == "scaled down"
                });
            }
            wrk.wait_for_more(200);
            scale("4");
            for _ in 0..2 {
                master.expect_msg("worker ready");
            }
            wrk.wait_for_more(200);
        }
        let stats = wrk.finish();
        assert!(stats.requests > 0, "{stats:?}");
        assert_eq!(stats.failed(), 0, "scaling lost requests: {stats:?}");
        master.stop_cleanly();
    }
}
