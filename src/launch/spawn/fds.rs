//! Where the master keeps its fds, so that starting a worker copies few.
//!
//! `clone` copies the master's whole fd table into the child, and the
//! child's `execve` then closes all but the few it keeps: with a pidfd and
//! an output pipe per worker, every start at 1024 workers copied and closed
//! some 2000 fds, the growth of the master's CPU per worker from 8 to 1024
//! workers and of the restart time with it (docs/performance.md). So the
//! child shares the table instead (`CLONE_FILES`), and its first call takes
//! a table of its own holding only the fds below the highest one it needs
//! (`close_range(.., CLOSE_RANGE_UNSHARE)` copies no more than that); and
//! the master keeps the fds that live as long as a worker at or above
//! [`FLOOR`], out of that range. The fixed ones (listeners, the log, the
//! sockets of the loop) and those made for a start are opened low, as the
//! kernel hands out the lowest free number.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Above the fds of the master's own (listeners, control and metrics
/// clients, each bounded) and those a start makes.
pub const FLOOR: RawFd = 256;

/// `fd`, moved to the lowest free number at or above [`FLOOR`]; as it was
/// when it cannot be (`RLIMIT_NOFILE` at or below the floor, or no room):
/// starts then copy more of the table, and nothing else changes.
pub fn above_floor(fd: OwnedFd) -> OwnedFd {
    if fd.as_raw_fd() >= FLOOR {
        return fd;
    }
    // SAFETY: F_DUPFD_CLOEXEC only reads `fd`; the copy (same open file,
    // flags and all) is a new fd nothing else owns.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FLOOR) };
    if moved < 0 {
        return fd;
    }
    // SAFETY: as above; `fd` closes as it drops.
    unsafe { OwnedFd::from_raw_fd(moved) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_lived_fd_moves_above_the_floor_and_stays_the_same_file() {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let read = above_floor(read);
        assert!(read.as_raw_fd() >= FLOOR);
        nix::unistd::write(&write, b"x").unwrap();
        let mut byte = [0u8];
        assert_eq!(nix::unistd::read(&read, &mut byte).unwrap(), 1);
        // SAFETY: F_GETFD only reads the fd's flags.
        let flags = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
