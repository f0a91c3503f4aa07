//! Worker output through the master: each worker's stderr (by default) and,
//! with `--log-prefix`, its stdout are pipes the master reads in its event
//! loop and writes out line by line: as they are, or prefixed with the slot
//! (`[2] ...`) or as JSON records with `--log-prefix`. The master keeps the
//! last lines of each worker's stderr ([`Tail`]): its exit record carries
//! the last one, and `rcluster status` shows them.
//!
//! A worker that floods, or writes a line without end, must not stall the
//! master or the other workers: each pipe is read at most [`BUDGET`] bytes
//! per turn (the loop comes back at once for pipes with more), and a line is
//! cut every [`MAX_LINE`] bytes. Complete lines go to a [`LineSink`] (the
//! logger), which decides how they are written. While the logger's
//! destination is congested, the pipes are not read: a worker that writes
//! faster than its output can be written waits, and no line is lost.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::vocab::{Pid, SlotId};

/// Bytes read from one pipe before the others get their turn.
pub const BUDGET: usize = 64 * 1024;
/// A line longer than this is written in pieces of this size.
pub const MAX_LINE: usize = 16 * 1024;

/// The most a [`Tail`] keeps: this many lines, and this many bytes.
pub const TAIL_LINES: usize = 20;
pub const TAIL_BYTES: usize = 4096;

/// Where the complete lines a worker wrote go.
pub trait LineSink {
    /// `prefixed`: marked with the slot (`--log-prefix`), else as written.
    fn lines(&self, slot: SlotId, pid: Pid, stream: Stream, prefixed: bool, lines: &[&[u8]]);
}

/// The last lines a worker wrote to stderr, at most [`TAIL_LINES`] lines
/// and [`TAIL_BYTES`] bytes (a longer line keeps its first bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    pub fn push(&mut self, line: &[u8]) {
        let mut text = String::from_utf8_lossy(line).into_owned();
        if text.len() > TAIL_BYTES {
            let mut end = TAIL_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        self.bytes += text.len();
        self.lines.push_back(text);
        while self.lines.len() > TAIL_LINES || self.bytes > TAIL_BYTES {
            let dropped = self.lines.pop_front().unwrap_or_default();
            self.bytes -= dropped.len();
        }
    }

    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    pub fn last(&self) -> Option<&str> {
        self.lines.back().map(String::as_str)
    }
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
    prefixed: bool,
    partial: Vec<u8>,
    /// Kept for stderr only.
    tail: Option<Tail>,
}

/// The read ends of every worker's output pipes, keyed by token.
pub struct Output {
    base: usize,
    pipes: HashMap<usize, Pipe>,
    next: usize,
    /// Pipes that had more to read when their budget ran out.
    pending: BTreeSet<usize>,
    /// Tails of pipes that closed before their worker's exit was handled.
    closed_tails: HashMap<Pid, Tail>,
}

impl Output {
    pub fn new(base: usize) -> Output {
        Output {
            base,
            pipes: HashMap::new(),
            next: 0,
            pending: BTreeSet::new(),
            closed_tails: HashMap::new(),
        }
    }

    pub fn watch(
        &mut self,
        registry: &Registry,
        slot: SlotId,
        pid: Pid,
        stream: Stream,
        prefixed: bool,
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
                prefixed,
                partial: Vec::new(),
                tail: (stream == Stream::Stderr).then(Tail::default),
            },
        );
        Ok(())
    }

    /// The last lines `pid` wrote to stderr, after reading what its pipes
    /// still hold (a worker's last words come before its exit is
    /// handled). Reading goes on after: a process it started may still
    /// write to the same pipe.
    pub fn last_words(&mut self, pid: Pid, registry: &Registry, log: &dyn LineSink) -> Tail {
        let ids: Vec<usize> = self
            .pipes
            .iter()
            .filter(|(_, p)| p.pid == pid)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            // A pipe holds at most 64 KiB (unless resized): bounded.
            self.read_all(id, registry, log);
            if let Some(tail) = self.pipes.get_mut(&id).and_then(|p| p.tail.take()) {
                return tail;
            }
        }
        self.closed_tails.remove(&pid).unwrap_or_default()
    }

    /// The current tail of every worker that has one, by pid.
    pub fn tails(&self) -> impl Iterator<Item = (Pid, &Tail)> {
        self.pipes
            .values()
            .filter_map(|p| Some((p.pid, p.tail.as_ref()?)))
    }

    fn read_all(&mut self, id: usize, registry: &Registry, log: &dyn LineSink) {
        while self.pipes.contains_key(&id) {
            self.pending.remove(&id);
            self.read(id, registry, log);
            if !self.pending.contains(&id) {
                break;
            }
        }
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
                if let Some(tail) = &mut pipe.tail {
                    tail.push(&rest);
                }
                log.lines(pipe.slot, pipe.pid, pipe.stream, pipe.prefixed, &[&rest]);
            }
            if let Some(pipe) = self.pipes.remove(&id) {
                let _ = registry.deregister(&mut SourceFd(&pipe.fd.as_raw_fd()));
                if let Some(tail) = pipe.tail {
                    // Its worker's exit, if not handled yet, takes it.
                    self.closed_tails.insert(pipe.pid, tail);
                }
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
        if let Some(tail) = &mut pipe.tail {
            // Only the last few of a batch can stay in the tail.
            let kept = lines.len().saturating_sub(TAIL_LINES);
            for line in &lines[kept..] {
                tail.push(line);
            }
        }
        log.lines(pipe.slot, pipe.pid, pipe.stream, pipe.prefixed, &lines);
    }
    pipe.partial.drain(..cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_last_lines_within_its_bounds() {
        let mut tail = Tail::default();
        for n in 0..100 {
            tail.push(format!("line {n}").as_bytes());
        }
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(tail.last(), Some("line 99"));
        assert_eq!(lines[0], "line 80");
        // Long lines: the bytes bound holds, and one huge line keeps its start.
        for _ in 0..5 {
            tail.push(&[b'x'; 3000]);
        }
        assert!(tail.lines().map(str::len).sum::<usize>() <= TAIL_BYTES);
        tail.push(&[b'y'; 100_000]);
        assert_eq!(tail.lines().count(), 1);
        assert_eq!(tail.last().map(str::len), Some(TAIL_BYTES));
    }
}
