//! An idle master sleeps: no periodic wake-up with the default options,
//! nor with `--metrics` when nobody scrapes.

use std::time::{Duration, Instant};

use crate::bench::procfs;
use crate::support::{Master, example};

/// How often the master woke in `window` (voluntary context switches).
fn wakeups(master: &Master, window: Duration) -> u64 {
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
