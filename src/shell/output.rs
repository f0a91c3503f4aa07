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
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

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
    /// Lines pushed so far.
    pushed: u64,
    /// The last line that names an error, and when it came: kept apart
    /// from the lines, since a stack trace can push it out of them (Node's
    /// EADDRINUSE prints 22 lines after its error line).
    why: Option<(u64, String)>,
}

/// How many lines after its error line a crash's trace may run and the
/// line still count as the cause.
const WHY_REACH: u64 = 64;

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
        self.witness(&text);
        self.bytes += text.len();
        self.lines.push_back(text);
        while self.lines.len() > TAIL_LINES || self.bytes > TAIL_BYTES {
            let dropped = self.lines.pop_front().unwrap_or_default();
            self.bytes -= dropped.len();
        }
    }

    /// A line that goes by without being kept (one of a batch too long
    /// for the tail): only whether it says why.
    pub fn pass(&mut self, line: &[u8]) {
        self.witness(&String::from_utf8_lossy(line));
    }

    fn witness(&mut self, text: &str) {
        self.pushed += 1;
        if says_why(text) {
            self.why = Some((self.pushed, text.trim().to_string()));
        } else if let Some((at, why)) = &mut self.why
            && *at + 1 == self.pushed
            && why.starts_with("thread '")
            && why.ends_with(':')
            && !is_noise(&text)
        {
            // Rust 1.73+: `thread 'main' panicked at src/main.rs:2:5:`,
            // and the message on the next line.
            why.push(' ');
            why.push_str(text.trim());
        }
    }

    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    /// A tail that held `lines`, as an earlier image of the master wrote
    /// them down.
    pub fn of_lines(lines: &[String]) -> Tail {
        let mut tail = Tail::default();
        for line in lines {
            tail.push(line.as_bytes());
        }
        tail
    }

    #[cfg(test)]
    pub fn last(&self) -> Option<&str> {
        self.lines.back().map(String::as_str)
    }

    /// The line that says why the worker died: in the last stack trace,
    /// its error line (`Error: …`, Python's last `…Error: …`, Rust's panic
    /// message, Go's `panic:` or `fatal error:`), not what runtimes print
    /// after it (`Node.js v20.20.2`, frames, `note: run with
    /// RUST_BACKTRACE=1`); failing that, the last line that is not such
    /// noise, or the last line.
    pub fn cause(&self) -> Option<String> {
        if let Some((at, why)) = &self.why
            && self.pushed - at < WHY_REACH
        {
            return Some(why.clone());
        }
        let lines: Vec<&str> = self.lines().collect();
        lines
            .iter()
            .rev()
            .find(|l| !is_noise(l))
            .or(lines.last())
            .map(|l| l.trim().to_string())
    }
}

/// A line that names an error: what a runtime prints first about a crash.
fn says_why(line: &str) -> bool {
    let line = line.trim_start();
    if line.starts_with("panic: ")
        || line.starts_with("fatal error: ")
        || line.starts_with("Uncaught ")
        || line.contains("' panicked at ")
    {
        return true;
    }
    // `Error: …`, `TypeError: …`, `KeyError: 'X'`, `java.lang.IllegalStateException: …`,
    // `node:internal/…  Error [ERR_…]: …`: a word ending in Error or
    // Exception before the first colon, at the start of the line.
    let Some((head, _)) = line.split_once(':') else {
        return false;
    };
    let word = head.split([' ', '[']).next().unwrap_or_default();
    let word = word.rsplit('.').next().unwrap_or_default();
    !line.starts_with(' ')
        && (word.ends_with("Error") || word.ends_with("Exception"))
        && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What runtimes print around a crash that does not say why.
fn is_noise(line: &&str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty()
        || line.starts_with(char::is_whitespace)
        || trimmed.starts_with("Node.js v")
        || trimmed.starts_with("note: run with")
        || trimmed.starts_with("Traceback (most recent call last)")
        || trimmed.starts_with("goroutine ")
        || trimmed.starts_with("exit status ")
        || trimmed.chars().all(|c| c == '^' || c == '~')
}

pub use crate::vocab::Stream;

/// The read end of a worker's stdout or stderr pipe.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PipeFd {
    pub fd: RawFd,
    pub slot: SlotId,
    pub pid: i32,
    pub stream: Stream,
    pub prefixed: bool,
    /// A line begun and not yet ended.
    pub partial: Vec<u8>,
    /// Its last lines (stderr).
    pub tail: Option<Vec<String>>,
}

impl PipeFd {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.pid)
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
    /// The token of pipe `id`.
    pipe_token: fn(usize) -> Token,
    pipes: HashMap<usize, Pipe>,
    next: usize,
    /// Pipes that had more to read when their budget ran out.
    pending: BTreeSet<usize>,
    /// Tails of pipes that closed before their worker's exit was handled.
    closed_tails: HashMap<Pid, Tail>,
}

impl Output {
    pub fn new(pipe_token: fn(usize) -> Token) -> Output {
        Output {
            pipe_token,
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
            (self.pipe_token)(id),
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

    /// Every pipe, written down for a live upgrade (the descriptors stay
    /// open: they are handed over by number).
    pub fn handover(&self) -> Vec<PipeFd> {
        self.pipes
            .values()
            .map(|p| PipeFd {
                fd: p.fd.as_raw_fd(),
                slot: p.slot,
                pid: p.pid.as_raw(),
                stream: p.stream,
                prefixed: p.prefixed,
                partial: p.partial.clone(),
                tail: p
                    .tail
                    .as_ref()
                    .map(|t| t.lines().map(String::from).collect()),
            })
            .collect()
    }

    /// Watches a pipe an earlier image of the master handed over, as it
    /// was.
    pub fn resume(&mut self, registry: &Registry, pipe: &PipeFd, fd: OwnedFd) -> io::Result<()> {
        self.watch(
            registry,
            pipe.slot,
            pipe.pid(),
            pipe.stream,
            pipe.prefixed,
            fd,
        )?;
        let id = (self.next + (1 << 24) - 1) % (1 << 24);
        if let Some(watched) = self.pipes.get_mut(&id) {
            watched.partial.clone_from(&pipe.partial);
            watched.tail = pipe.tail.as_deref().map(Tail::of_lines);
        }
        Ok(())
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

    /// Whether pipe `id` is still watched.
    pub fn knows(&self, id: usize) -> bool {
        self.pipes.contains_key(&id)
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
                // Closing the fd (here, as `pipe` drops) takes it out of
                // the epoll set anyway: a failed deregister changes nothing.
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
            for line in &lines[..kept] {
                tail.pass(line);
            }
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
    fn cause(text: &str) -> Option<String> {
        let mut tail = super::Tail::default();
        for line in text.lines() {
            tail.push(line.as_bytes());
        }
        tail.cause()
    }

    #[test]
    fn the_cause_of_a_crash_is_its_error_line_not_what_follows() {
        let node = "/srv/app.js:3\nthrow new Error('DATABASE_URL is not set');\n^\n\n\
                    Error: DATABASE_URL is not set\n    at Object.<anonymous> (/srv/app.js:3:7)\n\
                    \x20   at node:internal/main/run_main_module:28:49\n\nNode.js v20.20.2";
        assert_eq!(
            cause(node).as_deref(),
            Some("Error: DATABASE_URL is not set")
        );
        let python = "Traceback (most recent call last):\n  File \"/srv/app.py\", line 3, in <module>\n\
                      \x20   url = os.environ[\"DATABASE_URL\"]\nKeyError: 'DATABASE_URL'";
        assert_eq!(cause(python).as_deref(), Some("KeyError: 'DATABASE_URL'"));
        let rust = "thread 'main' panicked at src/main.rs:2:5:\nDATABASE_URL is not set\n\
                    note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace";
        assert_eq!(
            cause(rust).as_deref(),
            Some("thread 'main' panicked at src/main.rs:2:5: DATABASE_URL is not set")
        );
        let go = "panic: DATABASE_URL is not set\n\ngoroutine 1 [running]:\nmain.main()\n\
                  \t/srv/main.go:9 +0x25\nexit status 2";
        assert_eq!(cause(go).as_deref(), Some("panic: DATABASE_URL is not set"));
        // Nothing that names an error: the last line that says something.
        assert_eq!(
            cause("starting\nno database, giving up\n\n").as_deref(),
            Some("no database, giving up")
        );
        assert_eq!(cause(""), None);
        // A trace longer than the tail keeps its error line.
        let mut long = String::from("Error: listen EADDRINUSE: address already in use :::3000\n");
        for i in 0..30 {
            long.push_str(&format!("    at frame{i} (node:net:1908:16)\n"));
        }
        long.push_str("}\n\nNode.js v20.20.2");
        assert_eq!(
            cause(&long).as_deref(),
            Some("Error: listen EADDRINUSE: address already in use :::3000")
        );
        // An error long before the crash is not its cause.
        let mut old = String::from("TypeError: handled earlier\n");
        for i in 0..70 {
            old.push_str(&format!("request {i}\n"));
        }
        assert_eq!(cause(&old).as_deref(), Some("request 69"));
    }

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
