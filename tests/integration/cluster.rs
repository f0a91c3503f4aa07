//! `rcluster::Cluster`, the in-process fork mode, run by a real program
//! (`test_worker --cluster`) since it takes over signals and children.

use crate::support::{Master, TempDir, example, path_str, rcluster, run};

#[test]
fn cluster_refuses_to_start_once_the_process_has_two_threads() {
    let (code, _, stderr) = run(example("test_worker"), &["--cluster", "--thread-first"]);
    assert_eq!(code, 70, "{stderr}");
    assert!(stderr.contains("this process has 2 threads"), "{stderr}");
    assert!(
        !stderr.contains("worker spawned"),
        "nothing was forked: {stderr}"
    );
}

#[test]
fn cluster_restarts_a_panicking_worker_and_reloads_on_hup() {
    let dir = TempDir::new("cluster");
    let flag = dir.path("panic-once");
    std::fs::write(&flag, "").unwrap();
    let worker = example("test_worker");
    let mut master =
        Master::start_program(&worker, &["--cluster", "--panic-once", path_str(&flag)]);
    let exited = master.expect_msg("worker exited");
    assert_eq!(exited["code"], 101, "a panic exits 101");
    assert_eq!(exited["next"], "restart");
    let slot = exited["slot"].clone();
    master.expect("its replacement ready", |r| {
        r["msg"] == "worker ready" && r["slot"] == slot
    });
    master.expect_msg("workers ready");
    master.signal(libc::SIGHUP);
    let complete = master.expect_msg("reload complete");
    assert_eq!(complete["generation"], 2);
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

/// `rcluster reload --wait` used to hang against a cluster whose workers
/// are ready as soon as they are forked: the reload ended inside the
/// request, before the client was registered as waiting.
#[test]
fn reload_wait_answers_a_cluster_with_each_readiness_rule() {
    for ready in ["exec", "notify", "delay:200"] {
        let dir = TempDir::new("cluster-wait");
        let control = dir.path("control.sock");
        let release = dir.path("release");
        std::fs::write(&release, "good").unwrap();
        let worker = example("test_worker");
        let args = [
            "--cluster",
            "--ready",
            ready,
            "--control",
            path_str(&control),
            "--release",
            path_str(&release),
        ];
        let mut master = Master::start_program(&worker, &args);
        master.expect_msg("workers ready");
        let wait = ["reload", "--wait", "--control", path_str(&control)];
        let (code, out, err) = rcluster(&wait);
        assert_eq!(code, 0, "{ready}: {out}{err}");
        assert!(
            out.starts_with("reload complete: generation 2"),
            "{ready}: {out}"
        );
        // A release whose workers exit at start: whatever the rule, the
        // canary's hold (--min-ready) catches it (#18; under `exec` it used
        // to replace every worker).
        std::fs::write(&release, "bad").unwrap();
        let (code, out, err) = rcluster(&wait);
        assert_eq!(code, 1, "{ready}: {out}{err}");
        assert!(err.contains("reload aborted"), "{ready}: {err}");
        master.signal(libc::SIGTERM);
        assert_eq!(master.wait_exit().code(), Some(0), "{ready}");
    }
}

/// A library must not reap children its host program started: the
/// program's own child, once it exits, stays a zombie for the program to
/// collect, even after its SIGCHLD and a reload's worth of reaping.
#[test]
fn a_cluster_never_reaps_a_child_of_its_host_program() {
    let dir = TempDir::new("cluster-host-child");
    let file = dir.path("child.pid");
    let worker = example("test_worker");
    let mut master =
        Master::start_program(&worker, &["--cluster", "--host-child", path_str(&file)]);
    master.expect_msg("workers ready");
    let pid: i32 = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    let state = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
    };
    // SAFETY: ending the sleep this test's program started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let exited = |pid| matches!(state(pid), Some('Z') | None);
    assert!(
        crate::support::wait_until(crate::support::WAIT, || exited(pid)),
        "the host's child did not exit"
    );
    assert_eq!(state(pid), Some('Z'), "the master reaped its host's child");
    master.signal(libc::SIGHUP);
    let mut old_exits = 0;
    master.collect_until("both old workers reaped", |r| {
        if r["msg"] == "worker exited" && r["generation"] == 1 {
            old_exits += 1;
        }
        old_exits == 2
    });
    assert_eq!(state(pid), Some('Z'), "the master reaped its host's child");
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

/// The targets of a process's fds (`socket:[123]`, `anon_inode:[eventpoll]`…).
fn fd_targets(pid: i32) -> Vec<(i32, String)> {
    crate::support::open_fds(pid)
        .into_iter()
        .map(|fd| (fd, crate::support::fd_target(pid, fd)))
        .collect()
}

#[test]
fn a_forked_worker_keeps_nothing_of_the_master() {
    let dir = TempDir::new("cluster-clean");
    let out = dir.path("stdout");
    let worker = example("test_worker");
    let mut master = Master::start_program_with(
        &worker,
        &["--cluster", "--print-first", "printed-before-run"],
        |cmd| {
            cmd.stdout(std::fs::File::create(&out).unwrap());
            // Only stdio, as a service manager starts it: then every other
            // fd the master has is its own (cargo and shells leak some).
            // SAFETY: close_range only, between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(cmd, || {
                    libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, 0);
                    Ok(())
                });
            }
        },
    );
    let workers = master.ready_workers();
    let (_, pid) = workers[0];
    // Nothing it has open is the master's, but stdio and the listener.
    let master_fds = fd_targets(master.pid);
    let listener = master_fds
        .iter()
        .find(|(_, t)| t.starts_with("socket:"))
        .map(|(_, t)| t.clone());
    let shared: Vec<(i32, String)> = fd_targets(pid)
        .into_iter()
        .filter(|(fd, _)| *fd > 2)
        .filter(|(_, t)| master_fds.iter().any(|(_, m)| m == t))
        .collect();
    assert!(
        shared.iter().all(|(_, t)| Some(t) == listener.as_ref()),
        "the worker holds the master's fds: {shared:?} (the master has {master_fds:?})"
    );
    for (_, target) in fd_targets(pid) {
        for master_only in ["[eventpoll]", "[signalfd]", "[pidfd]"] {
            assert!(!target.contains(master_only), "{target} in the worker");
        }
    }
    // HUP to a worker ends it, as it would without rcluster; it is
    // restarted.
    // SAFETY: signalling a worker this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let exited = master.expect("the worker's exit", |r| {
        r["msg"] == "worker exited" && r["pid"] == pid
    });
    assert_eq!(exited["signal"], "SIGHUP", "{exited}");
    assert_eq!(exited["next"], "restart", "{exited}");
    master.expect("its replacement", |r| r["msg"] == "worker ready");
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
    let printed = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        printed.matches("printed-before-run").count(),
        1,
        "printed once, by the master, not again by each worker: {printed:?}"
    );
}
