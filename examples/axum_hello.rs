//! axum_hello: a Rust server written the way most are, with nothing of
//! rcluster's: axum on tokio, its socket from `listenfd`, `READY=1` from
//! the `sd-notify` crate once it listens, and axum's graceful shutdown on
//! `SIGTERM`. The tests run it to show that such a worker's `READY=1`
//! reaches the master (the crate takes `NOTIFY_SOCKET` for a file path).
//!
//! ```text
//! cargo build --release --example axum_hello
//! rcluster --listen 127.0.0.1:8080 -- target/release/examples/axum_hello
//! ```

use axum::Router;
use axum::routing::get;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let std_listener = listenfd::ListenFd::from_env()
        .take_tcp_listener(0)?
        .ok_or("no listening socket at fd 3 (run it under rcluster --listen)")?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let greeting = format!("hello from axum (pid {})\n", std::process::id());
    let app = Router::new().route("/", get(move || async move { greeting }));
    // As the crate's own examples do: an error is not the server's problem.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
            }
        })
        .await?;
    Ok(())
}
