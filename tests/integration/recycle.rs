//! Recycling leaky and old workers without a capacity dip: the successor
//! is ready before the worker it replaces gets its stop signal, and wrk
//! sees no failed request.

use serde_json::Value;

use crate::support::wrk::Wrk;
use crate::support::{Master, example, load};

/// The records from `worker recycled` to the recycled worker's exit, and
/// checks the order: recycled, successor ready, then it drains.
fn one_recycle(master: &mut Master) -> (Value, Vec<Value>) {
    let recycled = master.expect_msg("worker recycled");
    let pid = recycled["pid"].clone();
    let slot = recycled["slot"].clone();
    let records = master.collect_until("the recycled worker's exit", |r| {
        r["msg"] == "worker exited" && r["pid"] == pid
    });
    let ready = records
        .iter()
        .position(|r| r["msg"] == "worker ready" && r["slot"] == slot)
        .expect("a successor became ready");
    let draining = records
        .iter()
        .position(|r| r["msg"] == "worker draining" && r["pid"] == pid)
        .expect("the recycled worker drained");
    assert!(ready < draining, "successor ready first: {records:#?}");
    assert!(
        records[draining]["reason"]
            .as_str()
            .unwrap()
            .starts_with("recycled"),
        "{records:#?}"
    );
    (recycled, records)
}

#[test]
fn a_worker_over_max_memory_is_recycled_without_a_failed_request() {
    let hello = example("hello");
    // hello, with a child that grows by 10 MB a second: the worker's
    // memory is its process tree's.
    let leak = "python3 -c 'import time\nb = []\nwhile True:\n    b.append(b\"x\" * (10 << 20))\n    time.sleep(1)' & exec \"$0\"";
    // The load's turn first: the recycle comes by the clock, and must
    // come under load, not while this test waits for another's.
    let _gate = load::gate();
    let mut master = Master::start(&[
        "-w",
        "2",
        "--ready",
        "notify",
        "--max-memory",
        "50M",
        "-l",
        "127.0.0.1:0",
        "--",
        "sh",
        "-c",
        leak,
        &hello,
    ]);
    let addr = master.listening();
    master.ready_workers();
    let wrk = Wrk::start(addr, 32, true);
    wrk.wait_for_more(200);
    let (recycled, _) = one_recycle(&mut master);
    assert_eq!(recycled["reason"], "memory");
    assert!(
        recycled["rss_bytes"].as_u64().unwrap() > 50 << 20,
        "{recycled}"
    );
    wrk.wait_for_more(200);
    let stats = wrk.finish();
    assert_eq!(stats.failed(), 0, "{stats:?}");
    master.stop_cleanly();
}

#[test]
fn max_age_recycles_four_workers_one_by_one_without_a_failed_request() {
    let hello = example("hello");
    // As above: the recycles come by the clock, under load.
    let _gate = load::gate();
    let mut master = Master::start(&[
        "-w",
        "4",
        "--ready",
        "notify",
        "--max-age",
        "3s",
        "-l",
        "127.0.0.1:0",
        "--",
        &hello,
    ]);
    let addr = master.listening();
    master.ready_workers();
    let wrk = Wrk::start(addr, 32, false);
    let mut times = Vec::new();
    let mut slots = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (recycled, _) = one_recycle(&mut master);
        assert_eq!(recycled["reason"], "age");
        assert!(recycled["age_limit_ms"].as_u64().unwrap() <= 3000);
        slots.insert(recycled["slot"].as_u64().unwrap());
        times.push(timestamp(&recycled));
    }
    assert_eq!(slots.len(), 4, "each slot once");
    let spread = times.iter().cloned().fold(f64::MIN, f64::max)
        - times.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread >= 0.7, "the 4 recycles came within {spread} s");
    let stats = wrk.finish();
    assert_eq!(stats.failed(), 0, "{stats:?}");
    master.stop_cleanly();
}

/// A record's time, in seconds (of the day: the test spans seconds).
fn timestamp(record: &Value) -> f64 {
    let ts = record["ts"].as_str().unwrap();
    let time = ts.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}
