//! Every example server under rcluster: reloads under load (32
//! connections, keep-alive and `Connection: close`) with zero failed
//! requests. `hello` has its own, longer tests in reload.rs.

use std::path::Path;

use crate::support::{Master, example, reload_under_load};

/// Reloads per connection mode: enough to cross every worker's life cycle
/// several times; the runtimes here take 100-300 ms to start.
const RELOADS: u64 = 3;

fn path(relative: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(relative)
        .to_string_lossy()
        .into_owned()
}

fn under_rcluster(name: &str, command: &[&str]) {
    for keep_alive in [true, false] {
        let mut args = vec!["-w", "2", "--ready", "notify", "-l", "127.0.0.1:0", "--"];
        args.extend_from_slice(command);
        let mut master = Master::start(&args);
        let stats = reload_under_load(&mut master, 2, keep_alive, RELOADS, true);
        eprintln!(
            "{name}, 2 workers, keep-alive {keep_alive}: {} served, {} failed",
            stats.ok(),
            stats.failed()
        );
        master.signal(libc::SIGTERM);
        assert_eq!(master.wait_exit().code(), Some(0));
        assert!(
            !master.log_text().contains("SIGKILL"),
            "a worker had to be killed:\n{}",
            master.log_text()
        );
    }
}

#[test]
fn node_example_reloads_under_load_without_a_failed_request() {
    under_rcluster("node", &["node", &path("examples/node/server.js")]);
}

#[test]
fn python_example_reloads_under_load_without_a_failed_request() {
    under_rcluster("python", &["python3", &path("examples/python/server.py")]);
}

#[test]
fn async_example_reloads_under_load_without_a_failed_request() {
    under_rcluster("async (hyper on tokio)", &[&example("async_hello")]);
}

#[test]
fn cluster_example_reloads_under_load_without_a_failed_request() {
    for keep_alive in [true, false] {
        let cluster = example("cluster");
        let mut master = Master::start_program(
            &cluster,
            &["--listen", "127.0.0.1:0", "--workers", "2", "--json"],
        );
        let stats = reload_under_load(&mut master, 2, keep_alive, RELOADS, false);
        eprintln!(
            "cluster (fork mode), 2 workers, keep-alive {keep_alive}: {} served, {} failed",
            stats.ok(),
            stats.failed()
        );
        master.signal(libc::SIGTERM);
        assert_eq!(master.wait_exit().code(), Some(0));
    }
}
