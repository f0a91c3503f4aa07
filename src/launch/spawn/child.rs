//! The only code that runs between `fork` and `exec`: async-signal-safe
//! syscalls on memory prepared before the fork ([`ChildPlan`]). No
//! allocation, no locks, no Rust std I/O (rust-lang/rust#13080), so it can
//! be audited alone.
//!
//! An exec'd worker is started the way `posix_spawn` starts a process
//! ([`spawn`]): `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own, so
//! the master's memory is neither copied nor made copy-on-write, and the
//! cost of a start does not grow with the master (at 1024 workers `fork`'s
//! copying and the faults after it were half the master's time). The child
//! shares the master's memory until it execs, while the master waits: it
//! writes only into its plan, and uses raw syscalls where glibc's wrappers
//! would act on the master's threads (`setuid` and friends broadcast to
//! every thread of the address space). It shares the master's fd table
//! too (`CLONE_FILES`), until its first call takes a table of its own with
//! only the low fds it needs in it (`fds.rs` says why).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use libc::c_char;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};

use super::CallFailed;
use crate::vocab::Pid;

/// Forks with every signal blocked. The child (`None`) goes on with them
/// still blocked, so none of the master's handlers can run in it before it
/// resets or drops them (they would write into the master's signal pipe,
/// gunicorn#1910). The parent gets the pid, its mask back, and a child that
/// already leads its own process group (the child sets it too; whichever
/// runs first wins, so a `KillGroup` right after fork finds the group).
///
/// # Safety
///
/// The child may only do what is safe after `fork` in this process:
/// async-signal-safe calls, unless the process has a single thread.
pub(crate) unsafe fn fork_blocked() -> Result<Option<Pid>, CallFailed> {
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )
    .map_err(|e| CallFailed::during("pthread_sigmask")(e.into()))?;
    // SAFETY: the caller vouches for the child's path.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        return Ok(None);
    }
    let fork_error = io::Error::last_os_error();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)
        .map_err(|e| CallFailed::during("pthread_sigmask")(e.into()))?;
    if pid < 0 {
        return Err(CallFailed::during("fork")(fork_error));
    }
    // SAFETY: plain syscall on our own child.
    unsafe { libc::setpgid(pid, pid) };
    Ok(Some(Pid::from_raw(pid)))
}

/// The stack the child runs on until it execs: `exec_child` and the libc
/// calls it makes need a few KiB.
const CHILD_STACK: usize = 256 * 1024;

/// Starts a child that runs [`exec_child`] with `plan`, sharing the
/// master's memory until it execs or exits (the master waits until then),
/// and returns its pid. Signals are blocked around it, as in
/// `fork_blocked`, and the child leads its own process group.
///
/// # Safety
///
/// The master must be single-threaded, and `plan` built for this child.
pub unsafe fn spawn(plan: &mut ChildPlan, err_fd: RawFd) -> Result<Pid, CallFailed> {
    struct Start<'p> {
        plan: &'p mut ChildPlan,
        err_fd: RawFd,
    }
    extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Start` below, alive while the parent waits.
        let start = unsafe { &mut *arg.cast::<Start>() };
        // SAFETY: in the child, with the plan built before the clone.
        unsafe { exec_child(start.plan, start.err_fd) }
    }
    // SAFETY: an anonymous private mapping for the child's stack, unmapped
    // below once the child has exec'd or exited.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            CHILD_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(CallFailed::during("mmap (the child's stack)")(
            io::Error::last_os_error(),
        ));
    }
    let mut old = SigSet::empty();
    let blocked = pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    );
    let mut start = Start { plan, err_fd };
    let pid = match blocked {
        Err(e) => Err(CallFailed::during("pthread_sigmask")(e.into())),
        // SAFETY: the stack grows down from its top; CLONE_VFORK returns
        // only after the child exec'd or exited, so `start` and the stack
        // outlive it.
        Ok(()) => match unsafe {
            libc::clone(
                child,
                stack.cast::<u8>().add(CHILD_STACK).cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD,
                (&mut start as *mut Start).cast(),
            )
        } {
            -1 => Err(CallFailed::during("clone")(io::Error::last_os_error())),
            pid => Ok(pid),
        },
    };
    if blocked.is_ok() {
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)
            .map_err(|e| CallFailed::during("pthread_sigmask")(e.into()))?;
    }
    // SAFETY: the mapping made above; nothing runs on it any more.
    unsafe { libc::munmap(stack, CHILD_STACK) };
    let pid = pid?;
    // SAFETY: plain syscall on our own child (a no-op if it did it first).
    unsafe { libc::setpgid(pid, pid) };
    Ok(Pid::from_raw(pid))
}

/// Whether the exec pipe of a child [`spawn`] returned holds an errno, or
/// cannot be read (then the pipe must be watched, as before it could be
/// known). Its bytes stay for the master to read.
pub fn exec_failed(pipe: BorrowedFd) -> bool {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int, the bytes waiting in the pipe.
    let asked = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut queued) };
    asked != 0 || queued != 0
}

/// Enough for any pid (`pid_max` is at most 2^22).
pub const PID_DIGITS: usize = 20;

/// The user and groups a worker runs as (`--user`, `--group`).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// Everything the child touches between fork and exec, allocated before
/// fork. The pointers point into `env` and the command's strings, which
/// outlive the plan.
pub struct ChildPlan {
    pub program: *const c_char,
    /// The directory to change to before exec (`--chdir`), or null.
    pub dir: *const c_char,
    pub argv: Vec<*const c_char>,
    pub envp: Vec<*mut c_char>,
    /// (index into envp, offset of the value) for variables holding the
    /// child's own pid, each with [`PID_DIGITS`] bytes reserved.
    pub pid_entries: Vec<(usize, usize)>,
    /// The `KEY=value` entries `envp` points into.
    pub env: Vec<Vec<u8>>,
    /// Listener fds, in order: they become fds 3, 4, … in the worker.
    pub fds: Vec<RawFd>,
    /// Room for copies of `fds`, so moving them needs no allocation.
    pub scratch: Vec<RawFd>,
    /// Pipe write ends for the worker's stdout and stderr, where they go
    /// through the master.
    pub stdio: [Option<RawFd>; 2],
    pub credentials: Option<Credentials>,
    /// The master's pid: the child checks it still has that parent.
    pub parent: libc::pid_t,
    /// What the child gets when the master dies (`PR_SET_PDEATHSIG`): the
    /// stop signal, so that it drains (`shell/undertaker.rs` bounds that).
    pub death_signal: i32,
    pub max_signal: i32,
}

/// The child between fork and exec. Async-signal-safe calls only; no
/// allocation, no locks, no Rust std I/O.
///
/// # Safety
///
/// Only in a child just started (with signals blocked) by [`spawn`] or
/// `fork_blocked`, with a plan built before it.
pub unsafe fn exec_child(plan: &mut ChildPlan, err_fd: RawFd) -> ! {
    // SAFETY: every call below is an async-signal-safe syscall on memory
    // prepared before fork.
    unsafe {
        // Signals are still blocked (the parent blocked them around fork):
        // reset every disposition first, so none of the master's handlers
        // can run here, including SIGPIPE, which Rust set to ignore. The
        // raw syscall, because glibc refuses its reserved signals 32 and 33,
        // which our own parent may have left ignored. An all-zero kernel
        // sigaction is SIG_DFL with no flags, whatever the field order.
        let default_action = [0u64; 4];
        for sig in 1..=plan.max_signal {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default_action.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
        // Its own process group: Ctrl-C reaches only the master, and a
        // forced stop can kill the worker's children with it.
        libc::setpgid(0, 0);
        let err = arrange_fds(plan, err_fd);
        let n = plan.fds.len() as i32;
        // Drop privileges last but one: setuid clears the parent-death
        // signal, which is why that comes after it.
        if let Some(id) = &plan.credentials
            && (libc::syscall(libc::SYS_setgroups, id.groups.len(), id.groups.as_ptr()) < 0
                || libc::syscall(libc::SYS_setgid, id.gid) < 0
                || libc::syscall(libc::SYS_setuid, id.uid) < 0)
        {
            report_and_exit(err);
        }
        // The release's directory, as the worker's user (it must be able
        // to enter it).
        if !plan.dir.is_null() && libc::chdir(plan.dir) < 0 {
            report_and_exit(err);
        }
        // Stop with the master. The master may already have died before the
        // prctl, so check that our parent is still it (bubblewrap#730).
        libc::prctl(libc::PR_SET_PDEATHSIG, plan.death_signal);
        if libc::getppid() != plan.parent {
            libc::_exit(1);
        }
        // Whatever else is open (an fd our own parent leaked to us) closes
        // at exec. Older kernels lack close_range; our fds are CLOEXEC anyway.
        libc::syscall(
            libc::SYS_close_range,
            (3 + n) as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        );
        let pid = libc::getpid();
        for &(entry, offset) in &plan.pid_entries {
            write_decimal(plan.envp[entry].add(offset).cast(), pid);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(
            plan.program,
            plan.argv.as_ptr(),
            plan.envp.as_ptr() as *const *const c_char,
        );
        report_and_exit(err)
    }
}

/// The worker's fds, from the master's table the child shares: a table of
/// its own, stdout and stderr, listener i at 3 + i. Returns the exec pipe,
/// which may have moved out of the listeners' way.
///
/// # Safety
///
/// As [`exec_child`], whose first fd changes these are.
unsafe fn arrange_fds(plan: &mut ChildPlan, err_fd: RawFd) -> RawFd {
    // SAFETY: async-signal-safe syscalls on the plan's fds.
    unsafe {
        // A table of its own before any fd changes (the master's is shared
        // with it, `CLONE_FILES`), holding only the fds below the highest it
        // needs: the master keeps its many long-lived fds above those
        // (`fds.rs`), and they close here rather than being copied and
        // closed at exec. Before Linux 5.9 (no close_range), a whole copy.
        let needed = plan.fds.iter().chain(plan.stdio.iter().flatten());
        let keep = needed.copied().fold(err_fd, RawFd::max) + 1;
        if libc::syscall(
            libc::SYS_close_range,
            keep as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE as libc::c_uint,
        ) != 0
            && libc::unshare(libc::CLONE_FILES) != 0
        {
            report_and_exit(err_fd);
        }
        // stdout and stderr first: their targets (1, 2) are below every
        // listener, and the pipes' own fds may be clobbered after this.
        for (target, pipe) in [(1, plan.stdio[0]), (2, plan.stdio[1])] {
            if let Some(pipe) = pipe
                && libc::dup2(pipe, target) < 0
            {
                libc::_exit(127);
            }
        }
        // Listener i goes to fd 3 + i. Copy every listener above the target
        // range first, so moving one never clobbers another (or the exec
        // pipe), then dup2 down; dup2 clears FD_CLOEXEC on the copy.
        let n = plan.fds.len() as i32;
        let mut err = err_fd;
        if err < 3 + n {
            err = libc::fcntl(err, libc::F_DUPFD_CLOEXEC, 3 + n);
            if err < 0 {
                libc::_exit(127);
            }
        }
        for i in 0..plan.fds.len() {
            plan.scratch[i] = libc::fcntl(plan.fds[i], libc::F_DUPFD_CLOEXEC, 3 + n);
            if plan.scratch[i] < 0 {
                report_and_exit(err);
            }
        }
        for i in 0..plan.fds.len() {
            if libc::dup2(plan.scratch[i], 3 + i as i32) < 0 {
                report_and_exit(err);
            }
        }
        err
    }
}

/// Writes errno to the exec pipe for the master and exits 127.
unsafe fn report_and_exit(err_fd: RawFd) -> ! {
    // SAFETY: async-signal-safe calls on a local buffer.
    unsafe {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(err_fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// Formats `n` (non-negative) at `out`, NUL-terminated, without allocating.
unsafe fn write_decimal(out: *mut u8, n: libc::pid_t) {
    let mut digits = [0u8; PID_DIGITS];
    let mut len = 0;
    let mut n = n.max(0) as u64;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: the caller reserved PID_DIGITS bytes plus a NUL.
        unsafe { *out.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: as above.
    unsafe { *out.add(len) = 0 };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_decimal_formats_pids() {
        let mut buf = [0xffu8; PID_DIGITS + 1];
        for (n, text) in [(0, "0"), (7, "7"), (4194304, "4194304")] {
            unsafe { write_decimal(buf.as_mut_ptr(), n) };
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(&buf[..end], text.as_bytes());
        }
    }
}
