//! `rcluster::Cluster`, the in-process fork mode, run by a real program
//! (`test_worker --cluster`) since it takes over signals and children.

use crate::support::{Master, TempDir, example, path_str, run};

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
