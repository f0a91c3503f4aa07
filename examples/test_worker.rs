//! A worker whose behaviour the integration tests choose with flags. It
//! serves nothing (`hello` is the worker that serves) and never says
//! `READY=1` unless asked to.
//!
//! ```text
//! test_worker                   wait for the stop signal, exit 0
//! test_worker --exit CODE       exit at once with CODE
//! test_worker --ignore-stop     ignore the stop signal (until SIGKILL)
//! test_worker --ready-after MS  say READY=1 after MS milliseconds
//! test_worker --watchdog-for MS say READY=1, then WATCHDOG=1 as often as
//!                               WATCHDOG_USEC asks, for MS milliseconds only
//! ```

use std::time::{Duration, Instant};

use rcluster::worker;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name);
    let millis = |name: &str| {
        flag(name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse::<u64>().expect("a number"))
    };

    if let Some(code) = millis("--exit") {
        std::process::exit(code as i32);
    }
    if flag("--ignore-stop").is_some() {
        for &sig in worker::STOP_SIGNALS {
            // SAFETY: setting a disposition to SIG_IGN.
            unsafe { libc::signal(sig, libc::SIG_IGN) };
        }
        worker::ready().expect("notify");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let shutdown = worker::shutdown().expect("installing stop handlers");
    let never = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket to wait on");
    let wait = |timeout| shutdown.wait(&never, Some(timeout)).expect("waiting");
    if let Some(ms) = millis("--ready-after") {
        wait(Duration::from_millis(ms));
        worker::ready().expect("notify");
    }
    if let Some(ms) = millis("--watchdog-for") {
        worker::ready().expect("notify");
        let interval = worker::watchdog_interval().expect("WATCHDOG_USEC is set");
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until && !shutdown.requested() {
            worker::watchdog().expect("notify");
            wait(interval);
        }
    }
    shutdown
        .wait(&never, None)
        .expect("waiting for the stop signal");
}
