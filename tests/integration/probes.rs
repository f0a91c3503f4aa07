//! `--probe`: HTTP probes per worker, against gunicorn (installed from
//! PyPI) serving `tests/fixtures/health_app.py`, whose answers the tests
//! switch, with wrk as the client. A release that answers errors never
//! replaces a good worker; a worker stopped or hung is replaced and the
//! others lose nothing; a cause every worker shares restarts nothing in a
//! loop; and a probe counts for the worker that answered it. Without
//! probes, under `--http-drain`, uvicorn (from PyPI) serving a release that
//! answers 500 fails its canary by the error-rate rule.

use std::path::Path;

use serde_json::Value;

use crate::support::installs::path_with_python;
use crate::support::wrk::{Wrk, WrkStats};
use crate::support::{Master, SHORT_LOOK, TempDir, WAIT, path_str, rcluster, ready_pids, status};

/// A master of `workers` gunicorns, probed on `/healthz` every 300 ms
/// (failing after 2 in a row), its control socket, env file and fault
/// directory in `dir`.
fn start(dir: &TempDir, workers: usize, flags: &[&str]) -> (Master, String) {
    let control = path_str(&dir.path("control.sock")).to_string();
    let env = dir.path("env");
    if !env.exists() {
        std::fs::write(&env, "APP_STATUS=200\n").unwrap();
    }
    std::fs::create_dir_all(dir.path("faults")).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let workers = workers.to_string();
    let mut args = vec![
        "-w",
        &workers,
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--probe",
        "/healthz",
        "--probe-period",
        "300ms",
        "--probe-timeout",
        "500ms",
        "--probe-failures",
        "2",
        "--stop-timeout",
        "5s",
        "--control",
        &control,
        "--env-file",
        path_str(&env),
    ];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[
        "--",
        "gunicorn",
        "--workers",
        "1",
        "--threads",
        "4",
        "--preload",
        "--no-control-socket",
        "--chdir",
        path_str(&fixtures),
        "health_app:app",
    ]);
    let python = path_with_python();
    let faults = dir.path("faults");
    let master = Master::start_with(&args, |cmd| {
        cmd.env("PATH", &python).env("APP_FAULTS", &faults);
    });
    (master, control)
}

fn reload_fails(control: &str, what: &str) -> String {
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", control]);
    assert_eq!(code, 1, "reload --wait of {what}: {out}{err}");
    assert!(err.contains("reload aborted"), "{what}: {err}");
    err
}

fn socket_errors(wrk: &WrkStats) -> u64 {
    wrk.connect + wrk.read + wrk.write + wrk.timeout
}

#[test]
fn a_release_that_answers_errors_never_replaces_a_good_worker() {
    for balance in ["reuseport", "shared"] {
        let dir = TempDir::new("probe-release");
        let (mut master, control) = start(&dir, 2, &["--balance", balance]);
        let addr = master.listening();
        master.ready_workers();
        let serving = ready_pids(&control);
        let wrk = Wrk::start(addr, 16, true);
        wrk.wait_for_more(200);

        // Its pages answer, its health check does not.
        std::fs::write(dir.path("env"), "APP_STATUS=200\nHEALTH_STATUS=500\n").unwrap();
        let err = reload_fails(&control, "a release failing /healthz");
        assert!(err.contains("answered 500 to GET /healthz"), "{err}");
        // Every answer is an error.
        std::fs::write(dir.path("env"), "APP_STATUS=500\n").unwrap();
        let err = reload_fails(&control, "a release answering 500");
        assert!(err.contains("answered 500 to GET /healthz"), "{err}");
        wrk.wait_for_more(200);
        let during = wrk.finish();
        assert_eq!(
            ready_pids(&control),
            serving,
            "{balance}: the old workers serve"
        );
        assert_eq!(socket_errors(&during), 0, "{balance}: {during:?}");
        if balance == "reuseport" {
            // Steered only once proven: no client ever reached a canary.
            assert_eq!(during.status, 0, "{balance}: {during:?}");
        }
        // Once the reloads are over, nothing answers 500.
        let wrk = Wrk::start(addr, 16, true);
        wrk.wait_for_more(500);
        let after = wrk.finish();
        assert_eq!(after.failed(), 0, "{balance}: {after:?}");
        eprintln!(
            "{balance}: 2 bad releases refused; wrk during {} served, {} answered 5xx by a \
             canary, {} socket errors; after {} served, {} failed",
            during.requests,
            during.status,
            socket_errors(&during),
            after.requests,
            after.failed()
        );
        master.stop_cleanly();
    }
}

#[test]
fn a_stopped_or_hung_worker_is_replaced_and_the_others_lose_nothing() {
    let dir = TempDir::new("probe-hung");
    let (mut master, control) = start(&dir, 3, &["--balance", "reuseport"]);
    let addr = master.listening();
    master.ready_workers();
    let pids = ready_pids(&control);
    let wrk = Wrk::start(addr, 24, true);
    wrk.wait_for_more(200);

    // SIGSTOP: it accepts and answers nothing.
    let stopped = pids[1].1;
    let sent = std::time::Instant::now();
    // SAFETY: a worker of the master this test started.
    unsafe { libc::kill(stopped as i32, libc::SIGSTOP) };
    let recycled = master.expect("the stopped worker recycled", |r| {
        r["msg"] == "worker recycled" && r["pid"] == stopped
    });
    let stop_found = sent.elapsed();
    assert_eq!(recycled["reason"], "probe", "{recycled}");
    master.expect("the stopped worker gone", |r| {
        r["msg"] == "worker exited" && r["pid"] == stopped
    });

    // A handler that never returns: its probes time out.
    let hung = pids[2].1;
    let sent = std::time::Instant::now();
    std::fs::write(dir.path("faults").join(hung.to_string()), "hang").unwrap();
    let failed = master.expect("the hung worker's probe failed", |r| {
        r["msg"] == "probe failed" && r["pid"] == hung
    });
    assert!(
        failed["cause"]
            .as_str()
            .unwrap()
            .starts_with("did not answer within 500ms"),
        "{failed}"
    );
    master.expect("the hung worker recycled", |r| {
        r["msg"] == "worker recycled" && r["pid"] == hung
    });
    let hang_found = sent.elapsed();
    master.expect("the hung worker gone", |r| {
        r["msg"] == "worker exited" && r["pid"] == hung
    });
    wrk.wait_for_more(200);
    let stats = wrk.finish();
    assert_eq!(stats.failed(), 0, "{stats:?}");
    let now = ready_pids(&control);
    assert_eq!(now[0], pids[0], "the healthy worker was left alone");
    assert!(now[1].1 != stopped && now[2].1 != hung, "{now:?}");
    eprintln!(
        "a stopped and a hung worker replaced (found {stop_found:?} and {hang_found:?} after; \
         probes every 300ms, 500ms timeout, 2 failures): wrk {} served, {} failed (p99 {} us, \
         max {} us)",
        stats.requests,
        stats.failed(),
        stats.p99_us,
        stats.max_us
    );
    // Not `stop_cleanly`: the hung worker's handler never returns, so its
    // drain ends in SIGKILL at --stop-timeout, as it should.
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn a_cause_every_worker_shares_restarts_nothing_in_a_loop() {
    let dir = TempDir::new("probe-outage");
    let (mut master, control) = start(&dir, 3, &["--metrics", "127.0.0.1:0"]);
    let metrics = master.metrics_addr();
    master.ready_workers();
    let pids = ready_pids(&control);
    // The database every worker needs is down.
    std::fs::write(dir.path("faults").join("all"), "503").unwrap();
    let records =
        master.collect_until("replacing paused", |r| r["msg"] == "probe replacing paused");
    let spawned = |records: &[Value]| {
        records
            .iter()
            .filter(|r| r["msg"] == "worker spawned")
            .count()
    };
    assert_eq!(spawned(&records), 1, "one successor tried: {records:?}");
    // Ten more failed probes later, still nothing restarted.
    let mut failures = 0;
    let later = master.collect_until("ten more failed probes", |r| {
        failures += usize::from(r["msg"] == "probe failed");
        failures == 10
    });
    assert_eq!(spawned(&later), 0, "{later:?}");
    let now = status(&control);
    assert_eq!(now["master"]["probes"]["replacing_paused"], true, "{now}");
    assert_eq!(now["master"]["probes"]["failing"], 3, "{now}");
    let (_, table, _) = rcluster(&["status", "--control", &control]);
    assert!(
        table.contains("3 of 3 workers failing; replacing them is paused"),
        "{table}"
    );
    assert_eq!(ready_pids(&control), pids, "every worker still serves");
    let scraped = crate::observe::scrape(&metrics);
    assert!(
        scraped.contains("rcluster_worker_recycles_total{reason=\"probe\"} 1\n")
            && scraped.contains("rcluster_worker_probe_failures_total{slot=\"2\"}"),
        "{scraped}"
    );

    // The database is back.
    std::fs::remove_file(dir.path("faults").join("all")).unwrap();
    master.expect_msg("probe passing");
    assert!(crate::support::wait_until(WAIT, || {
        status(&control)["master"]["probes"]["replacing_paused"] == false
    }));
    master.stop_cleanly();
}

#[test]
fn a_probe_counts_for_the_worker_that_answered_it() {
    let dir = TempDir::new("probe-attributed");
    let (mut master, control) = start(&dir, 4, &[]);
    master.ready_workers();
    let pids = ready_pids(&control);
    // One bad worker among four, in the shared queue: whichever probe it
    // takes, it answers 500.
    let bad = pids[2].1;
    std::fs::write(dir.path("faults").join(bad.to_string()), "500").unwrap();
    let records = master.collect_until("the bad worker recycled", |r| {
        r["msg"] == "worker recycled" && r["pid"] == bad
    });
    for r in records.iter().filter(|r| r["msg"] == "probe failed") {
        assert_eq!(r["pid"], bad, "a failure counted for another worker: {r}");
    }
    master.expect("the bad worker gone", |r| {
        r["msg"] == "worker exited" && r["pid"] == bad
    });
    let now = ready_pids(&control);
    for (slot, pid) in &pids {
        if *pid != bad {
            assert!(now.contains(&(*slot, *pid)), "{now:?}");
        }
    }
    master.stop_cleanly();
}

/// No probe: the shim of `--http-drain` counts what each worker answers,
/// and a canary answering clearly more 5xx than the serving workers fails
/// its hold; a good release under the same traffic does not.
#[test]
fn without_probes_a_canary_answering_errors_fails_by_its_error_rate() {
    let dir = TempDir::new("error-rate");
    let control = path_str(&dir.path("control.sock")).to_string();
    let env = dir.path("env");
    std::fs::write(&env, "APP_STATUS=200\n").unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let args = [
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--http-drain",
        SHORT_LOOK,
        "--metrics",
        "127.0.0.1:0",
        "--control",
        &control,
        "--env-file",
        path_str(&env),
        "--",
        "uvicorn",
        "--fd",
        "3",
        "status_asgi:app",
    ];
    let python = path_with_python();
    let mut master = Master::start_with(&args, |cmd| {
        cmd.env("PATH", &python).current_dir(&fixtures);
    });
    let addr = master.listening();
    let metrics = master.metrics_addr();
    master.ready_workers();
    let serving = ready_pids(&control);
    // A new connection per request: a canary in the shared queue gets its
    // share from its start.
    let wrk = Wrk::start(addr, 16, false);
    wrk.wait_for_more(500);

    std::fs::write(&env, "APP_STATUS=500\n").unwrap();
    let err = reload_fails(&control, "a release answering 500");
    assert!(err.contains("answered 5xx to"), "{err}");
    assert_eq!(ready_pids(&control), serving, "the old workers serve");
    let now = status(&control);
    let workers = now["workers"].as_array().unwrap();
    for worker in workers.iter().filter(|w| w["state"] == "ready") {
        assert!(worker["responses"]["2xx"].as_u64() > Some(0), "{worker}");
        assert_eq!(worker["responses"]["5xx"], 0, "{worker}");
    }
    // Slot 1, which no canary touched: slot 0's newest may still be it.
    let scraped = crate::observe::scrape(&metrics);
    let ok = scraped
        .lines()
        .find(|l| l.starts_with("rcluster_worker_responses_total{slot=\"1\",class=\"2xx\"}"))
        .unwrap_or_else(|| panic!("{scraped}"));
    assert!(!ok.ends_with(" 0"), "{ok}");

    // A good release under the same traffic is proven.
    std::fs::write(&env, "APP_STATUS=200\n").unwrap();
    let (code, out, err) = rcluster(&["reload", "--wait", "--control", &control]);
    assert_eq!(code, 0, "a good release: {out}{err}");
    wrk.wait_for_more(500);
    let stats = wrk.finish();
    assert_eq!(socket_errors(&stats), 0, "{stats:?}");
    eprintln!(
        "error rate: a release answering 500 refused, a good one proven; wrk {} served, {} \
         answered 5xx by the bad canary, {} socket errors",
        stats.requests,
        stats.status,
        socket_errors(&stats)
    );
    master.stop_cleanly();
}
