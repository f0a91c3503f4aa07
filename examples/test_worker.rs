//! A worker whose behaviour the integration tests choose with flags. It
//! serves nothing; `hello` is the worker that serves.
//!
//! ```text
//! test_worker                 wait for the stop signal, exit 0
//! test_worker --exit CODE     exit at once with CODE
//! test_worker --ignore-stop   ignore the stop signal (until SIGKILL)
//! ```

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name);
    let value = |name: &str| flag(name).and_then(|i| args.get(i + 1)).map(String::as_str);

    if let Some(code) = value("--exit") {
        std::process::exit(code.parse().expect("--exit takes a number"));
    }
    if flag("--ignore-stop").is_some() {
        for &sig in rcluster::worker::STOP_SIGNALS {
            // SAFETY: setting a disposition to SIG_IGN.
            unsafe { libc::signal(sig, libc::SIG_IGN) };
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let shutdown = rcluster::worker::shutdown().expect("installing stop handlers");
    let never = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket to wait on");
    shutdown
        .wait(&never, None)
        .expect("waiting for the stop signal");
}
