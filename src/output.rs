//! Worker output through the master (`--log-prefix`): each worker's stdout
//! and stderr are pipes the master reads in its event loop and writes out
//! line by line, prefixed with the slot (`[2] ...`) or as JSON records.
//!
//! A worker that floods, or writes a line without end, must not stall the
//! master or the other workers: each pipe is read at most [`BUDGET`] bytes
//! per turn (the loop comes back at once for pipes with more), and a line is
//! cut every [`MAX_LINE`] bytes. Complete lines go to a [`LineSink`] (the
//! logger), which decides how they are written. While the logger's
//! destination is congested, the pipes are not read: a worker that writes
//! faster than its output can be written waits, and no line is lost.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::vocab::{Pid, SlotId};

/// Bytes read from one pipe before the others get their turn.
pub const BUDGET: usize = 64 * 1024;
/// A line longer than this is written in pieces of this size.
pub const MAX_LINE: usize = 16 * 1024;

/// Where the complete lines a worker wrote go.
pub trait LineSink {
    fn lines(&self, slot: SlotId, pid: Pid, stream: Stream, lines: &[&[u8]]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

struct Pipe {
    fd: OwnedFd,
    slot: SlotId,
    pid: Pid,
    stream: Stream,
    partial: Vec<u8>,
}

/// The read ends of every worker's output pipes, keyed by token.
pub struct Output {
    base: usize,
    pipes: HashMap<usize, Pipe>,
    next: usize,
    /// Pipes that had more to read when their budget ran out.
    pending: BTreeSet<usize>,
}

impl Output {
    pub fn new(base: usize) -> Output {
        Output {
            base,
            pipes: HashMap::new(),
            next: 0,
            pending: BTreeSet::new(),
        }
    }

    pub fn watch(
        &mut self,
        registry: &Registry,
        slot: SlotId,
        pid: Pid,
        stream: Stream,
        fd: OwnedFd,
    ) -> io::Result<()> {
        let id = self.next;
        self.next = (self.next + 1) % (1 << 24);
        registry.register(
            &mut SourceFd(&fd.as_raw_fd()),
            Token(self.base + id),
            Interest::READABLE,
        )?;
        self.pipes.insert(
            id,
            Pipe {
                fd,
                slot,
                pid,
                stream,
                partial: Vec::new(),
            },
        );
        Ok(())
    }

    pub fn owns(&self, token: Token) -> Option<usize> {
        let id = token.0.checked_sub(self.base)?;
        self.pipes.contains_key(&id).then_some(id)
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Reads this pipe later: its output has nowhere to go yet.
    pub fn postpone(&mut self, id: usize) {
        self.pending.insert(id);
    }

    /// One turn for every pipe that still had output.
    pub fn service_pending(&mut self, registry: &Registry, log: &dyn LineSink) {
        for id in std::mem::take(&mut self.pending) {
            self.read(id, registry, log);
        }
    }

    /// Reads one budget from a pipe and writes out its complete lines.
    pub fn read(&mut self, id: usize, registry: &Registry, log: &dyn LineSink) {
        let Some(pipe) = self.pipes.get_mut(&id) else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        let mut read = 0;
        let mut closed = false;
        while read < BUDGET {
            match nix::unistd::read(&pipe.fd, &mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    read += n;
                    pipe.partial.extend_from_slice(&buf[..n]);
                    emit_lines(pipe, log);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            if !pipe.partial.is_empty() {
                let rest = std::mem::take(&mut pipe.partial);
                log.lines(pipe.slot, pipe.pid, pipe.stream, &[&rest]);
            }
            if let Some(pipe) = self.pipes.remove(&id) {
                let _ = registry.deregister(&mut SourceFd(&pipe.fd.as_raw_fd()));
            }
        } else if read >= BUDGET {
            self.pending.insert(id);
        }
    }
}

/// Writes out the complete lines read so far, all in one go, and pieces of
/// an overlong one.
fn emit_lines(pipe: &mut Pipe, log: &dyn LineSink) {
    let mut lines: Vec<&[u8]> = pipe.partial.split(|&b| b == b'\n').collect();
    let rest = lines.pop().unwrap_or_default().len();
    let mut cut = pipe.partial.len() - rest;
    let pieces = rest / MAX_LINE;
    lines.extend(pipe.partial[cut..].chunks(MAX_LINE).take(pieces));
    cut += pieces * MAX_LINE;
    if !lines.is_empty() {
        log.lines(pipe.slot, pipe.pid, pipe.stream, &lines);
    }
    pipe.partial.drain(..cut);
}
