//! Going back to the old image when the new one cannot go on.
//!
//! The check (`--upgrade-check`) proves a new binary can read the
//! hand-over; it cannot prove the rest of the new image's start: opening
//! the log file, writing the pid file, taking over the socket files,
//! looking up `--user`. Those run after the `execve`, when the old image
//! is gone. So the old image keeps a descriptor of its own binary open
//! across the `execve` (`/proc/self/exe`, whatever the path now holds),
//! and until the new image's loop first turns, any failure execs that
//! binary again with the very same hand-over and the step that failed:
//! same pid, same workers, same sockets, and `upgrade --wait` says why.
//!
//! Whatever the new image did to the handed-over descriptors before it
//! failed (closed them, wrapped them and dropped them) is undone: each is
//! copied as soon as the hand-over is read, and the copies are put back
//! at their numbers (`dup2`) just before the old binary runs again.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::handover::{FAILED_ARG, RESUME_ARG};

/// The way back, from the new image's start until its loop is about to
/// handle its first event: from then on it acts for the cluster, and the
/// old image's hand-over is out of date.
static ARMED: Mutex<Option<Fallback>> = Mutex::new(None);

fn armed() -> std::sync::MutexGuard<'static, Option<Fallback>> {
    ARMED.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new image started with `--upgrade-resume=H,E` can go back: `E` is the
/// old binary, `H` the hand-over (copied now: reading it closes it).
///
/// # Safety
/// `old_exe` must be an open descriptor nothing else owns.
pub unsafe fn arm(handover_fd: RawFd, old_exe: RawFd) -> io::Result<()> {
    // SAFETY: the caller gives us `old_exe`.
    let old_exe = unsafe { OwnedFd::from_raw_fd(old_exe) };
    super::set_cloexec(old_exe.as_raw_fd(), true)?;
    let mut fallback = Fallback {
        old_exe,
        handover_fd,
        copies: Vec::new(),
    };
    fallback.keep(&[handover_fd])?;
    *armed() = Some(fallback);
    Ok(())
}

/// Copies the descriptors the hand-over lists, before anything adopts
/// them; without them there is no way back.
pub fn keep(fds: &[RawFd]) {
    let mut armed = armed();
    if let Some(fallback) = armed.as_mut()
        && fallback.keep(fds).is_err()
    {
        *armed = None;
    }
}

/// Whether a failure now would go back to the old image.
pub fn can_go_back() -> bool {
    armed().is_some()
}

/// The new image is past the point where the old one can take over again:
/// the copies and the old binary are closed.
pub fn commit() {
    armed().take();
}

/// Runs the old binary again from the hand-over, saying `cause`. Returns
/// only if that cannot be done (then the caller exits, as before there was
/// a way back).
pub fn go_back(argv0: &OsString, args: &[OsString], cause: &str) -> io::Error {
    match armed().take() {
        Some(fallback) => fallback.go_back(argv0, args, cause),
        None => io::Error::other("no way back: the new image had taken over"),
    }
}

/// What the new image needs to go back: the old binary, the hand-over,
/// and a copy of every descriptor handed over.
struct Fallback {
    old_exe: OwnedFd,
    handover_fd: RawFd,
    /// (number, copy): each copy close-on-exec, put back with `dup2`.
    copies: Vec<(RawFd, OwnedFd)>,
}

impl Fallback {
    fn keep(&mut self, fds: &[RawFd]) -> io::Result<()> {
        for &fd in fds {
            // SAFETY: a descriptor of the hand-over, open until adopted.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            self.copies.push((fd, borrowed.try_clone_to_owned()?));
        }
        Ok(())
    }

    /// Runs the old binary again from the hand-over, saying `cause`.
    /// Returns only if that cannot be done (then the caller exits, as
    /// before there was a way back), or if the new image had committed.
    fn go_back(self, argv0: &OsString, args: &[OsString], cause: &str) -> io::Error {
        // A copy may sit at a number another copy is put back at (the
        // hand-over's own number is free once it was read): each moves
        // above every such number first, or one would overwrite another.
        let above = self.copies.iter().map(|(fd, _)| *fd).max().unwrap_or(0) + 1;
        let mut moved = Vec::new();
        for (fd, copy) in &self.copies {
            // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, ours alone.
            let high = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above) };
            if high < 0 {
                return io::Error::last_os_error();
            }
            // SAFETY: as above.
            moved.push((*fd, unsafe { OwnedFd::from_raw_fd(high) }));
        }
        for (fd, copy) in &moved {
            // SAFETY: dup2 onto a number the old image's hand-over names;
            // whatever the new image put there is given up.
            if unsafe { libc::dup2(copy.as_raw_fd(), *fd) } < 0 {
                return io::Error::last_os_error();
            }
        }
        // SAFETY: the hand-over's number, just put back; its offset is
        // shared with the copy, and the old image reads from the start.
        unsafe { libc::lseek(self.handover_fd, 0, libc::SEEK_SET) };
        let mut argv = vec![argv0.clone()];
        argv.push(format!("{RESUME_ARG}{}", self.handover_fd).into());
        // One line: it travels as an argument.
        argv.push(format!("{FAILED_ARG}{}", cause.replace('\n', " ")).into());
        argv.extend(args.iter().cloned());
        let (argv, env) = match super::exec_strings(&argv) {
            Ok(strings) => strings,
            Err(e) => return e,
        };
        match nix::unistd::fexecve(self.old_exe.as_fd(), &argv, &env) {
            Err(errno) => io::Error::from(errno),
            Ok(never) => match never {},
        }
    }
}
