//! Worker output through the master (`--log-prefix`), and the log file
//! reopened on USR1.

use crate::support::load::Load;
use crate::support::{Master, TempDir, example, path_str, rcluster, wait_until};

#[test]
fn worker_lines_are_prefixed_with_the_slot() {
    let script = "echo \"out of $RCLUSTER_WORKER_ID\"; echo \"err of $RCLUSTER_WORKER_ID\" >&2; \
                  head -c 40000 /dev/zero | tr '\\0' x; echo; exec sleep 3600";
    let mut master = Master::start(&["-w", "2", "--log-prefix", "--", "sh", "-c", script]);
    // stdout and stderr are separate pipes: their lines may come in any order.
    let (mut out, mut err, mut piece) = (None, None, None);
    master.collect_until("slot 1's lines", |r| {
        if r["msg"] == "worker output" && r["slot"] == 1 {
            match r["line"].as_str().unwrap_or_default() {
                "out of 1" => out = Some(r.clone()),
                "err of 1" => err = Some(r.clone()),
                line if line.starts_with("xxxx") && piece.is_none() => piece = Some(r.clone()),
                _ => {}
            }
        }
        out.is_some() && err.is_some() && piece.is_some()
    });
    assert_eq!(out.unwrap()["stream"], "stdout");
    assert_eq!(err.unwrap()["stream"], "stderr");
    // A 40000-byte line arrives in pieces of at most 16 KiB.
    assert_eq!(piece.unwrap()["line"].as_str().unwrap().len(), 16 * 1024);
}

#[test]
fn a_worker_flooding_100_mb_of_output_stalls_neither_the_master_nor_the_others() {
    let dir = TempDir::new("flood");
    let log = dir.path("rcluster.log");
    let control = path_str(&dir.path("control.sock")).to_string();
    let hello = example("hello");
    // Slot 0 floods (100 MB in 1000-byte lines) then sleeps; the others serve.
    let script = format!(
        "if [ \"$RCLUSTER_WORKER_ID\" = 0 ]; then \
           yes \"$(head -c 999 /dev/zero | tr '\\0' f)\" | head -c 100000000; exec sleep 3600; \
         fi; exec {hello}"
    );
    let mut master = Master::start(&[
        "-w",
        "3",
        "--log-prefix",
        "--log-file",
        path_str(&log),
        "--control",
        &control,
        "-l",
        "127.0.0.1:0",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    // With --log-file the records go to the file: read the address there.
    let mut addr = None;
    wait_until(crate::support::WAIT, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        addr = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["msg"] == "listening")
            .and_then(|r| r["addr"].as_str()?.parse().ok());
        addr.is_some()
    });
    let addr = addr.expect("a listening record in the log file");
    let load = Load::start(addr, 2, true);
    let mut status_answers = 0;
    let flooded = wait_until(std::time::Duration::from_secs(120), || {
        // The master answers while it copies the flood.
        let (code, _, _) = rcluster(&["status", "--control", &control]);
        // 3: slot 0, which serves nothing, is not ready.
        status_answers += u32::from(code == 0 || code == 3);
        std::fs::metadata(&log).is_ok_and(|m| m.len() >= 100_000_000)
    });
    let stats = load.finish();
    assert!(flooded, "the flood did not come through");
    assert!(
        status_answers > 0,
        "the master never answered during the flood"
    );
    assert_eq!(stats.failed(), 0, "{:?}", stats.errors);
    assert!(
        stats.ok() > 100,
        "the other workers served little: {}",
        stats.ok()
    );
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", master.pid))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        rss_kib < 64 * 1024,
        "the master held on to the flood: {rss_kib} KiB"
    );
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn usr1_reopens_the_log_file() {
    let dir = TempDir::new("logrotate");
    let log = dir.path("rcluster.log");
    let rotated = dir.path("rcluster.log.1");
    let worker = example("test_worker");
    let mut master = Master::start(&["-w", "1", "--log-file", path_str(&log), "--", &worker]);
    let started = wait_until(crate::support::WAIT, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"workers ready\""))
    });
    assert!(started, "no workers ready record in the log file");
    std::fs::rename(&log, &rotated).unwrap();
    master.signal(libc::SIGUSR1);
    let reopened = wait_until(crate::support::WAIT, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"log reopened\""))
    });
    assert!(reopened, "the log was not reopened at its path");
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
    let fresh = std::fs::read_to_string(&log).unwrap();
    assert!(
        fresh.contains("\"stopped\""),
        "later records go to the new file"
    );
    assert!(
        !std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("\"stopped\"")
    );
}
