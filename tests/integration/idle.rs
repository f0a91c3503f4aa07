//! An idle master sleeps: no periodic wake-up with the default options,
//! nor with `--metrics` when nobody scrapes.

use std::time::{Duration, Instant};

use crate::bench::procfs;
use crate::support::{Master, example, path_str, rcluster, wait_until};

/// Whether the master sleeps in its poll now with nothing to wait for: not
/// between writing its last record and going back to sleep, nor before
/// the one turn that may follow its last work within a second (giving
/// back the memory that work used), each of which would count as a
/// wake-up.
fn asleep(pid: i32) -> bool {
    procfs::epoll_timeout(pid) == Some(-1)
}

/// How often each master woke in one `window` (voluntary context
/// switches), measured over the same window for all.
fn wakeups(masters: &[Master], window: Duration) -> Vec<u64> {
    for master in masters {
        assert!(
            wait_until(Duration::from_secs(10), || asleep(master.pid)),
            "the master never went to sleep"
        );
    }
    let before: Vec<u64> = masters
        .iter()
        .map(|m| procfs::read(m.pid).voluntary_switches)
        .collect();
    // The measurement is this window itself: nothing to wait for.
    let end = Instant::now() + window;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
    masters
        .iter()
        .zip(before)
        .map(|(m, before)| procfs::read(m.pid).voluntary_switches - before)
        .collect()
}

#[test]
fn an_idle_master_does_not_wake_with_or_without_metrics() {
    let worker = example("test_worker");
    let options = [&[][..], &["--metrics", "127.0.0.1:0"][..]];
    let masters: Vec<Master> = options
        .iter()
        .map(|extra| {
            let mut args = vec!["-w", "2", "--ready", "notify"];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["--", &worker, "--ready-after", "0"]);
            let mut master = Master::start(&args);
            master.expect_msg("workers ready");
            master
        })
        .collect();
    let woke = wakeups(&masters, Duration::from_secs(10));
    assert_eq!(woke, [0, 0], "rcluster {options:?} woke while idle");
    for master in masters {
        master.stop_cleanly();
    }
}

/// KiB of the rcluster binary's code and read-only data in `pid`: mapped,
/// resident, and mapped locked in memory (`lo` in `VmFlags`: its pages
/// are locked as they fault in). Only the mappings that are the file's own
/// (no page of them copied on write, as relocations are).
fn own_code_kib(pid: i32) -> (u64, u64, u64) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the master's binary");
    let exe = exe.to_string_lossy().into_owned();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut mapped, mut resident, mut locked) = (0, 0, 0);
    let mut ours = false;
    let (mut size, mut rss, mut anonymous) = (0, 0, 0);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        // A mapping's first line: range and permissions; then `Key: kB`.
        let second = fields.next().unwrap_or_default();
        let kib = second.parse::<u64>().unwrap_or(0);
        match first {
            "Size:" => size = kib,
            "Rss:" => rss = kib,
            "Anonymous:" => anonymous = kib,
            // The last line of each mapping.
            "VmFlags:" if ours && anonymous == 0 => {
                mapped += size;
                resident += rss;
                if line.split_whitespace().any(|flag| flag == "lo") {
                    locked += size;
                }
            }
            _ if first.contains('-') && !first.contains(':') => {
                ours = !second.contains('w') && line.ends_with(&*exe);
            }
            _ => {}
        }
    }
    (mapped, resident, locked)
}

/// The master's major page faults so far (`/proc/PID/stat` field 12).
fn major_faults(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(") ").unwrap();
    rest.split_whitespace().nth(9).unwrap().parse().unwrap()
}

/// An idle master keeps the code its work ran mapped (it used to drop it,
/// #35): the binary's cache evicted, as a memory-short host or a
/// `drop_caches` does, the next `status` needs not one page from the disk.
/// Dropped, each page of code it ran again was a major fault, waited for in
/// uninterruptible sleep: turns of 1.6 s to 19.9 s under the test suite's
/// disk load.
#[test]
fn an_idle_master_never_waits_on_the_disk_for_its_own_code() {
    let (master, control, _dirs) = crate::support::master_of_its_own("idle-code", "2");
    let (code, _, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = rcluster(&["status", "--control", &control]);
    assert_eq!(code, 0, "{err}");
    let (_, awake, _) = own_code_kib(master.pid);
    assert!(
        procfs::wait_asleep(master.pid, Instant::now() + Duration::from_secs(10)),
        "the master never went to sleep without a deadline"
    );
    let (mapped, asleep, locked) = own_code_kib(master.pid);
    assert!(
        asleep >= awake,
        "{asleep} KiB of rcluster's {mapped} KiB of code resident asleep, {awake} KiB awake"
    );
    // Locked as it ran: no reclaim of cold pages (the kernel's under
    // memory pressure, DAMON's on this machine) can take it either.
    assert!(
        locked == mapped && locked > 0,
        "{locked} KiB of rcluster's {mapped} KiB of code mapped locked"
    );
    let exe = std::fs::read_link(format!("/proc/{}/exe", master.pid)).unwrap();
    crate::support::evict_cache(path_str(&exe));
    let before = major_faults(master.pid);
    let (code, _, err) = rcluster(&["status", "--control", &control]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        major_faults(master.pid) - before,
        0,
        "the master read its own code from the disk again"
    );
    master.stop_cleanly();
}
