//! cluster: the `hello` server as its own cluster, in one process, the way
//! Node's `cluster` module works: this process becomes the master and each
//! worker runs the closure in a forked child. Same signals as `rcluster`
//! (HUP reloads by forking fresh workers, TERM drains and stops).
//!
//! ```text
//! cargo run --release --example cluster -- --listen 127.0.0.1:8080 --workers 4
//! curl 127.0.0.1:8080/           # hello from cluster worker 2 (pid 4121)
//! ```
//!
//! Options: `--listen ADDR` (default 127.0.0.1:8080), `--workers N`
//! (default: one per CPU), `--min-ready-ms N` (the canary's hold; default
//! rcluster's), `--json` (JSON logs).

#[path = "shared/http.rs"]
mod http;

use rcluster::{Cluster, ReadyRule, Workers};

fn main() -> Result<(), rcluster::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1).cloned()
    };
    let listen = value("--listen").unwrap_or_else(|| "127.0.0.1:8080".into());
    let workers = value("--workers")
        .and_then(|n| n.parse().ok())
        .map_or(Workers::Auto, Workers::Fixed);
    let min_ready = value("--min-ready-ms").and_then(|ms| ms.parse().ok());

    // No thread may exist before run(): workers are forked from this one.
    let mut cluster = Cluster::builder();
    if let Some(ms) = min_ready {
        cluster = cluster.min_ready(std::time::Duration::from_millis(ms));
    }
    cluster
        .workers(workers)
        .listen(&listen)
        .ready(ReadyRule::Notify)
        .json_logs(args.iter().any(|a| a == "--json"))
        .run(|worker| -> Result<(), Box<dyn std::error::Error>> {
            let listener = worker.listeners()?.take(0)?;
            let shutdown = worker.shutdown();
            worker.ready()?;
            let greeting = format!(
                "hello from cluster worker {} (pid {})\n",
                worker.id(),
                std::process::id()
            );
            http::serve(vec![listener], &shutdown, &greeting)?;
            Ok(())
        })
}
