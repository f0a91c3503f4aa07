//! TTIN and TTOU: one worker more or less, never fewer than one.

use crate::support::Master;

#[test]
fn ttin_adds_a_worker_and_ttou_removes_one_but_never_the_last() {
    let worker = crate::support::example("test_worker");
    let mut master = Master::start(&["-w", "1", "--", &worker]);
    master.ready_workers();
    master.signal(libc::SIGTTIN);
    assert_eq!(master.expect_msg("scaled")["workers"], 2);
    let added = master.expect("slot 1 ready", |r| {
        r["msg"] == "worker ready" && r["slot"] == 1
    });
    master.signal(libc::SIGTTOU);
    assert_eq!(master.expect_msg("scaled")["workers"], 1);
    let exited = master.expect_msg("worker exited");
    assert_eq!(exited["pid"], added["pid"]);
    assert_eq!(exited["reason"], "scaled down");
    master.signal(libc::SIGTTOU);
    let ignored = master.expect_msg("signal ignored");
    assert_eq!(ignored["signal"], "SIGTTOU");
    // Still serving with one worker, and stops cleanly.
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn hup_does_not_kill_the_master() {
    let worker = crate::support::example("test_worker");
    let mut master = Master::start(&["-w", "1", "--", &worker]);
    master.ready_workers();
    master.signal(libc::SIGHUP);
    master.expect_msg("reload started");
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}
