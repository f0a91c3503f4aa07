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

/// A trace longer than the tail, written at once (Node's EADDRINUSE: 22
/// lines after its error line): the error line is still the cause.
#[test]
fn a_long_trace_in_one_write_keeps_its_error_line() {
    let script = "{ echo 'Error: listen EADDRINUSE: address already in use :::3000'; \
                  for i in $(seq 1 30); do echo \"    at frame$i (node:net:1908:16)\"; done; \
                  echo '}'; echo; echo 'Node.js v20.20.2'; } >&2; exit 1";
    let mut master = Master::start(&["-w", "1", "--control", "none", "--", "sh", "-c", script]);
    let exited = master.expect_msg("worker exited");
    assert_eq!(
        exited["last_line"], "Error: listen EADDRINUSE: address already in use :::3000",
        "{exited}"
    );
}

#[test]
fn the_tail_stays_small_under_a_flood_and_the_figures_are_live() {
    let dir = TempDir::new("flood");
    let control = path_str(&dir.path("control.sock")).to_string();
    // 20 MB of 200-byte lines on stderr (100,000 lines, 5,000 times the
    // tail's cap; more only costs a debug-built master seconds of CPU on a
    // busy CI machine), then a last line, then it waits.
    let script = "yes \"$(printf %0199d 0)\" | head -c 20000000 >&2; \
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

/// `GET /metrics`, as Prometheus scrapes it.
pub fn scrape(addr: &str) -> String {
    let mut conn = std::net::TcpStream::connect(addr).expect("connecting to /metrics");
    conn.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(
        &mut conn,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: text/plain\r\n\r\n",
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut conn, &mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// `promtool check metrics`: Prometheus's own parser and linter.
fn promtool_accepts(exposition: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian: apt install prometheus; ./test.sh does)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of one sample, by its name and labels as written.
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
}

#[test]
fn metrics_parse_before_during_and_after_a_reload_and_agree_with_the_log() {
    let hello = crate::support::example("hello");
    let mut master = Master::start(&[
        "-w",
        "2",
        "--ready",
        "notify",
        "--metrics",
        "127.0.0.1:0",
        "-l",
        "127.0.0.1:0",
        "--",
        &hello,
    ]);
    let endpoint = master.expect_msg("metrics endpoint");
    let addr = endpoint["addr"].as_str().unwrap().to_string();
    master.ready_workers();
    let before = scrape(&addr);
    promtool_accepts(&before);
    assert_eq!(sample(&before, "rcluster_workers{state=\"ready\"}"), 2.0);
    // During: between the HUP and the reload's end.
    master.signal(libc::SIGHUP);
    master.expect_msg("reload started");
    promtool_accepts(&scrape(&addr));
    let records = master.collect_until("the old workers' exits", {
        let mut exits = 0;
        move |r| {
            exits += usize::from(r["msg"] == "worker exited");
            exits == 2
        }
    });
    let complete = records
        .iter()
        .find(|r| r["msg"] == "reload complete")
        .expect("reload complete")
        .clone();
    let new_worker = records
        .iter()
        .rfind(|r| r["msg"] == "worker ready")
        .expect("a new worker")
        .clone();
    // An exit nobody asked for, and its restart.
    // SAFETY: killing a worker this test's master started.
    unsafe { libc::kill(new_worker["pid"].as_i64().unwrap() as i32, libc::SIGABRT) };
    master.expect_msg("worker exited");
    master.expect_msg("worker ready");
    let after = scrape(&addr);
    promtool_accepts(&after);
    assert_eq!(
        sample(&after, "rcluster_reloads_total{result=\"complete\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "rcluster_reload_duration_seconds_count"),
        1.0
    );
    let duration = complete["duration_ms"].as_f64().unwrap() / 1000.0;
    let sum = sample(&after, "rcluster_reload_duration_seconds_sum");
    assert!((sum - duration).abs() < 0.002, "{sum} vs {duration}");
    assert_eq!(sample(&after, "rcluster_generation"), 2.0);
    // Ready records in the log: 2 at start, 2 in the reload, 1 restart.
    let log = master.log_text();
    let count = |msg: &str| log.lines().filter(|l| l.contains(msg)).count() as f64;
    assert_eq!(
        sample(&after, "rcluster_worker_startup_seconds_count"),
        count("\"msg\":\"worker ready\"")
    );
    let slot = new_worker["slot"].to_string();
    let series =
        |cause: &str| format!("rcluster_worker_exits_total{{slot=\"{slot}\",cause=\"{cause}\"}}");
    assert_eq!(sample(&after, &series("signal")), 1.0);
    assert_eq!(
        sample(
            &after,
            &format!("rcluster_worker_restarts_total{{slot=\"{slot}\"}}")
        ),
        1.0
    );
    let exits: f64 = after
        .lines()
        .filter(|l| l.starts_with("rcluster_worker_exits_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(exits, count("\"msg\":\"worker exited\""), "{after}");
    assert!(sample(&after, "rcluster_worker_resident_memory_bytes{slot=\"0\"}") > 0.0);
    master.stop_cleanly();
}
