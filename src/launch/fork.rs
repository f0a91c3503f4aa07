//! Cluster mode's launcher: fork, and run a closure in the child, which
//! leaves nothing of the master behind first. It gets its own process
//! group, dies with the master, closes every fd the master opened (all but
//! the ones the program had when `Cluster::run` was called, and the
//! listeners), puts the master's signals back to their defaults and unblocks
//! them, and gets a worker's environment. The closure runs under
//! `catch_unwind`, and the child ends with `_exit`: the host program's
//! `atexit` handlers and destructors belong to the master.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};

use crate::launch::spawn::CallFailed;
use crate::launch::spawn::child::fork_blocked;
use crate::launch::spawn::env::{Value, is_ours, slot_vars};
use crate::vocab::{Generation, MASTER_SIGNALS, SlotId};

use super::{Launch, Launched, Reaping};

/// What a forked worker runs: its slot and generation in, its exit code out.
pub type Run<'r> = &'r dyn Fn(SlotId, Generation) -> i32;

pub struct ForkLauncher<'r> {
    run: Run<'r>,
    /// The fds a worker keeps: the program's own and the listeners.
    keep: BTreeSet<RawFd>,
    /// Set in every worker's environment (`NOTIFY_SOCKET`, the watchdog).
    vars: Vec<(String, Value)>,
    parent: libc::pid_t,
}

impl<'r> ForkLauncher<'r> {
    /// `program_fds`: what [`open_fds`] said before the master opened any.
    pub fn new(
        run: Run<'r>,
        program_fds: BTreeSet<RawFd>,
        listeners: &[RawFd],
        vars: Vec<(String, Value)>,
    ) -> ForkLauncher<'r> {
        let mut keep = program_fds;
        keep.extend(listeners);
        ForkLauncher {
            run,
            keep,
            vars,
            parent: std::process::id() as libc::pid_t,
        }
    }

    fn run_child(&self, slot: SlotId, generation: Generation) -> ! {
        let run = || match self.leave_master(slot, generation) {
            Ok(()) => (self.run)(slot, generation),
            Err(e) => {
                eprintln!("worker {slot}: cannot start: {e}");
                70
            }
        };
        let code = panic::catch_unwind(AssertUnwindSafe(run)).unwrap_or(101);
        let _ = io::stdout().flush();
        // SAFETY: ends this process without running the master's exit
        // handlers or destructors.
        unsafe { libc::_exit(code) }
    }

    /// Everything a forked child does before it is a worker.
    fn leave_master(&self, slot: SlotId, generation: Generation) -> io::Result<()> {
        // SAFETY: plain syscalls in our own process.
        unsafe {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != self.parent {
                libc::_exit(1);
            }
        }
        for fd in open_fds()?.difference(&self.keep) {
            if *fd > 2 {
                // SAFETY: an fd of the master's, which this process never
                // uses again.
                unsafe { libc::close(*fd) };
            }
        }
        for &signal in MASTER_SIGNALS {
            let signal = nix::sys::signal::Signal::try_from(signal)?;
            // SAFETY: restores a default disposition.
            unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) }?;
        }
        let ours: Vec<_> = std::env::vars_os()
            .map(|(key, _)| key)
            .filter(|key| is_ours(key, &self.vars))
            .collect();
        // SAFETY: this child has exactly one thread (fork copies only the
        // caller's, and the master had one), so nothing reads the
        // environment concurrently.
        unsafe {
            for key in ours {
                std::env::remove_var(key);
            }
            for (key, value) in &self.vars {
                match value {
                    Value::Text(text) => std::env::set_var(key, text),
                    Value::OwnPid => std::env::set_var(key, std::process::id().to_string()),
                }
            }
            for (key, value) in slot_vars(slot, generation) {
                std::env::set_var(key, value);
            }
        }
        // The master reads its signals from a signalfd, with them blocked:
        // a worker receives them.
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        )?;
        Ok(())
    }
}

impl Launch for ForkLauncher<'_> {
    /// A forked worker keeps every listener it was built with: `Cluster`
    /// shares its sockets (`--balance` is the binary's).
    fn launch(
        &mut self,
        slot: SlotId,
        generation: Generation,
        _listeners: &[RawFd],
    ) -> Result<Launched, CallFailed> {
        // Output the program buffered would otherwise be written again by
        // every worker.
        let _ = io::stdout().flush();
        // SAFETY: the master has one thread (`Cluster::run` checks), so the
        // child may allocate and lock freely.
        match unsafe { fork_blocked() }? {
            None => self.run_child(slot, generation),
            Some(pid) => Ok(Launched {
                pid,
                exec_pipe: None,
                output: Vec::new(),
            }),
        }
    }

    fn reaping(&self) -> Reaping {
        Reaping::Workers
    }

    fn uid(&self) -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    fn describe(&self) -> String {
        "the cluster's workers".into()
    }
}

/// The fds this process has open now.
pub fn open_fds() -> io::Result<BTreeSet<RawFd>> {
    let listed: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The listing's own fd was in it, and is closed by now.
    // SAFETY: F_GETFD only asks whether the fd is open.
    Ok(listed
        .into_iter()
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .collect())
}
