//! An idle master sleeps: no periodic wake-up with the default options,
//! nor with `--metrics` when nobody scrapes.

use std::time::{Duration, Instant};

use crate::bench::procfs;
use crate::support::{Master, example, wait_until};

/// Whether the master sleeps in its poll now (not between writing its last
/// record and going back to sleep, which would count as one wake-up).
fn asleep(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('S'))
        && syscall
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<i64>().ok())
            .is_some_and(is_epoll_wait)
}

#[cfg(target_arch = "x86_64")]
fn is_epoll_wait(call: i64) -> bool {
    call == libc::SYS_epoll_wait || call == libc::SYS_epoll_pwait
}

#[cfg(not(target_arch = "x86_64"))]
fn is_epoll_wait(call: i64) -> bool {
    call == libc::SYS_epoll_pwait
}

/// How often the master woke in `window` (voluntary context switches).
fn wakeups(master: &Master, window: Duration) -> u64 {
    assert!(
        wait_until(Duration::from_secs(10), || asleep(master.pid)),
        "the master never went to sleep"
    );
    let before = procfs::read(master.pid).voluntary_switches;
    // The measurement is this window itself: nothing to wait for.
    let end = Instant::now() + window;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
    procfs::read(master.pid).voluntary_switches - before
}

#[test]
fn an_idle_master_does_not_wake_with_or_without_metrics() {
    let worker = example("test_worker");
    for extra in [&[][..], &["--metrics", "127.0.0.1:0"][..]] {
        let mut args = vec!["-w", "2", "--ready", "notify"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", &worker, "--ready-after", "0"]);
        let mut master = Master::start(&args);
        master.expect_msg("workers ready");
        assert_eq!(
            wakeups(&master, Duration::from_secs(10)),
            0,
            "rcluster {extra:?} woke while idle"
        );
        master.stop_cleanly();
    }
}
