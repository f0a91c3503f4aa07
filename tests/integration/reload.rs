//! Rolling reloads: every worker replaced under load without one failed
//! request; a bad release (crashes, never ready) aborts the reload and the
//! old workers keep serving; HUP storms coalesce into one plan.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::support::load::Load;
use crate::support::{
    Master, SHORT_HOLD, TempDir, apply_ready, example, release_switch, reload_under_load,
};

fn hello_reload_under_load(workers: usize, keep_alive: bool) {
    let hello = example("hello");
    let n = workers.to_string();
    let mut master = Master::start(&[
        "-w",
        &n,
        "--ready",
        "notify",
        SHORT_HOLD,
        "-l",
        "127.0.0.1:0",
        "--",
        &hello,
    ]);
    let stats = reload_under_load(&mut master, workers, keep_alive, 10, true);
    eprintln!(
        "hello, {workers} workers, keep-alive {keep_alive}: {} served, {} failed",
        stats.ok(),
        stats.failed()
    );
}

#[test]
fn reload_under_load_2_workers_keep_alive() {
    hello_reload_under_load(2, true);
}

#[test]
fn reload_under_load_2_workers_connection_close() {
    hello_reload_under_load(2, false);
}

#[test]
fn reload_under_load_4_workers_keep_alive() {
    hello_reload_under_load(4, true);
}

#[test]
fn reload_under_load_4_workers_connection_close() {
    hello_reload_under_load(4, false);
}

/// Two workers serving under load, of a release that a flag file can turn
/// bad (running `bad` instead of hello).
struct Release {
    master: Master,
    flag: PathBuf,
    old: BTreeSet<i32>,
    load: Load,
    _dir: TempDir,
}

impl Release {
    fn start(bad: &str, extra: &[&str], keep_alive: bool) -> Release {
        let dir = TempDir::new("release");
        let flag = dir.path("release");
        std::fs::write(&flag, "good").unwrap();
        let script = release_switch(&flag, bad);
        let mut args = vec!["-w", "2", "--ready", "notify", "-l", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", &script]);
        let mut master = Master::start(&args);
        let addr = master.listening();
        let old = master.ready_workers().into_iter().map(|w| w.1).collect();
        let load = Load::start(addr, 8, keep_alive);
        load.wait_for_more(100);
        Release {
            master,
            flag,
            old,
            load,
            _dir: dir,
        }
    }

    /// Deploys `good` or `bad`, and reloads.
    fn deploy(&mut self, release: &str) {
        std::fs::write(&self.flag, release).unwrap();
        self.master.signal(libc::SIGHUP);
    }

    /// After `aborted`: the old workers were never stopped, still run, and
    /// still serve.
    fn assert_old_workers_kept(&mut self, aborted: &Value) {
        assert_eq!(aborted["old_serving"], self.old.len());
        let log = self.master.log_text();
        for pid in &self.old {
            assert!(
                !log.contains(&format!("\"pid\":{pid},\"reason\"")),
                "old worker {pid} was stopped:\n{log}"
            );
            assert!(!crate::support::is_gone(*pid), "old worker {pid} is gone");
        }
        self.load.wait_for_more(100);
    }

    /// Not one request failed, all along.
    fn finish(self) {
        let stats = self.load.finish();
        assert_eq!(stats.failed(), 0, "{:?}", stats.errors);
    }
}

#[test]
fn a_release_that_crashes_on_start_aborts_the_reload_and_the_old_workers_keep_serving() {
    let mut release = Release::start("echo 'bad release' >&2; exit 1", &[], true);
    release.deploy("bad");
    let aborted = release.master.expect_msg("reload aborted");
    let cause = aborted["cause"].as_str().unwrap();
    assert!(cause.contains("exited with code 1"), "{cause}");
    assert_eq!(aborted["generation"], 2);
    release.assert_old_workers_kept(&aborted);
    // The next HUP, with the release fixed, completes.
    release.deploy("good");
    let complete = release.master.expect_msg("reload complete");
    assert_eq!(complete["generation"], 3);
    release.finish();
}

#[test]
fn a_release_that_never_says_ready_is_aborted_after_the_ready_timeout() {
    let never_ready = format!("exec {}", example("test_worker"));
    let mut release = Release::start(&never_ready, &["--ready-timeout", "1s"], false);
    release.deploy("bad");
    let not_ready = release.master.expect_msg("worker not ready");
    assert!(
        !release
            .old
            .contains(&(not_ready["pid"].as_i64().unwrap() as i32))
    );
    let aborted = release.master.expect_msg("reload aborted");
    let cause = aborted["cause"].as_str().unwrap();
    assert!(cause.contains("was not ready within 1.0s"), "{cause}");
    let exited = release.master.expect_msg("worker exited");
    assert_eq!(exited["pid"], not_ready["pid"]);
    assert_eq!(exited["signal"], "SIGKILL");
    release.assert_old_workers_kept(&aborted);
    release.finish();
}

#[test]
fn a_hup_storm_settles_on_the_latest_generation_without_overshooting() {
    let hello = example("hello");
    let batch = 1;
    let mut master = Master::start(&[
        "-w",
        "2",
        "--ready",
        "notify",
        "-l",
        "127.0.0.1:0",
        "--",
        &hello,
    ]);
    let addr = master.listening();
    master.ready_workers();
    let load = Load::start(addr, 16, true);
    load.wait_for_more(100);
    for _ in 0..20 {
        master.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(5));
    }
    // A marker: the master handles every pending signal in signal-number
    // order, so TTIN's record comes after every HUP has been handled.
    master.signal(libc::SIGTTIN);
    let mut records = master.collect_until("scaled up", |r| r["msg"] == "scaled");
    master.signal(libc::SIGTTOU);
    records.extend(master.collect_until("scaled down", |r| r["msg"] == "scaled"));
    let latest = records
        .iter()
        .filter(|r| r["msg"] == "reload started" || r["msg"] == "reload retargeted")
        .filter_map(|r| r["generation"].as_u64())
        .max()
        .expect("at least one reload");
    let settled = |r: &Value| r["msg"] == "reload complete" && r["generation"] == latest;
    if !records.iter().any(settled) {
        records.extend(master.collect_until("the last reload complete", settled));
    }
    let stats = load.finish();
    assert_eq!(stats.failed(), 0, "{:?}", stats.errors);

    // Replay the log: starting or ready workers never exceed slots + batch.
    let mut live: BTreeSet<i64> = BTreeSet::new();
    let mut slots = 2u64;
    let mut current = BTreeMap::new();
    for r in &records {
        let pid = r["pid"].as_i64().unwrap_or(0);
        match r["msg"].as_str().unwrap() {
            "worker spawned" => {
                live.insert(pid);
            }
            "worker draining" | "worker exited" | "worker not ready" => {
                live.remove(&pid);
            }
            "scaled" => slots = r["workers"].as_u64().unwrap(),
            _ => {}
        }
        assert!(
            live.len() as u64 <= slots + batch,
            "{} live with {slots} slots at {r}",
            live.len()
        );
    }
    apply_ready(&mut current, &records);
    current.retain(|&slot, _| slot < 2);
    assert!(
        current.values().all(|&(_, g)| g == latest),
        "{current:?} not all at {latest}"
    );
    assert_eq!(live.len(), 2, "exactly N workers remain: {live:?}");
}

#[test]
fn the_old_worker_is_not_stopped_before_the_new_one_says_ready() {
    let worker = example("test_worker");
    let mut master = Master::start(&[
        "-w",
        "1",
        "--ready",
        "notify",
        "--",
        &worker,
        "--ready-after",
        "500",
    ]);
    let old = master.ready_workers()[0].1;
    master.signal(libc::SIGHUP);
    let records = master.collect_until("reload complete", |r| r["msg"] == "reload complete");
    let position = |msg: &str, pred: &dyn Fn(&Value) -> bool| {
        records
            .iter()
            .position(|r| r["msg"] == msg && pred(r))
            .unwrap_or_else(|| panic!("no {msg}"))
    };
    let new_ready = position("worker ready", &|r| r["pid"] != old);
    let old_draining = position("worker draining", &|r| r["pid"] == old);
    assert!(
        new_ready < old_draining,
        "the old worker drained before its replacement was ready"
    );
    assert!(records[new_ready]["startup_ms"].as_u64().unwrap() >= 500);
}
