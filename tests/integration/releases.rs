//! Deploys (#22): a release per directory and a `current` symlink switched
//! to the next one. With `--chdir current` a reload runs what `current`
//! points to then, the log and `status` name it, and `rollback` goes back,
//! under wrk without a failed request; without it, a reload says that
//! `current` moved. A restart runs the release that serves, never one
//! whose reload failed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::wrk::Wrk;
use crate::support::{Master, TempDir, example, http, path_str, rcluster, wait_until};

/// `releases/1` and `releases/2`, each with a `./server` that runs hello,
/// and `current` pointing to `releases/1`.
struct Tree {
    dir: TempDir,
}

impl Tree {
    fn new(tag: &str) -> Tree {
        let dir = TempDir::new(tag);
        for n in ["1", "2"] {
            Tree::release(&dir.0, n, &format!("exec {} \"$@\"", example("hello")));
        }
        let tree = Tree { dir };
        tree.point_to("1");
        tree
    }

    /// `releases/NAME/server`, a script with `body`.
    fn release(root: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let dir = root.join("releases").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let server = dir.join("server");
        std::fs::write(&server, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn current(&self) -> PathBuf {
        self.dir.path("current")
    }

    fn releases(&self, name: &str) -> PathBuf {
        std::fs::canonicalize(self.dir.path("releases").join(name)).unwrap()
    }

    /// Switches `current` at once, as deploy tools do (a new link renamed
    /// over the old one).
    fn point_to(&self, name: &str) {
        let next = self.dir.path("current.next");
        let _ = std::fs::remove_file(&next);
        std::os::unix::fs::symlink(format!("releases/{name}"), &next).unwrap();
        std::fs::rename(&next, self.current()).unwrap();
    }

    fn control(&self) -> String {
        path_str(&self.dir.path("control.sock")).to_string()
    }

    /// `rcluster ARGS --chdir current -- ./server`, on a free port.
    fn rcluster(&self, args: &[&str]) -> Master {
        let (current, control) = (self.current(), self.control());
        let mut all = args.to_vec();
        all.extend(["-l", "127.0.0.1:0", "--control", &control]);
        all.extend(["--chdir", path_str(&current), "--", "./server"]);
        Master::start(&all)
    }
}

/// Where the workers run: `GET /cwd` until every answer of `tries` is the
/// same directory (a reload that completed leaves no old worker).
fn cwd(addr: SocketAddr) -> String {
    let answers: Vec<String> = (0..8)
        .map(|_| {
            http::get(addr, "/cwd")
                .expect("GET /cwd")
                .body
                .trim()
                .to_string()
        })
        .collect();
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "workers of two releases answer: {answers:?}"
    );
    answers[0].clone()
}

fn status(control: &str) -> Value {
    let (code, out, err) = rcluster(&["status", "--json", "--control", control]);
    assert!(code == 0 || code == 3, "status: {code} {err}");
    serde_json::from_str(&out).expect("status JSON")
}

#[test]
fn with_chdir_a_reload_runs_the_release_current_points_to_and_rollback_goes_back() {
    let tree = Tree::new("chdir-deploy");
    let control = tree.control();
    let mut master = tree.rcluster(&["-w", "2", "--metrics", "127.0.0.1:0"]);
    let addr = master.listening();
    let metrics: SocketAddr = master.expect_msg("metrics endpoint")["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    master.ready_workers();
    let (one, two) = (tree.releases("1"), tree.releases("2"));
    assert_eq!(cwd(addr), path_str(&one));
    let wrk = Wrk::start(addr, 32, true);
    wrk.wait_for_more(200);

    tree.point_to("2");
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(path_str(&two)),
        "reload --wait names the release: {out}"
    );
    wrk.wait_for_more(200);
    assert_eq!(cwd(addr), path_str(&two));
    let record = master.expect("the release record", |r| {
        r["msg"] == "release" && r["generation"] == 2
    });
    assert_eq!(record["dir"], path_str(&two), "{record}");
    assert_eq!(record["command"], "./server", "{record}");
    let st = status(&control);
    let releases = &st["master"]["releases"];
    assert_eq!(releases[0]["generation"], 2, "{st}");
    assert_eq!(releases[0]["dir"], path_str(&two), "{st}");
    assert_eq!(releases[0]["serving"], true, "{st}");
    assert_eq!(releases[1]["dir"], path_str(&one), "{st}");
    let exposition = http::get(metrics, "/metrics").expect("/metrics").body;
    let info = format!(
        "rcluster_release_info{{generation=\"2\",directory=\"{}\",command=\"./server\",serving=\"true\"}} 1",
        path_str(&two)
    );
    assert!(exposition.contains(&info), "{info} in:\n{exposition}");
    let (_, table, _) = rcluster(&["status", "--control", &control]);
    assert!(
        table.contains(&format!(
            "release  generation 2 (serving, 2 workers): {}",
            path_str(&two)
        )),
        "{table}"
    );

    // Back to release 1, though `current` still points to 2.
    let (code, out, err) = rcluster(&["rollback", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rollback complete: generation 3"), "{out}");
    assert!(out.contains(path_str(&one)), "{out}");
    wrk.wait_for_more(200);
    assert_eq!(cwd(addr), path_str(&one));
    let record = master.expect("the rollback's release", |r| {
        r["msg"] == "release" && r["generation"] == 3
    });
    assert_eq!(record["rollback_of"], 1, "{record}");
    // Nothing older served: a second rollback changes nothing.
    let (code, _, err) = rcluster(&["rollback", "--wait", "--control", &control]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing to roll back to"), "{err}");
    assert_eq!(status(&control)["master"]["generation"], 3);

    let stats = wrk.finish();
    assert_eq!(
        stats.failed(),
        0,
        "through switch, reload and rollback: {stats:?}"
    );
    master.stop_cleanly();
}

#[test]
fn a_rollback_to_a_release_that_is_gone_changes_nothing() {
    let tree = Tree::new("rollback-gone");
    let control = tree.control();
    let mut master = tree.rcluster(&["-w", "1"]);
    let addr = master.listening();
    master.ready_workers();
    tree.point_to("2");
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    let one = tree.releases("1");
    std::fs::remove_dir_all(&one).unwrap();
    let (code, out, err) = rcluster(&["rollback", "--wait", "--control", &control]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("{} no longer exists", path_str(&one)))
            && err.contains("nothing changed"),
        "{err}"
    );
    assert_eq!(cwd(addr), path_str(&tree.releases("2")));
    assert_eq!(status(&control)["master"]["generation"], 2);
    master.stop_cleanly();
}

/// Without `--chdir`, the master's directory was reached through
/// `current`: a reload still runs the old files, and says so.
#[test]
fn without_chdir_a_reload_says_that_current_moved() {
    let tree = Tree::new("no-chdir");
    let current = tree.current();
    let mut master =
        Master::start_with(&["-w", "1", "-l", "127.0.0.1:0", "--", "./server"], |cmd| {
            cmd.current_dir(&current).env("PWD", &current);
        });
    let addr = master.listening();
    master.ready_workers();
    tree.point_to("2");
    master.signal(libc::SIGHUP);
    let moved = master.expect("the warning", |r| r["msg"] == "working directory moved");
    assert_eq!(moved["level"], "WARN", "{moved}");
    assert_eq!(moved["reached_as"], path_str(&current), "{moved}");
    assert_eq!(moved["cwd"], path_str(&tree.releases("1")), "{moved}");
    assert_eq!(moved["now"], path_str(&tree.releases("2")), "{moved}");
    master.expect_msg("reload complete");
    assert_eq!(cwd(addr), path_str(&tree.releases("1")));
    master.stop_cleanly();
}

/// A reload whose new worker dies at start (its env file says so), then
/// an old worker's crash while the reload stands aborted: the replacement
/// runs the release that serves, with its environment, and serves.
#[test]
fn a_restart_after_an_aborted_reload_runs_the_serving_release() {
    let dir = TempDir::new("pinned");
    let env = dir.path("app.env");
    let control = path_str(&dir.path("control.sock")).to_string();
    std::fs::write(&env, "RELEASE=good\n").unwrap();
    let script = format!(
        "if [ \"$RELEASE\" = bad ]; then echo 'bad release' >&2; exit 1; fi; exec {}",
        example("hello")
    );
    let mut master = Master::start(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--env-file",
        path_str(&env),
        "--control",
        &control,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let addr = master.listening();
    let old = master.ready_workers();
    std::fs::write(&env, "RELEASE=bad\n").unwrap();
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 1, "the reload aborts: {out}{err}");
    // SAFETY: a worker of this test's master.
    unsafe { libc::kill(old[0].1, libc::SIGKILL) };
    master.expect("the old worker's exit", |r| {
        r["msg"] == "worker exited" && r["pid"] == old[0].1
    });
    let restarted = master.expect("the restart", |r| {
        r["msg"] == "worker spawned" && r["slot"] == old[0].0
    });
    assert_eq!(
        restarted["generation"], 1,
        "the serving release: {restarted}"
    );
    let ready = master.expect("the restart ready", |r| {
        r["msg"] == "worker ready" && r["pid"] == restarted["pid"]
    });
    assert_eq!(ready["generation"], 1);
    assert!(wait_until(crate::support::WAIT, || {
        status(&control)["master"]["all_ready"] == true
    }));
    for _ in 0..8 {
        assert_eq!(http::get(addr, "/").expect("served").status, 200);
    }
    // Not stop_cleanly: the test's own SIGKILL is in the log.
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}
