//! Deploys (#22): a release per directory and a `current` symlink switched
//! to the next one. With `--chdir current` a reload runs what `current`
//! points to then, the log and `status` name it, and `rollback` goes back,
//! under wrk without a failed request; without it, a reload says that
//! `current` moved. A restart runs the release that serves, never one
//! whose reload failed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::support::wrk::Wrk;
use crate::support::{Master, TempDir, example, http, path_str, rcluster, status, wait_until};

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

#[test]
fn with_chdir_a_reload_runs_the_release_current_points_to_and_rollback_goes_back() {
    let tree = Tree::new("chdir-deploy");
    let control = tree.control();
    let mut master = tree.rcluster(&["-w", "2", "--metrics", "127.0.0.1:0"]);
    let addr = master.listening();
    let metrics: SocketAddr = master.metrics_addr().parse().unwrap();
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
    // What runs, pinned: `./server` in the release `current` led to.
    let server = format!("{}/server", path_str(&two));
    assert_eq!(record["command"], server, "{record}");
    let st = status(&control);
    let releases = &st["master"]["releases"];
    assert_eq!(releases[0]["generation"], 2, "{st}");
    assert_eq!(releases[0]["dir"], path_str(&two), "{st}");
    assert_eq!(releases[0]["serving"], true, "{st}");
    assert_eq!(releases[1]["dir"], path_str(&one), "{st}");
    let exposition = http::get(metrics, "/metrics").expect("/metrics").body;
    let info = format!(
        "rcluster_release_info{{generation=\"2\",directory=\"{}\",command=\"{server}\",serving=\"true\"}} 1",
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

/// How a test names the release's program (#36).
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `--chdir APP/current -- ./server`
    Relative,
    /// `-- APP/current/server`
    Absolute,
    /// `-- python3 APP/current/server.py`
    Script,
    /// `-- server`, found on `PATH=APP/current/bin:…`
    OnPath,
}

/// Releases 1 and 2, and 3 that dies at start; each has `server` and
/// `bin/server` (sh scripts) and `server.py`, all of which run hello with
/// `RELEASE` set to the release's name, so a worker's environment says
/// which release's files started it.
fn versioned_tree(tag: &str) -> Tree {
    let dir = TempDir::new(tag);
    let hello = example("hello");
    for n in ["1", "2", "3"] {
        let body = match n {
            "3" => "echo 'release 3 cannot start' >&2; exit 1".to_string(),
            _ => format!("RELEASE={n} exec {hello} \"$@\""),
        };
        Tree::release(&dir.0, n, &body);
        let release = dir.0.join("releases").join(n);
        std::fs::create_dir_all(release.join("bin")).unwrap();
        std::fs::copy(release.join("server"), release.join("bin/server")).unwrap();
        let py = match n {
            "3" => "import sys; sys.exit('release 3 cannot start')".to_string(),
            _ => format!(
                "import os\nos.environ['RELEASE'] = '{n}'\nos.execv('{hello}', ['{hello}'])\n"
            ),
        };
        std::fs::write(release.join("server.py"), py).unwrap();
    }
    let tree = Tree { dir };
    tree.point_to("1");
    tree
}

/// The release each worker's files came from, sorted.
fn releases_running(control: &str) -> Vec<String> {
    let st = status(control);
    let mut running: Vec<String> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["pid"].as_i64())
        .map(|pid| crate::support::environ(pid as i32, "RELEASE").unwrap_or_default())
        .collect();
    running.sort();
    running
}

/// Makes slot 0's worker exit on its own (`SIGTERM` from outside: it
/// drains, so wrk loses nothing, where `SIGKILL` would cut the requests it
/// holds) and waits until its replacement is ready.
fn crash_one(master: &mut Master, control: &str) {
    let st = status(control);
    let pid = st["workers"][0]["pid"].as_i64().unwrap() as i32;
    // SAFETY: a worker of this test's master, alive a moment ago.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    master.expect("the crash", |r| {
        r["msg"] == "worker exited" && r["pid"] == pid
    });
    master.expect("the replacement", |r| {
        r["msg"] == "worker ready" && r["pid"] != pid
    });
}

/// Each command form under wrk: `current` switched without a reload, a
/// crash restarts release 1; a reload runs 2; a reload to 3 aborts and a
/// crash then restarts 2, not 3; a rollback runs 1 again; `status` names
/// the pinned file; no request fails. Before #36 only `./server` with
/// `--chdir` was pinned: the crash after the switch ran release 2.
fn each_start_runs_the_generations_files(form: Form) {
    let tree = versioned_tree(&format!("pinned-{form:?}").to_lowercase());
    let control = tree.control();
    let current = path_str(&tree.current()).to_string();
    let mut args = vec!["-w", "2", "-l", "127.0.0.1:0", "--control", &control];
    let (server, py, bin) = (
        format!("{current}/server"),
        format!("{current}/server.py"),
        format!("{current}/bin"),
    );
    match form {
        Form::Relative => args.extend(["--chdir", &current, "--", "./server"]),
        Form::Absolute => args.extend(["--", &server]),
        Form::Script => args.extend(["--", "python3", &py]),
        Form::OnPath => args.extend(["--", "server"]),
    }
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let mut master = Master::start_with(&args, |cmd| {
        cmd.env("PATH", &path);
    });
    let addr = master.listening();
    master.ready_workers();
    assert_eq!(releases_running(&control), ["1", "1"]);
    let wrk = Wrk::start(addr, 8, true);
    wrk.wait_for_more(200);

    tree.point_to("2");
    crash_one(&mut master, &control);
    assert_eq!(
        releases_running(&control),
        ["1", "1"],
        "{form:?}: a crash after the switch"
    );
    let st = status(&control);
    let pinned = &st["master"]["releases"][0];
    let named = match form {
        Form::Script => pinned["script"].as_str().unwrap_or_default().to_string(),
        _ => pinned["executable"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    assert!(
        named.starts_with(path_str(&tree.releases("1"))),
        "{form:?}: status names the file that runs: {pinned}"
    );

    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{form:?}: {out}{err}");
    assert!(wait_until(crate::support::WAIT, || releases_running(
        &control
    ) == ["2", "2"]));

    tree.point_to("3");
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 1, "{form:?}: release 3 aborts: {out}{err}");
    crash_one(&mut master, &control);
    assert_eq!(
        releases_running(&control),
        ["2", "2"],
        "{form:?}: a crash after the abort"
    );

    let (code, out, err) = rcluster(&["rollback", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{form:?}: {out}{err}");
    assert!(wait_until(crate::support::WAIT, || releases_running(
        &control
    ) == ["1", "1"]));
    wrk.wait_for_more(200);
    let stats = wrk.finish();
    assert_eq!(stats.failed(), 0, "{form:?}: {stats:?}");
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn a_relative_program_with_chdir_runs_its_generations_files() {
    each_start_runs_the_generations_files(Form::Relative);
}

#[test]
fn a_program_named_through_current_runs_its_generations_files() {
    each_start_runs_the_generations_files(Form::Absolute);
}

#[test]
fn a_script_named_through_current_runs_its_generations_files() {
    each_start_runs_the_generations_files(Form::Script);
}

#[test]
fn a_program_found_on_a_path_inside_current_runs_its_generations_files() {
    each_start_runs_the_generations_files(Form::OnPath);
}

/// A file rewritten in place (the same inode) runs as it is, and that is
/// said once; one replaced at the generation's pinned path (a deploy that
/// wrote into the serving release) is refused: a restart does not run it
/// under the generation's name, says which file in one line, and the other
/// worker serves on; a reload runs the new file, and a rollback to the
/// generation whose file was replaced is refused.
#[test]
fn a_program_replaced_under_its_path_is_refused_until_a_reload() {
    let tree = versioned_tree("pinned-replaced");
    let control = tree.control();
    let mut master = tree.rcluster(&["-w", "2"]);
    let addr = master.listening();
    master.ready_workers();
    let server = tree.releases("1").join("server");
    let body = std::fs::read(&server).unwrap();
    std::fs::write(&server, &body).unwrap();
    let pid = status(&control)["workers"][0]["pid"].as_i64().unwrap() as i32;
    // SAFETY: a worker of this test's master, alive a moment ago.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let said = master.expect_msg("release rewritten");
    assert_eq!(said["path"], path_str(&server), "{said}");
    master.expect("the restart", |r| {
        r["msg"] == "worker ready" && r["pid"] != pid
    });
    assert_eq!(releases_running(&control), ["1", "1"]);
    let next = tree.releases("1").join("server.new");
    std::fs::copy(&server, &next).unwrap();
    std::fs::rename(&next, &server).unwrap();
    let st = status(&control);
    let pid = st["workers"][0]["pid"].as_i64().unwrap() as i32;
    // SAFETY: a worker of this test's master, alive a moment ago.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let refused = master.expect_msg("spawn failed");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "generation 1's program {} was replaced since the generation was made",
            path_str(&server)
        )),
        "{refused}"
    );
    for _ in 0..4 {
        assert_eq!(http::get(addr, "/").expect("served").status, 200);
    }
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(releases_running(&control), ["1", "1"]);
    // Generation 1's file is gone from its path: a rollback to it is
    // refused with the file named, and generation 2 serves on.
    let (code, out, err) = rcluster(&["rollback", "--wait", "--control", &control]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "generation 1's release cannot run: program {} was replaced since the generation \
             was made",
            path_str(&server)
        )),
        "{err}"
    );
    assert_eq!(status(&control)["master"]["generation"], 2);
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}
