//! A worker whose behaviour the integration tests choose with flags. It
//! serves nothing (`hello` is the worker that serves) and never says
//! `READY=1` unless asked to.
//!
//! ```text
//! test_worker                     wait for the stop signal, exit 0
//! test_worker --exit CODE         exit at once with CODE
//! test_worker --ignore-stop       ignore the stop signal (until SIGKILL)
//! test_worker --never-listen      hold the listeners without watching them
//!                                 (by default they are in an epoll set,
//!                                 so `--ready auto` sees a server)
//! test_worker --ready-after MS    say READY=1 after MS milliseconds
//! test_worker --exit-after MS     exit 1 MS milliseconds after that (or after start)
//! test_worker --say-stopping      say READY=1 then STOPPING=1, and keep running
//! test_worker --watchdog-for MS   say READY=1, then WATCHDOG=1 as often as
//!                                 WATCHDOG_USEC asks, for MS milliseconds only
//! test_worker --status-flood MS   say READY=1, then STATUS=n, 10000 times a
//!                                 second, for MS milliseconds; then wait
//! test_worker --receiver          wait for the stop signal on a channel
//!                                 (Shutdown::receiver), or, if it cannot be
//!                                 made, say why on stderr and poll
//!
//! The worker library, printing what it got on stdout:
//! test_worker --listeners [--take-tcp NAME] [--take-unix NAME]
//! test_worker --notify            print whether ready() sent anything
//! test_worker --send-notify TEXT  send TEXT (`\n` for newlines) to $NOTIFY_SOCKET, exit
//! test_worker --exit-task FILE [--hang-task] [--exit-deadline MS] [--panic-after MS]
//!
//! Cluster mode (this process becomes the master, JSON logs, 2 workers):
//! test_worker --cluster [--panic-once FILE] [--thread-first]
//!                       [--ready exec|notify|delay:MS] [--control PATH]
//!                       [--release FILE]  (a worker exits 1 at start while FILE says bad)
//!                       [--host-child FILE] (start `sleep 600` first, its pid in FILE)
//!                       [--print-first TEXT] (print TEXT, without a newline, before run)
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use rcluster::{Cluster, ReadyRule, worker};

struct Args(Vec<String>);

impl Args {
    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    fn value(&self, name: &str) -> Option<&str> {
        let at = self.0.iter().position(|a| a == name)?;
        self.0.get(at + 1).map(String::as_str)
    }

    fn millis(&self, name: &str) -> Option<Duration> {
        self.value(name)
            .map(|v| Duration::from_millis(v.parse().expect("a number of milliseconds")))
    }
}

fn main() {
    let args = Args(std::env::args().skip(1).collect());
    if let Some(code) = args.value("--exit") {
        std::process::exit(code.parse().expect("--exit takes a number"));
    }
    if args.flag("--listeners") {
        return print_listeners(&args);
    }
    if let Some(text) = args.value("--send-notify") {
        let text = text.replace("\\n", "\n");
        let socket = std::env::var("NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
        let addr = match socket.strip_prefix('@') {
            Some(name) => <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name.as_bytes()),
            None => std::os::unix::net::SocketAddr::from_pathname(&socket),
        }
        .expect("a socket address");
        std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.send_to_addr(text.as_bytes(), &addr))
            .expect("sending the datagram");
        return;
    }
    if args.flag("--notify") {
        println!("sent: {}", worker::ready().expect("sending READY=1"));
        return;
    }
    if let Some(file) = args.value("--exit-task") {
        return exit_tasks(&args, file);
    }
    if args.flag("--cluster") {
        return cluster(&args);
    }
    if args.flag("--ignore-stop") {
        for &sig in worker::STOP_SIGNALS {
            // SAFETY: setting a disposition to SIG_IGN.
            unsafe { libc::signal(sig, libc::SIG_IGN) };
        }
        worker::ready().expect("notify");
        sleep_forever();
    }
    if args.millis("--exit-after").is_some() {
        // Its timer is what tests measure canaries against. All of its code
        // is read in and locked before it says READY=1: on a host that
        // evicts cold pages (the test machine's DAMON) under the suite's
        // disk load, a page of the exit path read only when the timer fired
        // was seen to take 3 s, past the canary's 2 s hold (both test
        // workers of a reload stalled, and resumed in the same instant).
        // A wait for the disk now delays READY=1, which the reload waits
        // for, not the exit it times.
        // SAFETY: locks this process's pages; changes no memory.
        unsafe { libc::mlockall(libc::MCL_CURRENT) };
    }
    if !args.flag("--never-listen") {
        watch_listeners();
    }
    let shutdown = worker::shutdown().expect("installing stop handlers");
    if let Some(delay) = args.millis("--ready-after") {
        shutdown.wait_for_stop(Some(delay)).expect("waiting");
        worker::ready().expect("notify");
    }
    if args.flag("--say-stopping") {
        worker::ready().expect("notify");
        worker::stopping().expect("notify");
    }
    if let Some(delay) = args.millis("--exit-after")
        && !shutdown.wait_for_stop(Some(delay)).expect("waiting")
    {
        std::process::exit(1);
    }
    if let Some(period) = args.millis("--status-flood") {
        worker::ready().expect("notify");
        status_flood(period);
    }
    if args.flag("--receiver") {
        match shutdown.receiver() {
            Ok(stop) => {
                let _ = stop.recv();
            }
            Err(e) => {
                eprintln!("test_worker: no stop channel: {e}");
                while !shutdown.wait_for_stop(None).expect("waiting") {}
            }
        }
        return;
    }
    if let Some(period) = args.millis("--watchdog-for") {
        worker::ready().expect("notify");
        let interval = worker::watchdog_interval().expect("WATCHDOG_USEC is set");
        let until = Instant::now() + period;
        while Instant::now() < until && !shutdown.requested() {
            worker::watchdog().expect("notify");
            shutdown.wait_for_stop(Some(interval)).expect("waiting");
        }
    }
    while !shutdown
        .wait_for_stop(None)
        .expect("waiting for the stop signal")
    {}
}

/// Puts the inherited listeners in an epoll set nobody waits on, as an
/// event-loop server does when it starts listening: to `--ready auto`'s
/// look, this worker serves (it accepts nothing: `hello` is the server).
fn watch_listeners() {
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if count == 0 {
        return;
    }
    // SAFETY: plain syscalls on fds this process owns; the epoll fd is
    // left open for the life of the process.
    unsafe {
        let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        for fd in 3..3 + count {
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: fd as u64,
            };
            libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event);
        }
    }
}

/// `STATUS=<n>` 10,000 times a second (in bursts of 100 every 10 ms) for
/// `period`.
fn status_flood(period: Duration) {
    let until = Instant::now() + period;
    let mut n = 0u64;
    while Instant::now() < until {
        for _ in 0..100 {
            n += 1;
            let _ = worker::status(&format!("processed {n} batches"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn print_listeners(args: &Args) {
    let mut listeners = match worker::listeners() {
        Ok(listeners) => listeners,
        Err(e) => {
            println!("error: {e}");
            return;
        }
    };
    println!("ok: {}", listeners.names().collect::<Vec<_>>().join(","));
    if let Some(name) = args.value("--take-tcp") {
        match listeners.take_tcp(name) {
            Ok(l) => println!("tcp {name}: {}", l.local_addr().expect("an address")),
            Err(e) => println!("error: {e}"),
        }
    }
    if let Some(name) = args.value("--take-unix") {
        match listeners.take_unix(name) {
            Ok(_) => println!("unix {name}"),
            Err(e) => println!("error: {e}"),
        }
    }
}

fn exit_tasks(args: &Args, file: &str) {
    if let Some(deadline) = args.millis("--exit-deadline") {
        worker::set_exit_deadline(deadline);
    }
    let file = file.to_string();
    worker::on_exit(move |reason| {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .expect("opening the task file");
        writeln!(out, "ran {reason:?}").expect("writing the task file");
    })
    .expect("registering an exit task");
    if args.flag("--hang-task") {
        worker::on_exit(|_| sleep_forever()).expect("registering an exit task");
    }
    println!("tasks registered");
    if let Some(delay) = args.millis("--panic-after") {
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            panic!("a worker thread panicked");
        });
    }
    sleep_forever();
}

fn cluster(args: &Args) {
    if args.flag("--thread-first") {
        std::thread::spawn(sleep_forever);
    }
    if let Some(file) = args.value("--host-child") {
        // A child of the program's own, which the cluster must never reap.
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("starting sleep");
        std::fs::write(file, child.id().to_string()).expect("writing the pid");
        std::mem::forget(child);
    }
    if let Some(text) = args.value("--print-first") {
        // Buffered, not flushed: forked workers must not write it again.
        print!("{text}");
    }
    let panic_once = args.value("--panic-once").map(str::to_string);
    let release = args.value("--release").map(str::to_string);
    let ready = match args.value("--ready") {
        None | Some("notify") => ReadyRule::Notify,
        Some("exec") => ReadyRule::Exec,
        Some(delay) => ReadyRule::Delay(Duration::from_millis(
            delay
                .strip_prefix("delay:")
                .and_then(|ms| ms.parse().ok())
                .expect("--ready exec, notify or delay:MS"),
        )),
    };
    let mut builder = Cluster::builder()
        .workers(2)
        .listen("127.0.0.1:0")
        .ready(ready)
        .min_uptime(Duration::ZERO)
        .json_logs(true);
    if let Some(control) = args.value("--control") {
        builder = builder.control(control);
    }
    let result = builder.run(|worker| {
        if let Some(file) = &panic_once
            && std::fs::remove_file(file).is_ok()
        {
            panic!("worker {} panics once", worker.id());
        }
        if let Some(file) = &release
            && std::fs::read_to_string(file).is_ok_and(|r| r.trim() == "bad")
        {
            std::process::exit(1);
        }
        let shutdown = worker.shutdown();
        let listener = worker
            .listeners()
            .expect("the listeners")
            .take_tcp(0)
            .expect("the listener");
        assert!(listener.local_addr().is_ok());
        // Under the other rules, readiness is the master's to decide.
        if ready == ReadyRule::Notify {
            worker.ready().expect("notify");
        }
        while !shutdown.wait_for_stop(None).expect("waiting") {}
    });
    if let Err(e) = result {
        eprintln!("test_worker: {e}");
        std::process::exit(e.exit_code().into());
    }
}
