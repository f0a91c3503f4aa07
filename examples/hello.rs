//! hello: a small HTTP/1.1 server (std only, keep-alive) that runs as an
//! rcluster worker and drains without losing a request.
//!
//! ```text
//! cargo build --release --example hello
//! rcluster --ready notify --listen 127.0.0.1:8080 -- target/release/examples/hello
//! curl 127.0.0.1:8080/           # hello from worker 0 (pid 4121)
//! curl 127.0.0.1:8080/sleep/2000 # the same, two seconds later
//! ```
//!
//! It takes its sockets from rcluster (fd 3 and up: every `--listen`),
//! says `READY=1` once it can accept, and drains on its stop signal (see
//! `shared/http.rs`).

#[path = "shared/http.rs"]
mod http;

use rcluster::worker;

// snippet:start
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Every socket `--listen` gave, ports and Unix sockets alike.
    let listeners = worker::listeners()?.take_all()?;
    let shutdown = worker::shutdown()?;
    // Connections queue in the shared socket until we accept: ready now.
    worker::ready()?;
    let greeting = format!(
        "hello from worker {} (pid {})",
        worker::id().map_or("-".into(), |id| id.to_string()),
        std::process::id()
    );
    // Every worker's answer has the same length, whatever the digits of
    // its pid: load tools such as `ab` count a length that changes as a
    // failure.
    let greeting = format!("{greeting:<40}\n");
    http::serve(listeners, &shutdown, &greeting)?;
    Ok(())
}
// snippet:end
