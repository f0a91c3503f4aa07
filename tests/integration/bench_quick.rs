//! The benchmark works: `--quick` runs every scenario for a few seconds
//! against the debug binaries and writes its table, JSON and SVG. No
//! timing is asserted (speed lives in `cargo bench`).

use crate::bench::scenarios::Server;
use crate::bench::target::Bins;
use crate::bench::{Opts, run, write};
use crate::support::{TempDir, example, rcluster_bin};

#[test]
fn the_reload_bench_runs_every_scenario_and_writes_its_report() {
    example("hello");
    example("test_worker");
    let bins = Bins::in_dir(rcluster_bin().parent().expect("target dir"));
    let report = run(&Opts::quick(), &Server::Rcluster(&bins));
    let table = report.table();
    for heading in [
        "steady",
        "reload, 2 workers, keep-alive",
        "reload, 2 workers, close",
        "crash:",
        "scale",
        "idle master",
        "worker stderr",
        "upgrade, 2 workers, keep-alive",
        "upgrade, 2 workers, close",
        "master memory",
    ] {
        assert!(table.contains(heading), "no {heading} in\n{table}");
    }
    for r in &report.reload {
        assert_eq!(
            r.failed.iter().map(|f| f.1).sum::<u64>(),
            0,
            "a reload lost requests:\n{table}"
        );
    }
    for u in &report.upgrade {
        assert_eq!(
            u.failed.iter().map(|f| f.1).sum::<u64>(),
            0,
            "an upgrade lost requests:\n{table}"
        );
    }
    // Every figure with a goal was measured, and the Markdown for
    // docs/performance.md shows each one.
    let markdown = crate::bench::goals::markdown(&report);
    for row in crate::bench::goals::rows(&report) {
        // --quick runs 2 workers only.
        let four = row.figure.ends_with(", 4 workers");
        assert!(
            row.measured.is_some() || four,
            "{} was not measured",
            row.figure
        );
        assert!(markdown.contains(row.figure), "{markdown}");
    }
    let dir = TempDir::new("bench");
    let (json, svg) = write(&report, &dir.0).expect("writing the report");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(json["reload"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["scale"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["stderr"].as_array().map(Vec::len), Some(4));
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("failed request"),
        "not the picture"
    );
}
