//! async_hello: a hyper server on tokio as an rcluster worker. It takes the
//! inherited listener, says `READY=1`, and drains on its stop signal without
//! losing a request.
//!
//! ```text
//! cargo build --release --example async_hello
//! rcluster --ready notify --listen 127.0.0.1:8080 -- target/release/examples/async_hello
//! ```
//!
//! The drain: stop accepting at once; answer every request from then on
//! with `Connection: close`; after a short grace (for requests already on
//! their way on idle keep-alive connections), close the idle connections and
//! wait for the busy ones. hyper's own graceful shutdown closes idle
//! connections at once, which races with a client that is sending.

use std::convert::Infallible;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;

use rcluster::worker;

const DRAIN_GRACE: Duration = Duration::from_millis(500);
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

fn main() -> Result<(), Box<dyn Error>> {
    let listener = worker::listeners()?.take_tcp(0)?;
    listener.set_nonblocking(true)?;
    let stop = worker::shutdown()?.receiver()?;
    let greeting = format!(
        "hello from async worker {} (pid {})\n",
        worker::id().map_or("-".into(), |id| id.to_string()),
        std::process::id()
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            // The crossbeam channel, awaited from a blocking thread.
            let mut stop = tokio::task::spawn_blocking(move || stop.recv());
            let draining = Arc::new(AtomicBool::new(false));
            let greeting = Bytes::from(greeting);
            let connections = GracefulShutdown::new();
            worker::ready()?;
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    accepted = listener.accept() => {
                        let stream = match accepted {
                            Ok((stream, _)) => stream,
                            // Out of fds: the connection stays queued for
                            // another worker; try again in a moment rather
                            // than spin on a socket that stays readable.
                            Err(_) => {
                                tokio::time::sleep(ACCEPT_PAUSE).await;
                                continue;
                            }
                        };
                        let _ = stream.set_nodelay(true);
                        let (draining, greeting) = (Arc::clone(&draining), greeting.clone());
                        let service = service_fn(move |request| {
                            respond(request, greeting.clone(), Arc::clone(&draining))
                        });
                        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                        let conn = connections.watch(conn);
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                }
            }
            drop(listener);
            draining.store(true, Ordering::SeqCst);
            tokio::time::sleep(DRAIN_GRACE).await;
            connections.shutdown().await;
            Ok::<(), Box<dyn Error>>(())
        })
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    greeting: Bytes,
    draining: Arc<AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(ms) = request
        .uri()
        .path()
        .strip_prefix("/sleep/")
        .and_then(|ms| ms.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms).min(Duration::from_secs(60))).await;
    }
    let mut response = Response::new(Full::new(greeting));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if draining.load(Ordering::SeqCst) {
        // Tell keep-alive clients to reconnect (to a worker not leaving).
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}
