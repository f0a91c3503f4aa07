//! Where log lines go, without ever blocking or failing the master: a
//! [`Sink`] writes whole lines to stderr, stdout or `--log-file` as far as
//! the destination takes them now, keeps a bounded backlog for when it can
//! take more (the master's loop watches it for that), and counts the lines
//! it had to drop: a full disk, a reader that is gone (`| head -1`), or one
//! that stalls.
//!
//! The inherited stderr is shared with the workers, so it is not switched
//! to non-blocking (a worker would see EAGAIN): a pipe or terminal is
//! reopened through `/proc/self/fd`, which gives the master a file
//! description of its own; a socket (journald) is written with
//! `MSG_DONTWAIT`; a regular file never blocks.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// How much may wait for a slow destination before lines are dropped.
pub const BACKLOG: usize = 256 * 1024;

/// How the fd is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A regular file: writes do not block.
    File,
    /// A pipe, FIFO or terminal opened non-blocking for the master alone.
    Stream,
    /// A pipe or terminal that could not be reopened: written only when
    /// `poll` says it can take a page, a page at a time.
    Polled,
    /// A socket: `send` with `MSG_DONTWAIT`.
    Socket,
}

#[derive(Debug)]
pub struct Sink {
    fd: OwnedFd,
    kind: Kind,
    /// Whole lines (and perhaps the rest of one cut short) not yet written.
    backlog: Vec<u8>,
    /// Lines dropped since the last report.
    unreported: u64,
    /// Lines dropped in all.
    lost: u64,
    /// Why the last write failed, if it did.
    last_error: Option<String>,
}

/// What became of the bytes given to [`Sink::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written, or waiting in the backlog.
    Taken,
    Dropped,
}

impl Sink {
    /// The master's stderr (fd 2) or stdout (fd 1).
    pub fn inherited(fd: RawFd) -> io::Result<Sink> {
        // SAFETY: fstat on a small integer with a valid buffer.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let kind = match stat.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFSOCK => Kind::Socket,
            _ => Kind::Stream,
        };
        if kind == Kind::Stream
            && let Ok(own) = reopen_nonblocking(fd)
        {
            return Ok(Sink::new(own, Kind::Stream));
        }
        // SAFETY: F_DUPFD_CLOEXEC returns a new fd that we own.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd nothing else owns.
        let copy = unsafe { OwnedFd::from_raw_fd(copy) };
        let kind = if kind == Kind::Stream {
            Kind::Polled
        } else {
            kind
        };
        Ok(Sink::new(copy, kind))
    }

    /// `--log-file`: appended to; a FIFO without a reader is refused
    /// rather than waited for.
    pub fn file(path: &Path) -> io::Result<Sink> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        let kind = if file.metadata()?.is_file() {
            Kind::File
        } else {
            Kind::Stream
        };
        Ok(Sink::new(OwnedFd::from(file), kind))
    }

    fn new(fd: OwnedFd, kind: Kind) -> Sink {
        Sink {
            fd,
            kind,
            backlog: Vec::new(),
            unreported: 0,
            lost: 0,
            last_error: None,
        }
    }

    /// Writes `lines` (whole lines, `count` of them) now, or keeps them for
    /// later, or drops them if the backlog is full: never waits.
    pub fn push(&mut self, lines: &[u8], count: u64) -> Pushed {
        self.flush();
        let mut rest = lines;
        if self.backlog.is_empty() {
            match self.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) => {
                    self.fail(e);
                    self.drop_lines(count);
                    return Pushed::Dropped;
                }
            }
        }
        if rest.is_empty() {
            return Pushed::Taken;
        }
        if self.backlog.len() + rest.len() > BACKLOG && rest.len() == lines.len() {
            self.drop_lines(count);
            return Pushed::Dropped;
        }
        // A line already partly written must be finished, room or not.
        self.backlog.extend_from_slice(rest);
        Pushed::Taken
    }

    /// Writes as much of the backlog as the destination takes now.
    pub fn flush(&mut self) {
        while !self.backlog.is_empty() {
            match self.write(&self.backlog) {
                Ok(0) => return,
                Ok(n) => {
                    self.backlog.drain(..n);
                }
                Err(e) => {
                    // It will not take these: they are lost.
                    let lines = count_lines(&self.backlog);
                    self.backlog.clear();
                    self.fail(e);
                    self.drop_lines(lines);
                    return;
                }
            }
        }
    }

    /// Writes what the destination takes without waiting: `Ok(0)` if it
    /// takes nothing now; an error if it never will.
    fn write(&self, bytes: &[u8]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        loop {
            // SAFETY: writes from a valid buffer to our own fd.
            let n = unsafe {
                match self.kind {
                    Kind::File | Kind::Stream => {
                        libc::write(fd, bytes.as_ptr().cast(), bytes.len())
                    }
                    Kind::Socket => libc::send(
                        fd,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ),
                    Kind::Polled => {
                        if !writable(fd) {
                            return Ok(0);
                        }
                        // A page fits whenever poll says writable.
                        libc::write(fd, bytes.as_ptr().cast(), bytes.len().min(4096))
                    }
                }
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(e),
            }
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.last_error = Some(e.to_string());
    }

    fn drop_lines(&mut self, lines: u64) {
        self.unreported += lines;
        self.lost += lines;
    }

    /// Lines dropped since the last [`reported`](Self::reported), and why
    /// the last write failed.
    pub fn unreported(&self) -> (u64, Option<&str>) {
        (self.unreported, self.last_error.as_deref())
    }

    /// The report of `lines` lost was written.
    pub fn reported(&mut self, lines: u64) {
        self.unreported -= lines.min(self.unreported);
        self.last_error = None;
    }

    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Takes over `old`'s count of lost lines: the log file was reopened,
    /// and the report of what the old one lost goes to the new one.
    pub fn take_over(&mut self, old: &Sink) {
        self.unreported += old.unreported;
        self.lost += old.lost;
        self.last_error = old.last_error.clone();
    }

    /// More than half the backlog is used: whoever feeds this sink should
    /// wait (worker output) rather than push more.
    pub fn congested(&self) -> bool {
        self.backlog.len() > BACKLOG / 2
    }

    /// The fd to watch for room, if the destination can be watched and
    /// ever has none (not a regular file).
    pub fn pollable(&self) -> Option<RawFd> {
        (self.kind != Kind::File).then(|| self.fd.as_raw_fd())
    }
}

fn count_lines(bytes: &[u8]) -> u64 {
    let ends = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    ends.max(u64::from(!bytes.is_empty()))
}

/// Opens `fd`'s pipe or terminal again, non-blocking, for the master alone.
fn reopen_nonblocking(fd: RawFd) -> io::Result<OwnedFd> {
    let path = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    // SAFETY: open with a valid path; the fd it returns is ours.
    let own = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if own < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(own) })
}

/// Whether `fd` can take a write now.
fn writable(fd: RawFd) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    unsafe { libc::poll(&mut pollfd, 1, 0) == 1 && pollfd.revents & libc::POLLOUT != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    #[test]
    fn a_full_pipe_keeps_lines_for_later_then_drops_and_counts_them() {
        let (read, write) = pipe();
        let mut sink = Sink::inherited(write.as_raw_fd()).unwrap();
        assert_eq!(sink.kind, Kind::Stream, "reopened non-blocking");
        let line = vec![b'x'; 1023];
        let line = [line.as_slice(), b"\n"].concat();
        let mut dropped = 0;
        for _ in 0..2000 {
            if sink.push(&line, 1) == Pushed::Dropped {
                dropped += 1;
            }
        }
        // 64 KiB in the pipe, the backlog's worth waiting, the rest dropped.
        assert!(dropped > 0 && dropped < 2000, "{dropped}");
        assert_eq!(sink.lost(), dropped);
        assert!(sink.congested());
        // A reader empties the pipe: the backlog goes out.
        let mut buf = vec![0u8; 1 << 20];
        let mut read_total = 0;
        for _ in 0..100 {
            if let Ok(n) = nix::unistd::read(&read, &mut buf) {
                read_total += n;
            }
            sink.flush();
            if sink.backlog.is_empty() {
                break;
            }
        }
        assert!(sink.backlog.is_empty());
        assert!(read_total >= 64 * 1024);
    }

    #[test]
    fn a_gone_reader_or_a_full_disk_loses_lines_without_an_error() {
        let (read, write) = pipe();
        drop(read);
        // No reader: reopening fails, and writes fail with EPIPE (ignored
        // SIGPIPE, as in every Rust program).
        let mut sink = Sink::inherited(write.as_raw_fd()).unwrap();
        assert_eq!(sink.push(b"one\n", 1), Pushed::Dropped);
        assert_eq!(sink.push(b"two\nthree\n", 2), Pushed::Dropped);
        assert_eq!(sink.unreported().0, 3);
        assert!(sink.unreported().1.is_some());
        let mut full = Sink::file(Path::new("/dev/full")).unwrap();
        assert_eq!(full.push(b"line\n", 1), Pushed::Dropped);
        assert_eq!(full.lost(), 1);
        full.reported(1);
        assert_eq!(full.unreported(), (0, None));
    }
}
