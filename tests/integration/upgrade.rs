//! Live upgrades of the master (#23): `rcluster upgrade` and `SIGUSR2`
//! replace the master's image in place — same pid, same sockets, same
//! workers, counters carried — under wrk without a failed request; a bad
//! new binary changes nothing and says why; a reload in progress is
//! waited for; a worker that dies while the image is replaced is restarted
//! by the new one; a library's cluster refuses.
//!
//! The master runs from a copy of the binary in a temporary `bin/`, which
//! each test replaces as a deploy would (a new file renamed over it).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::support::wrk::Wrk;
use crate::support::{
    Master, TempDir, WAIT, example, is_gone, open_fds, path_str, rcluster, rcluster_bin,
    ready_pids, status, wait_until,
};

/// The same source built with `RCLUSTER_BUILD_TAG=upgrade-test`: a binary
/// whose version says it is another build (`0.1.0+upgrade-test`). Built
/// at the lowest priority, in a target directory of its own, so that the
/// tests running meanwhile keep the CPU (on a fresh machine this builds
/// the dependencies once more).
fn tagged_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target/tmp/tagged");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new("nice")
            .args(["-n", "19"])
            .arg(cargo)
            .args(["build", "--quiet", "--bin", "rcluster"])
            .env("CARGO_TARGET_DIR", &target)
            .env("RCLUSTER_BUILD_TAG", "upgrade-test")
            .current_dir(root)
            .status()
            .expect("running cargo build for the tagged binary");
        assert!(status.success(), "building the tagged rcluster failed");
        target.join("debug/rcluster")
    })
}

/// A `bin/rcluster` the master runs from, replaced as a deploy does.
struct Bin {
    dir: TempDir,
}

impl Bin {
    fn new(tag: &str) -> Bin {
        let bin = Bin {
            dir: TempDir::new(tag),
        };
        bin.install_copy(&rcluster_bin());
        bin
    }

    fn path(&self) -> PathBuf {
        self.dir.path("rcluster")
    }

    /// Puts `bytes` at `bin/rcluster` at once (written beside, synced,
    /// renamed over), with `mode`. Synced as a careful deploy does: the
    /// master closes the file it replaced, and the kernel's eviction of an
    /// unlinked file waits for its pages still being written back (an
    /// upgraded master was caught in `close` for seconds, in
    /// `folio_wait_writeback`, under the suite's disk load).
    fn install(&self, bytes: &[u8], mode: u32) {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let next = self.dir.path("rcluster.next");
        let mut file = std::fs::File::create(&next).unwrap();
        file.write_all(bytes).unwrap();
        file.sync_all().unwrap();
        drop(file);
        std::fs::set_permissions(&next, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&next, self.path()).unwrap();
    }

    fn install_copy(&self, binary: &Path) {
        self.install(&std::fs::read(binary).unwrap(), 0o755);
    }

    fn install_script(&self, body: &str) {
        self.install(format!("#!/bin/sh\n{body}\n").as_bytes(), 0o755);
    }

    fn control(&self) -> String {
        path_str(&self.dir.path("control.sock")).to_string()
    }

    /// `bin/rcluster --log-format json ARGS -- hello`, on a free port.
    fn start(&self, args: &[&str]) -> Master {
        self.start_with(args, |_| {})
    }

    fn start_with(&self, args: &[&str], setup: impl FnOnce(&mut std::process::Command)) -> Master {
        let control = self.control();
        let mut all = vec!["--log-format", "json", "-l", "127.0.0.1:0"];
        all.extend(["--control", &control]);
        all.extend(args);
        let hello = example("hello");
        all.extend(["--", &hello]);
        Master::start_program_with(path_str(&self.path()), &all, setup)
    }
}

/// Each worker's (slot, pid, generation), sorted.
fn workers(st: &Value) -> Vec<(u64, i64, u64)> {
    let mut workers: Vec<_> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["slot"].as_u64().unwrap(),
                w["pid"].as_i64().unwrap(),
                w["generation"].as_u64().unwrap(),
            )
        })
        .collect();
    workers.sort();
    workers
}

/// What an upgrade must carry over: the reload history, the generation,
/// the counters, and each worker's restarts, last exit and readiness.
fn carried(st: &Value) -> Value {
    let m = &st["master"];
    let per_worker: Vec<Value> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let keys = [
                "slot",
                "pid",
                "restarts",
                "last_exit",
                "last_exit_line",
                "ready_by",
            ];
            keys.iter().map(|k| w[*k].clone()).collect()
        })
        .collect();
    serde_json::json!({
        "last_reload": st["last_reload"],
        "generation": m["generation"],
        "serving_release": m["serving_release"],
        "releases": m["releases"],
        "log_lines_lost": m["log_lines_lost"],
        "notify_dropped": m["notify_dropped"],
        "workers": per_worker,
    })
}

fn upgrade(control: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "upgrade",
        "--wait",
        "--timeout",
        "60s",
        "--control",
        control,
    ];
    args.extend(extra);
    rcluster(&args)
}

/// Restarts and a reload first, so that there are counters to carry; then
/// five upgrades under wrk, alternating between another build and the
/// same binary again.
fn five_upgrades_under_wrk(workers_n: usize, keep_alive: bool) {
    let tagged = tagged_binary();
    let bin = Bin::new("upgrade-wrk");
    let control = bin.control();
    let n = workers_n.to_string();
    let mut master = bin.start(&["-w", &n]);
    let addr = master.listening();
    let first = master.ready_workers();
    // A crash (a restart to count) and a reload (a history to keep).
    // SAFETY: killing a worker this test started.
    unsafe { libc::kill(first[0].1, libc::SIGKILL) };
    master.expect("the crashed worker's replacement", |r| {
        r["msg"] == "worker ready" && r["slot"] == first[0].0
    });
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    let before = status(&control);
    let fds_before = open_fds(master.pid).len();
    let wrk = Wrk::start(addr, 32, keep_alive);
    wrk.wait_for_more(200);
    for round in 1..=5u64 {
        let (binary, version) = match round % 2 {
            1 => (tagged.to_path_buf(), "0.1.0+upgrade-test"),
            _ => (rcluster_bin(), "0.1.0"),
        };
        bin.install_copy(&binary);
        let (code, out, err) = upgrade(&control, &[]);
        assert_eq!(code, 0, "upgrade {round}: {out}{err}");
        assert!(out.starts_with("upgrade complete: rcluster "), "{out}");
        let st = status(&control);
        let m = &st["master"];
        assert_eq!(m["pid"], before["master"]["pid"], "the same process");
        assert_eq!(m["version"], version, "round {round}");
        assert_eq!(m["upgrades"]["done"], round, "{m}");
        assert_eq!(workers(&st), workers(&before), "the same workers");
        assert_eq!(carried(&st), carried(&before), "carried over");
        wrk.wait_for_more(200);
    }
    let stats = wrk.finish();
    assert!(stats.requests > 0, "{stats:?}");
    assert_eq!(
        stats.failed(),
        0,
        "failed requests during upgrades: {stats:?}"
    );
    // A client's connection or an exited worker's pipe the master has not
    // closed yet may be counted in either figure: what must hold is that
    // the count comes back to where it was, or below, as it settles.
    let settled = wait_until(WAIT, || open_fds(master.pid).len() <= fds_before);
    assert!(
        settled,
        "fds leaked across images: {} now, {fds_before} before",
        open_fds(master.pid).len()
    );
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn five_upgrades_under_wrk_keep_alive_with_two_workers_lose_nothing() {
    five_upgrades_under_wrk(2, true);
}

#[test]
fn five_upgrades_under_wrk_close_with_four_workers_lose_nothing() {
    five_upgrades_under_wrk(4, false);
}

/// What a bad new binary is.
enum Bad {
    NotExecutable,
    Bytes(&'static [u8]),
    Script(String),
}

/// Every bad binary is caught by the check: the old master serves on with
/// its workers, says why in one line, and `upgrade --wait` exits 1.
#[test]
fn a_bad_binary_never_takes_the_master_down() {
    let bin = Bin::new("upgrade-bad");
    let control = bin.control();
    let mut master = bin.start(&["-w", "2"]);
    let addr = master.listening();
    master.ready_workers();
    let before = status(&control);
    let wrk = Wrk::start(addr, 32, true);
    wrk.wait_for_more(200);
    let real = rcluster_bin();
    let real = path_str(&real);
    let cases = [
        ("not executable", Bad::NotExecutable, "Permission denied"),
        (
            "not a program",
            Bad::Bytes(b"\x7fELF garbage, not a binary"),
            "cannot run",
        ),
        (
            "exits while reading",
            Bad::Script("echo 'reading the hand-over...'; exit 3".into()),
            "exit code 3",
        ),
        (
            "crashes while reading",
            Bad::Script("kill -SEGV $$".into()),
            "SIGSEGV",
        ),
        (
            "predates live upgrades",
            Bad::Script("echo \"error: unexpected argument '$1' found\" >&2; exit 2".into()),
            "unexpected argument '--upgrade-check'",
        ),
        (
            "another format",
            Bad::Script(format!(
                "[ \"$1\" = --upgrade-check ] && {{ echo 'rcluster: hand-over format 1 is \
                 unknown to rcluster 9.0.0 (it reads format 2)' >&2; exit 64; }}; exec {real} \"$@\""
            )),
            "hand-over format 1 is unknown",
        ),
        (
            "says nothing",
            Bad::Script("exit 0".into()),
            "did not confirm",
        ),
    ];
    for (what, bad, says) in &cases {
        match bad {
            Bad::NotExecutable => bin.install(&std::fs::read(rcluster_bin()).unwrap(), 0o644),
            Bad::Bytes(bytes) => bin.install(bytes, 0o755),
            Bad::Script(body) => bin.install_script(body),
        }
        let (code, out, err) = upgrade(&control, &[]);
        assert_eq!(code, 1, "{what}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
        assert!(
            err.starts_with("rcluster: upgrade failed: "),
            "{what}: {err}"
        );
        assert!(err.contains(says), "{what}: {err}");
        let failed = master.expect(what, |r| r["msg"] == "upgrade failed");
        assert!(failed["cause"].as_str().unwrap().contains(says), "{failed}");
        let st = status(&control);
        assert_eq!(st["master"]["pid"], before["master"]["pid"], "{what}");
        assert_eq!(workers(&st), workers(&before), "{what}: the same workers");
        assert_eq!(st["master"]["upgrades"]["done"], 0, "{what}");
        wrk.wait_for_more(100);
    }
    // And then a good one goes through.
    bin.install_copy(&rcluster_bin());
    let (code, out, err) = upgrade(&control, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let stats = wrk.finish();
    assert_eq!(stats.failed(), 0, "failed requests: {stats:?}");
    assert_eq!(workers(&status(&control)), workers(&before));
}

/// A reload in progress when the upgrade is asked for: the upgrade waits
/// for it to end, then goes through; and `SIGUSR2` does what `rcluster
/// upgrade` does.
#[test]
fn an_upgrade_waits_for_a_reload_in_progress() {
    let bin = Bin::new("upgrade-reload");
    let control = bin.control();
    // Each new worker takes a second to be ready: a reload lasts a while.
    let mut master = bin.start(&["-w", "2", "--ready", "delay:1s"]);
    master.ready_workers();
    let (code, out, err) = rcluster(&["reload", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    master.signal(libc::SIGUSR2);
    let waiting = master.expect_msg("upgrade waiting");
    assert_eq!(waiting["why"], "a reload is in progress", "{waiting}");
    let records = master.collect_until("upgraded", |r| r["msg"] == "upgraded");
    let complete = records.iter().position(|r| r["msg"] == "reload complete");
    let upgrading = records.iter().position(|r| r["msg"] == "upgrading");
    assert!(
        complete.is_some() && complete < upgrading,
        "the reload completes before the upgrade: {records:?}"
    );
    let st = status(&control);
    assert_eq!(st["master"]["upgrades"]["done"], 1);
    assert_eq!(st["last_reload"]["result"], "complete", "{st}");
    assert!(workers(&st).iter().all(|w| w.2 == 2), "{st}");
}

/// A worker that dies while the master's image is replaced (here, killed
/// by a wrapper that runs in the master's process between the two
/// images) is a zombie the new image finds, reaps and restarts.
#[test]
fn a_worker_that_dies_during_the_upgrade_is_restarted_by_the_new_image() {
    let bin = Bin::new("upgrade-crash");
    let control = bin.control();
    let mut master = bin.start(&["-w", "2"]);
    let first = master.ready_workers();
    let victim = first[0].1;
    let real = rcluster_bin();
    // Only the new image (`--upgrade-resume`) kills; the check does not.
    bin.install_script(&format!(
        "case \"$1\" in --upgrade-resume=*) kill -9 {victim};; esac\nexec {} \"$@\"",
        path_str(&real)
    ));
    let (code, out, err) = upgrade(&control, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let records = master.collect_until("the victim's replacement", |r| {
        r["msg"] == "worker ready" && r["slot"] == first[0].0
    });
    let upgraded = records.iter().position(|r| r["msg"] == "upgraded");
    let exited = records
        .iter()
        .position(|r| r["msg"] == "worker exited" && r["pid"] == victim);
    assert!(
        upgraded.is_some() && upgraded < exited,
        "the new image saw the exit: {records:?}"
    );
    assert!(wait_until(WAIT, || is_gone(victim)), "reaped");
    let st = status(&control);
    assert_eq!(st["master"]["pid"], master.pid);
    let slot = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["slot"] == first[0].0)
        .unwrap();
    assert_eq!(slot["restarts"], 1, "{st}");
}

/// The file exec'd is the file checked (#35): a deploy that moves another
/// binary over the path while the check runs (here the checked script
/// does it itself, once its check has passed) does not get that binary
/// exec'd. Before, the master compared the path's identity again and gave
/// the upgrade up ("changed while it was checked").
#[test]
fn the_binary_execd_is_the_one_checked_whatever_the_path_holds_by_then() {
    let tagged = tagged_binary();
    let bin = Bin::new("upgrade-mv");
    let control = bin.control();
    let mut master = bin.start(&["-w", "2"]);
    let before = master.ready_workers();
    let next = bin.dir.path("rcluster.moved");
    bin.install_script(&format!(
        "case \"$1\" in --upgrade-check) {real} \"$@\"; rc=$?; \
           cp {tagged} {next} && chmod 755 {next} && mv {next} {path}; exit $rc;; esac\n\
         exec {real} \"$@\"",
        real = path_str(&rcluster_bin()),
        tagged = path_str(tagged),
        next = path_str(&next),
        path = path_str(&bin.path()),
    ));
    let (code, out, err) = upgrade(&control, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let st = status(&control);
    assert_eq!(
        st["master"]["version"], "0.1.0",
        "the checked script ran, not the binary moved over it: {}",
        st["master"]
    );
    let now: Vec<i64> = workers(&st).iter().map(|w| w.1).collect();
    assert!(before.iter().all(|(_, pid)| now.contains(&i64::from(*pid))));
    let moved = std::fs::metadata(bin.path()).unwrap().len();
    assert_eq!(
        moved,
        std::fs::metadata(tagged).unwrap().len(),
        "the path holds the moved binary by now"
    );
}

/// `rcluster upgrade --reload`: the new image then rolls the workers.
#[test]
fn upgrade_with_reload_rolls_the_workers_after() {
    let bin = Bin::new("upgrade-then-reload");
    let control = bin.control();
    let mut master = bin.start(&["-w", "2"]);
    let first = master.ready_workers();
    let (code, out, err) = upgrade(&control, &["--reload"]);
    assert_eq!(code, 0, "{out}{err}");
    master.expect("the reload after the upgrade", |r| {
        r["msg"] == "reload complete" && r["generation"] == 2
    });
    // The ready ones: a replaced worker may still be draining.
    let now: Vec<i64> = ready_pids(&control).iter().map(|w| w.1).collect();
    assert!(
        first.iter().all(|(_, pid)| !now.contains(&i64::from(*pid))),
        "every worker replaced: {first:?} {now:?}"
    );
}

/// A program that is its own master (the library's cluster) has no binary
/// rcluster may exec: the upgrade is refused, and the cluster serves on.
#[test]
fn a_cluster_refuses_to_upgrade() {
    let dir = TempDir::new("cluster-upgrade");
    let control = dir.path("control.sock");
    let worker = example("test_worker");
    let args = ["--cluster", "--control", path_str(&control)];
    let mut master = Master::start_program(&worker, &args);
    master.expect_msg("workers ready");
    let (code, out, err) = upgrade(path_str(&control), &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("upgrade refused") && err.contains("rcluster::Cluster"),
        "{err}"
    );
    master.signal(libc::SIGUSR2);
    let failed = master.expect_msg("upgrade failed");
    assert!(
        failed["cause"].as_str().unwrap().contains("closure"),
        "{failed}"
    );
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

/// Under wrk keep-alive: an upgrade that cannot complete changes nothing
/// (same master pid, same workers, 0 failed requests), `upgrade --wait`
/// exits 1 naming the step, and a good upgrade goes through after.
fn fails_and_changes_nothing(
    bin: &Bin,
    master: &mut Master,
    break_it: impl FnOnce(),
    mend_it: impl FnOnce(),
    step: &str,
) {
    let control = bin.control();
    let addr = master.listening();
    master.ready_workers();
    let before = status(&control);
    let wrk = Wrk::start(addr, 16, true);
    wrk.wait_for_more(200);
    break_it();
    let (code, out, err) = upgrade(&control, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(step), "the step is named: {out}{err}");
    let st = status(&control);
    assert_eq!(
        st["master"]["pid"], before["master"]["pid"],
        "the same process"
    );
    assert_eq!(workers(&st), workers(&before), "the same workers");
    assert_eq!(st["master"]["upgrades"]["done"], 0, "{}", st["master"]);
    wrk.wait_for_more(200);
    mend_it();
    let (code, out, err) = upgrade(&control, &[]);
    assert_eq!(code, 0, "once mended: {out}{err}");
    let st = status(&control);
    assert_eq!(st["master"]["pid"], before["master"]["pid"]);
    assert_eq!(workers(&st), workers(&before));
    wrk.wait_for_more(200);
    let stats = wrk.finish();
    assert_eq!(stats.failed(), 0, "failed requests: {stats:?}");
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

/// The new image fails after the exec, before its loop turns (a switch
/// for the tests: it fails while the file RCLUSTER_TEST_FAIL_RESUME names
/// exists): it runs the old image again from the same hand-over (#35).
/// Before, the master exited, and every worker with it.
#[test]
fn an_upgrade_that_fails_after_the_exec_goes_back_to_the_old_image() {
    let bin = Bin::new("upgrade-back");
    let flag = bin.dir.path("fail-resume");
    let flag_env = flag.clone();
    let mut master = bin.start_with(&["-w", "2"], |cmd| {
        cmd.env("RCLUSTER_TEST_FAIL_RESUME", &flag_env);
    });
    fails_and_changes_nothing(
        &bin,
        &mut master,
        || std::fs::write(&flag, "").unwrap(),
        || std::fs::remove_file(&flag).unwrap(),
        "the new image could not go on (failing as RCLUSTER_TEST_FAIL_RESUME asks",
    );
    let log = master.log_text();
    assert!(log.contains("running the previous one again"), "{log}");
}

/// The pid file's directory removed: the new image could not write the
/// pid file; the old one finds out before the exec and serves on (#35).
#[test]
fn an_upgrade_whose_pid_file_cannot_be_written_changes_nothing() {
    let bin = Bin::new("upgrade-pidfile");
    let run = bin.dir.path("run");
    std::fs::create_dir(&run).unwrap();
    let pid_file = run.join("rcluster.pid");
    let mut master = bin.start(&["-w", "2", "--pid-file", path_str(&pid_file)]);
    fails_and_changes_nothing(
        &bin,
        &mut master,
        || std::fs::remove_dir_all(&run).unwrap(),
        || std::fs::create_dir(&run).unwrap(),
        "the pid file",
    );
}

/// A Unix listener's socket file removed while the master ran (a tmp
/// cleaner): the upgrade completes, says the file is gone, and the master
/// serves on with the same workers. Before, the new image failed to take
/// over the listeners and exited: nothing served (#35).
#[test]
fn a_removed_socket_file_does_not_end_the_master_at_an_upgrade() {
    let bin = Bin::new("upgrade-sockfile");
    let sock = bin.dir.path("app.sock");
    let unix = format!("unix:{}", path_str(&sock));
    let mut master = bin.start(&["-w", "2", "-l", &unix]);
    let control = bin.control();
    let addr = master.listening();
    master.ready_workers();
    let before = status(&control);
    let wrk = Wrk::start(addr, 16, true);
    wrk.wait_for_more(200);
    std::fs::remove_file(&sock).unwrap();
    let (code, out, err) = upgrade(&control, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let st = status(&control);
    assert_eq!(st["master"]["pid"], before["master"]["pid"]);
    assert_eq!(workers(&st), workers(&before), "the same workers");
    master.expect("the file named", |r| {
        r["msg"] == "os error" && r["op"].as_str().is_some_and(|op| op.contains("app.sock"))
    });
    wrk.wait_for_more(200);
    let stats = wrk.finish();
    assert_eq!(stats.failed(), 0, "failed requests: {stats:?}");
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

/// A master that dies between the two images (here, the new one kills
/// itself before it starts): `upgrade --wait` says so as soon as nobody
/// listens on the control socket and the pid is gone, rather than waiting
/// out its timeout and calling the master busy (#35).
#[test]
fn upgrade_wait_says_at_once_that_the_master_died() {
    let bin = Bin::new("upgrade-died");
    let control = bin.control();
    let mut master = bin.start(&["-w", "1"]);
    master.ready_workers();
    let real = rcluster_bin();
    bin.install_script(&format!(
        "case \"$1\" in --upgrade-resume=*) kill -9 $$;; esac\nexec {} \"$@\"",
        path_str(&real)
    ));
    let (code, out, err) = rcluster(&[
        "upgrade",
        "--wait",
        "--timeout",
        "20s",
        "--control",
        &control,
    ]);
    assert_eq!(code, 69, "{out}{err}");
    assert!(err.contains("died during the upgrade"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(master.wait_exit().signal(), Some(libc::SIGKILL));
}

/// `--balance reuseport` (#35; refused before): each slot's sockets keep
/// their numbers across the exec and the steering program stays attached
/// in the kernel, so wrk, keep-alive then close, sees no failure through
/// five upgrades, nor through a reload after them (which steers the new
/// workers' lanes with the groups the new image took over); the same
/// workers serve, and no socket leaks.
#[test]
fn reuseport_upgrades_under_wrk_lose_nothing() {
    let bin = Bin::new("upgrade-reuseport");
    let control = bin.control();
    let mut master = bin.start(&["-w", "2", "--balance", "reuseport"]);
    let addr = master.listening();
    master.ready_workers();
    let before = status(&control);
    let fds_before = open_fds(master.pid).len();
    // Five upgrades: three under keep-alive, two under close.
    for (keep_alive, upgrades) in [(true, 3), (false, 2)] {
        let wrk = Wrk::start(addr, 8, keep_alive);
        wrk.wait_for_more(200);
        for _ in 0..upgrades {
            let (code, out, err) = upgrade(&control, &[]);
            assert_eq!(code, 0, "keep-alive {keep_alive}: {out}{err}");
            wrk.wait_for_more(200);
        }
        let stats = wrk.finish();
        assert_eq!(stats.failed(), 0, "keep-alive {keep_alive}: {stats:?}");
    }
    let st = status(&control);
    assert_eq!(st["master"]["pid"], before["master"]["pid"]);
    assert_eq!(st["master"]["upgrades"]["done"], 5, "{st}");
    assert_eq!(workers(&st), workers(&before), "the same workers");
    assert!(
        wait_until(WAIT, || open_fds(master.pid).len() <= fds_before),
        "fds leaked across images: {} now, {fds_before} before",
        open_fds(master.pid).len()
    );
    let wrk = Wrk::start(addr, 8, true);
    wrk.wait_for_more(200);
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    wrk.wait_for_more(200);
    let stats = wrk.finish();
    assert_eq!(
        stats.failed(),
        0,
        "the reload after the upgrades: {stats:?}"
    );
    // The replaced workers go once their queues' grace is over.
    let replaced = wait_until(WAIT, || workers(&status(&control)).iter().all(|w| w.2 == 2));
    assert!(replaced, "{}", status(&control));
    // Each slot's new worker has a queue of its own, made by the new image.
    let sockets: std::collections::BTreeSet<String> = workers(&status(&control))
        .iter()
        .map(|w| {
            let fd3 = std::fs::read_link(format!("/proc/{}/fd/3", w.1)).unwrap();
            fd3.display().to_string()
        })
        .collect();
    assert_eq!(sockets.len(), 2, "one queue per slot: {sockets:?}");
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}
