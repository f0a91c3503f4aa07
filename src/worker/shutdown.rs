//! Learning when to stop: the stop signals (`TERM`, `INT`, `QUIT`) become a
//! flag, a readable fd that `poll` can wait on beside a socket, and, for
//! threads that `select!`, a crossbeam channel.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::sockets::stream::Accept;

/// The signals that ask a worker to stop.
pub const STOP_SIGNALS: &[i32] = &[libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];

/// Learns when the worker is asked to stop (`SIGTERM`, `SIGINT` or
/// `SIGQUIT`), and waits for sockets *or* that request, so a server can
/// stop accepting the moment it is told to.
///
/// Cheap to clone; every clone sees the same request.
#[derive(Debug, Clone)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Debug)]
struct ShutdownInner {
    /// Readable from the first stop signal on; never drained, so every
    /// waiter sees it.
    wake: UnixStream,
    signal: Arc<AtomicUsize>,
    /// Channels waiting for the signal; `None` once it has been delivered.
    waiters: Mutex<Option<Vec<Sender<i32>>>>,
}

/// What [`Shutdown::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The fd is readable (or closed by the peer).
    Readable,
    /// The stop signal arrived.
    Shutdown,
    TimedOut,
}

/// Until a worker asks for [`shutdown`], its stop signals keep their
/// default action (terminate). In cluster mode this is what a forked worker
/// starts with; an exec'd worker has the real default anyway.
static DEFAULT_STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Makes the stop signals terminate the process until [`shutdown`] is
/// called: a forked worker inherits the master's handlers, not defaults.
pub(crate) fn restore_default_stop() -> io::Result<()> {
    let enabled = DEFAULT_STOP.get_or_init(|| Arc::new(AtomicBool::new(true)));
    for &sig in STOP_SIGNALS {
        signal_hook::flag::register_conditional_default(sig, Arc::clone(enabled))?;
    }
    Ok(())
}

/// Installs the stop-signal handlers (once per process) and returns a handle.
/// From then on the stop signals only set the request: the program decides
/// when to exit.
pub fn shutdown() -> io::Result<Shutdown> {
    let shutdown = install()?;
    take_over_stop();
    Ok(shutdown)
}

/// Turns off the default action [`restore_default_stop`] kept.
pub(crate) fn take_over_stop() {
    if let Some(enabled) = DEFAULT_STOP.get() {
        enabled.store(false, Ordering::SeqCst);
    }
}

/// Registers the handlers that record the stop request, without taking
/// over the stop signals' default action.
pub(crate) fn install() -> io::Result<Shutdown> {
    static SHUTDOWN: OnceLock<Shutdown> = OnceLock::new();
    if let Some(shutdown) = SHUTDOWN.get() {
        return Ok(shutdown.clone());
    }
    let (wake, notify) = UnixStream::pair()?;
    wake.set_nonblocking(true)?;
    notify.set_nonblocking(true)?;
    let signal = Arc::new(AtomicUsize::new(0));
    // The flag before the pipe, for each signal: a waiter that wakes on the
    // pipe must find the flag set (see `wait`).
    registering(STOP_SIGNALS, || {
        for &sig in STOP_SIGNALS {
            signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)?;
            signal_hook::low_level::pipe::register(sig, notify.try_clone()?)?;
        }
        Ok(())
    })?;
    let shutdown = Shutdown {
        inner: Arc::new(ShutdownInner {
            wake,
            signal,
            waiters: Mutex::new(Some(Vec::new())),
        }),
    };
    Ok(SHUTDOWN.get_or_init(|| shutdown).clone())
}

/// Runs `register` with `signals` blocked in this thread, so that one
/// arriving while its handler is being installed waits (pending) until
/// the handler can act on it. signal-hook installs the OS handler a moment
/// before the action it runs is visible to it; a signal in that moment
/// would otherwise be lost, and a worker would miss its TERM.
fn registering<T>(signals: &[i32], register: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    for &signal in signals {
        if let Ok(signal) = Signal::try_from(signal) {
            set.add(signal);
        }
    }
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))?;
    let registered = register();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    registered
}

impl Shutdown {
    /// The stop signal that arrived, if one has.
    pub fn signal(&self) -> Option<i32> {
        match self.inner.signal.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig as i32),
        }
    }

    pub fn requested(&self) -> bool {
        self.signal().is_some()
    }

    /// A channel that yields the stop signal once, for a thread that waits
    /// with `crossbeam_channel::select!` beside its own channels. Every
    /// receiver made this way gets the signal.
    ///
    /// The first one starts a thread that waits for the signal; if the
    /// system refuses it (a thread or pids limit), this is that error: a
    /// channel that would never fire would leave the worker deaf to its
    /// stop signal until `SIGKILL`.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let (jobs_tx, jobs) = crossbeam_channel::unbounded::<String>();
    /// # drop(jobs_tx);
    /// let stop = rcluster::worker::shutdown()?.receiver()?;
    /// loop {
    ///     crossbeam_channel::select! {
    ///         recv(jobs) -> job => println!("{job:?}"),
    ///         recv(stop) -> signal => break println!("stopping on signal {signal:?}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn receiver(&self) -> io::Result<Receiver<i32>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut waiters = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
        match waiters.as_mut() {
            Some(list) => {
                if list.is_empty() {
                    let me = self.clone();
                    // A thread of the worker's (never of the master's).
                    std::thread::Builder::new()
                        .name("rcluster-shutdown".into())
                        .spawn(move || me.forward())?;
                }
                list.push(tx);
            }
            None => {
                // The signal came already: the channel holds it. A full or
                // closed channel cannot be: it is new.
                let _ = tx.send(self.signal().unwrap_or(libc::SIGTERM));
            }
        }
        Ok(rx)
    }

    /// Waits for the stop signal, then hands it to every receiver.
    fn forward(&self) {
        while !matches!(self.wait_for_stop(None), Ok(true)) {}
        let signal = self.signal().unwrap_or(libc::SIGTERM);
        let waiters = self
            .inner
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for tx in waiters.into_iter().flatten() {
            let _ = tx.send(signal);
        }
    }

    /// Waits until the stop signal arrives or `timeout` passes; true if it
    /// arrived.
    pub fn wait_for_stop(&self, timeout: Option<Duration>) -> io::Result<bool> {
        if self.requested() {
            return Ok(true);
        }
        let mut fds = [PollFd::new(self.inner.wake.as_fd(), PollFlags::POLLIN)];
        poll_fds(&mut fds, timeout)?;
        Ok(self.requested())
    }

    /// Waits until `fd` is readable, the stop signal arrives, or `timeout`
    /// passes (`None`: no limit). A stop request wins over a readable fd.
    pub fn wait(&self, fd: impl AsFd, timeout: Option<Duration>) -> io::Result<Wait> {
        // A signal that arrived while the handlers were being installed may
        // have set the flag without writing the pipe: look before sleeping.
        if self.requested() {
            return Ok(Wait::Shutdown);
        }
        let mut fds = [
            PollFd::new(fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.inner.wake.as_fd(), PollFlags::POLLIN),
        ];
        if poll_fds(&mut fds, timeout)? == 0 {
            return Ok(Wait::TimedOut);
        }
        let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[1]) || self.requested() {
            Ok(Wait::Shutdown)
        } else {
            Ok(Wait::Readable)
        }
    }

    /// Accepts the next connection, or returns `None` once the stop signal
    /// has arrived and the connections already queued then were accepted:
    /// those are served (in a stop of every worker, the last copy of the
    /// socket to close would reset them), and nothing after. Drop the
    /// listener then: once every copy is closed, a new connection is
    /// refused at once rather than left waiting in a queue nobody accepts
    /// from.
    ///
    /// Puts `listener` in non-blocking mode (another worker may take the
    /// connection this one was woken for). When the process is out of fds
    /// or memory, it waits (5 ms, doubling to 1 s, as Go's `net/http` does)
    /// and tries again, leaving the connection queued for another worker,
    /// rather than failing the server.
    ///
    /// `listener` is a [`TcpListener`](std::net::TcpListener), a
    /// [`UnixListener`](std::os::unix::net::UnixListener), or a
    /// [`Listener`](crate::worker::Listener) of either kind.
    pub fn accept<L: Accept>(&self, listener: &L) -> io::Result<Option<L::Stream>> {
        listener.set_nonblocking(true)?;
        let mut pause = None;
        loop {
            if self.wait(listener, None)? == Wait::Shutdown {
                return match listener.accept_stream() {
                    Ok(stream) => Ok(Some(stream)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => Ok(None),
                };
            }
            match listener.accept_stream() {
                Ok(stream) => return Ok(Some(stream)),
                Err(e) if transient_accept_error(&e) => continue,
                Err(e) if out_of_resources(&e) => {
                    let next = pause.map_or(MIN_PAUSE, |p: Duration| (p * 2).min(MAX_PAUSE));
                    pause = Some(next);
                    if self.wait_for_stop(Some(next))? {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// `poll(2)`, retried on `EINTR` for what is left of `timeout` (a signal
/// does not restart the wait in full); the number of ready fds (0: timed
/// out).
fn poll_fds(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                // Rounded up: a wait never ends before its deadline.
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(fds, left) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(n) => return Ok(n as usize),
        }
    }
}

/// How long `accept` first waits when out of fds or memory, and at most.
const MIN_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Errors that last until something else lets go of fds or memory.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Errors after which the next accept may well succeed.
fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    extern "C" fn nothing(_: libc::c_int) {}

    /// A stream of signals does not make a wait longer than its timeout:
    /// each `EINTR` used to start the whole wait again, so a worker's
    /// `wait_for_stop(900ms)` under signals every 50 ms never returned.
    #[test]
    fn signals_do_not_restart_a_wait_in_full() {
        // SAFETY: a handler that does nothing, for a signal nothing else
        // in the unit tests uses.
        unsafe { libc::signal(libc::SIGWINCH, nothing as *const () as libc::sighandler_t) };
        let (read, _write) = nix::unistd::pipe().unwrap();
        // SAFETY: this thread's own handle.
        let me = unsafe { libc::pthread_self() };
        let done = Arc::new(AtomicBool::new(false));
        let sending = Arc::new(AtomicBool::new(true));
        let sender = {
            let (done, sending) = (Arc::clone(&done), Arc::clone(&sending));
            std::thread::spawn(move || {
                for _ in 0..300 {
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    // SAFETY: the test thread outlives this loop (it joins).
                    unsafe { libc::pthread_kill(me, libc::SIGWINCH) };
                    std::thread::sleep(Duration::from_millis(10));
                }
                sending.store(false, Ordering::SeqCst);
            })
        };
        let mut fds = [PollFd::new(read.as_fd(), PollFlags::POLLIN)];
        let ready = poll_fds(&mut fds, Some(Duration::from_millis(100))).unwrap();
        let returned_under_signals = sending.load(Ordering::SeqCst);
        done.store(true, Ordering::SeqCst);
        sender.join().unwrap();
        assert_eq!(ready, 0, "timed out");
        assert!(
            returned_under_signals,
            "the wait ended only once the signals (3 s of them) stopped"
        );
    }
}
