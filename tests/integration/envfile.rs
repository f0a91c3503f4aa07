//! `--env-file`: a reload rolls out the file's new values; a file that
//! cannot be parsed aborts the reload, naming the file and the line, and
//! the old workers keep serving.

use crate::support::{Master, TempDir, environ, example, path_str, rcluster};

#[test]
fn a_reload_rolls_out_a_changed_env_file_and_a_broken_one_aborts() {
    let dir = TempDir::new("env-file");
    let file = dir.path("app.env");
    let control = path_str(&dir.path("control.sock")).to_string();
    std::fs::write(
        &file,
        "# the database\nDATABASE_URL=postgres://old\nMODE=\"blue green\"\n",
    )
    .unwrap();
    let worker = example("test_worker");
    let mut master = Master::start(&[
        "-w",
        "2",
        "--ready",
        "notify",
        "--env-file",
        path_str(&file),
        "--control",
        &control,
        "--",
        &worker,
        "--ready-after",
        "0",
    ]);
    let first = master.ready_workers();
    for (_, pid) in &first {
        assert_eq!(
            environ(*pid, "DATABASE_URL").as_deref(),
            Some("postgres://old")
        );
        assert_eq!(environ(*pid, "MODE").as_deref(), Some("blue green"));
    }
    std::fs::write(&file, "DATABASE_URL=postgres://new\n").unwrap();
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "{out}{err}");
    let status: serde_json::Value =
        serde_json::from_str(&rcluster(&["status", "--json", "--control", &control]).1).unwrap();
    let versions = &status["master"]["env_file"]["versions"];
    assert_ne!(versions["1"], versions["2"], "{status}");
    let second: Vec<i32> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect();
    for pid in &second {
        assert_eq!(
            environ(*pid, "DATABASE_URL").as_deref(),
            Some("postgres://new")
        );
        assert_eq!(
            environ(*pid, "MODE"),
            None,
            "a value the file dropped is gone"
        );
    }
    std::fs::write(&file, "DATABASE_URL=postgres://newer\nTHIS IS NOT A LINE\n").unwrap();
    let (code, _, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("app.env line 2") && err.contains("THIS IS NOT A LINE"),
        "{err}"
    );
    let aborted = master.expect_msg("reload aborted");
    assert!(
        aborted["cause"].as_str().unwrap().contains("line 2"),
        "{aborted}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&rcluster(&["status", "--json", "--control", &control]).1).unwrap();
    let now: Vec<i32> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(now, second, "the workers keep serving");
    assert_eq!(status["master"]["all_ready"], true);
    master.stop_cleanly();
}
