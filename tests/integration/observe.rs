//! Seeing into the workers: the last lines a worker wrote to stderr (its
//! exit record, `rcluster status --slot N`), the live figures of `rcluster
//! status`, and `/metrics`.

use serde_json::Value;

use crate::support::{Master, TempDir, WAIT, path_str, rcluster, wait_until};

fn status(control: &str, slot: Option<usize>) -> Value {
    let slot = slot.map(|s| s.to_string());
    let mut args = vec!["status", "--json", "--control", control];
    if let Some(slot) = &slot {
        args.extend(["--slot", slot]);
    }
    let (code, out, err) = rcluster(&args);
    assert!(code == 0 || code == 3, "status: {code} {err}");
    serde_json::from_str(&out).expect("status JSON")
}

#[test]
fn a_crash_says_its_last_lines() {
    let dir = TempDir::new("last-words");
    let control = path_str(&dir.path("control.sock")).to_string();
    let script = "echo starting up >&2; echo reading config >&2; \
                  echo 'Error: DATABASE_URL is not set' >&2; exit 1";
    let mut master = Master::start(&["-w", "1", "--control", &control, "--", "sh", "-c", script]);
    let exited = master.expect_msg("worker exited");
    assert_eq!(exited["code"], 1);
    assert_eq!(
        exited["last_line"], "Error: DATABASE_URL is not set",
        "{exited}"
    );
    let st = status(&control, Some(0));
    let previous = &st["slot"]["previous"];
    assert_eq!(
        previous["stderr"],
        serde_json::json!([
            "starting up",
            "reading config",
            "Error: DATABASE_URL is not set"
        ]),
        "{st}"
    );
    assert_eq!(previous["exit"], "code 1");
    assert_eq!(
        st["workers"][0]["last_exit_line"],
        "Error: DATABASE_URL is not set"
    );
    let (_, table, _) = rcluster(&["status", "--control", &control]);
    assert!(
        table.contains("code 1: Error: DATABASE_URL is not set"),
        "{table}"
    );
    let (_, detail, _) = rcluster(&["status", "--control", &control, "--slot", "0"]);
    assert!(detail.contains("  | reading config"), "{detail}");
}

#[test]
fn the_tail_stays_small_under_a_flood_and_the_figures_are_live() {
    let dir = TempDir::new("flood");
    let control = path_str(&dir.path("control.sock")).to_string();
    // 100 MB of 200-byte lines on stderr, then a last line, then it waits.
    let script = "yes \"$(printf %0199d 0)\" | head -c 100000000 >&2; \
                  echo flood done >&2; exec sleep 60";
    let master = Master::start(&[
        "-w",
        "1",
        "--ready",
        "delay:0",
        "--log-file",
        "/dev/null",
        "--control",
        &control,
        "--",
        "sh",
        "-c",
        script,
    ]);
    let done = wait_until(WAIT, || {
        std::path::Path::new(&control).exists()
            && status(&control, Some(0))["slot"]["workers"][0]["stderr"]
                .as_array()
                .and_then(|lines| lines.last())
                .is_some_and(|last| last == "flood done")
    });
    assert!(done, "the flood never ended:\n{}", master.log_text());
    let st = status(&control, Some(0));
    let tail = st["slot"]["workers"][0]["stderr"]
        .as_array()
        .unwrap()
        .clone();
    let bytes: usize = tail.iter().map(|l| l.as_str().unwrap().len()).sum();
    assert!(
        tail.len() <= 20 && bytes <= 4096,
        "{} lines, {bytes} bytes",
        tail.len()
    );
    let worker = &st["workers"][0];
    assert!(worker["rss_bytes"].as_u64().unwrap() > 0, "{worker}");
    assert!(worker["cpu_seconds"].as_f64().is_some(), "{worker}");
    assert!(worker["processes"].as_u64().unwrap() >= 1, "{worker}");
    let master_rss = st["master"]["rss_bytes"].as_u64().unwrap();
    assert!(
        master_rss < 20 << 20,
        "the master grew to {master_rss} bytes"
    );
    master.stop_cleanly();
}
