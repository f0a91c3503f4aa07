//! Exit tasks: cleanup that runs once when the worker is told to stop or
//! panics, then the process exits. The job of Node's `exit-hook`, with the
//! part it cannot do: all tasks share one deadline, so a task that hangs
//! cannot keep the process alive past it.
//!
//! ```no_run
//! use std::time::Duration;
//! use rcluster::worker;
//!
//! # fn main() -> std::io::Result<()> {
//! worker::set_exit_deadline(Duration::from_secs(5));
//! worker::on_exit(|reason| {
//!     eprintln!("flushing the write-back cache ({reason:?})");
//! })?;
//! // ... serve; on TERM the task runs and the process exits 143 (128 + 15)
//! # Ok(())
//! # }
//! ```
//!
//! Exit tasks take over the stop signals: after `TERM` the process exits
//! once its tasks are done (or the deadline passes). A server that drains
//! connections itself can do the drain *in* a task, or use
//! [`super::shutdown`] alone and exit when it is done.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long all tasks together may take, unless set otherwise.
pub const DEFAULT_EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// Why the process is exiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// A stop signal (`TERM`, `INT`, `QUIT`) arrived.
    Signal(i32),
    /// A thread panicked.
    Panic,
}

impl ExitReason {
    /// `128 + signal` for a signal (what a shell reports for a process that
    /// a signal ended), 1 for a panic.
    pub fn exit_code(self) -> i32 {
        match self {
            ExitReason::Signal(signal) => 128 + signal,
            ExitReason::Panic => 1,
        }
    }
}

type Task = Box<dyn FnOnce(ExitReason) + Send>;

struct ExitTasks {
    tasks: Mutex<Vec<Task>>,
    deadline_ms: AtomicU64,
    /// Set by the first trigger; later ones (a second signal, a panic in a
    /// task) do not start the tasks again.
    fired: AtomicBool,
}

fn tasks() -> &'static ExitTasks {
    static TASKS: OnceLock<ExitTasks> = OnceLock::new();
    TASKS.get_or_init(|| ExitTasks {
        tasks: Mutex::new(Vec::new()),
        deadline_ms: AtomicU64::new(DEFAULT_EXIT_DEADLINE.as_millis() as u64),
        fired: AtomicBool::new(false),
    })
}

/// Registers `task` to run once, in registration order with the others,
/// when a stop signal arrives or any thread panics. The first call installs
/// the triggers (a thread waiting for the stop signal, and a panic hook that
/// runs after the one already set).
pub fn on_exit(task: impl FnOnce(ExitReason) + Send + 'static) -> io::Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_none() {
        let stop = super::shutdown()?.receiver()?;
        std::thread::Builder::new()
            .name("rcluster-exit".into())
            .spawn(move || {
                if let Ok(signal) = stop.recv() {
                    run_and_exit(ExitReason::Signal(signal));
                }
            })?;
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            previous(info);
            run_and_exit(ExitReason::Panic);
        }));
        let _ = INSTALLED.set(());
    }
    lock(&tasks().tasks).push(Box::new(task));
    Ok(())
}

/// How long all exit tasks together may run (default 10 s). When it
/// passes, the process exits whatever the tasks are doing.
pub fn set_exit_deadline(deadline: Duration) {
    let ms = deadline.as_millis().min(u64::MAX as u128) as u64;
    tasks().deadline_ms.store(ms, Ordering::SeqCst);
}

/// Runs the tasks on a thread of their own and exits when they are done or
/// at the deadline. Returns only if another trigger is already doing it.
fn run_and_exit(reason: ExitReason) {
    let exit = tasks();
    if exit.fired.swap(true, Ordering::SeqCst) {
        return;
    }
    let deadline = Instant::now() + Duration::from_millis(exit.deadline_ms.load(Ordering::SeqCst));
    let list = std::mem::take(&mut *lock(&exit.tasks));
    let (done, finished) = crossbeam_channel::bounded::<()>(1);
    let runner = std::thread::Builder::new()
        .name("rcluster-exit-tasks".into())
        .spawn(move || {
            for task in list {
                // One task's panic does not keep the next from running.
                let _ = panic::catch_unwind(AssertUnwindSafe(|| task(reason)));
            }
            let _ = done.send(());
        });
    if runner.is_ok() {
        let _ = finished.recv_deadline(deadline);
    }
    std::process::exit(reason.exit_code());
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
