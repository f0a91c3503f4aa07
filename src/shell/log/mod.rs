//! The master's logger: human sentences by default, or one JSON object per
//! line (`--log-format json`) whose `msg` is the record's stable name and
//! whose keys are its fields (both renderings are in `render.rs`), on
//! stderr or in `--log-file`. It also writes the workers' output lines
//! under `--log-prefix`, as the `LineSink` worker output is handed to.
//!
//! slog formats each record into memory (synchronously: no slog-async
//! thread in a forking master); the lines then go to a [`sink::Sink`],
//! which never blocks and never fails: a destination that cannot take a
//! line loses it, the loss is counted, and a record says so as soon as
//! lines get through again.

mod fields;
pub mod render;
pub mod sink;
mod words;

use std::cell::RefCell;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use slog::{Drain, Logger, o};

use crate::shell::output::{LineSink, Stream};
use crate::start::config::LogFormat;
use crate::supervisor::record::Record;
use crate::vocab::{Pid, SlotId};
use sink::{Pushed, Sink};

pub struct Log {
    logger: Logger,
    format: LogFormat,
    /// The master's name: on every line.
    name: String,
    /// What slog's drain wrote for the record being emitted.
    formatted: Arc<Mutex<Vec<u8>>>,
    sinks: RefCell<Sinks>,
}

/// Where lines go: the log (stderr or `--log-file`), and stdout for the
/// workers' stdout lines when there is no log file.
struct Sinks {
    log: Sink,
    stdout: Option<Sink>,
    /// `--log-file`, reopened on `SIGUSR1` (after logrotate moved it).
    path: Option<PathBuf>,
}

/// What slog's drains write into: memory, which never fails.
#[derive(Clone)]
struct Formatted(Arc<Mutex<Vec<u8>>>);

impl Write for Formatted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn root(format: LogFormat, level: slog::Level, out: Formatted, name: &str) -> Logger {
    match format {
        // The name leads the sentence (see `format`).
        LogFormat::Human => {
            let decorator = slog_term::PlainSyncDecorator::new(out);
            let drain = slog_term::FullFormat::new(decorator).build();
            Logger::root(slog::LevelFilter::new(drain, level).ignore_res(), o!())
        }
        LogFormat::Json => {
            let drain = slog_json::Json::new(out).add_default_keys().build();
            Logger::root(
                slog::LevelFilter::new(Mutex::new(drain), level).ignore_res(),
                o!("name" => name.to_string()),
            )
        }
    }
}

impl Log {
    /// Logs to `file` if given (created, appended to), else to stderr;
    /// every line names the master `name`.
    pub fn new(
        format: LogFormat,
        level: slog::Level,
        file: Option<&Path>,
        name: &str,
    ) -> io::Result<Log> {
        let sinks = match file {
            Some(path) => Sinks {
                log: Sink::file(path)?,
                stdout: None,
                path: Some(path.to_path_buf()),
            },
            None => Sinks {
                log: Sink::inherited(2)?,
                stdout: Sink::inherited(1).ok(),
                path: None,
            },
        };
        let formatted = Arc::new(Mutex::new(Vec::new()));
        Ok(Log {
            logger: root(format, level, Formatted(Arc::clone(&formatted)), name),
            format,
            name: name.to_string(),
            formatted,
            sinks: RefCell::new(sinks),
        })
    }

    /// Opens the log file anew at its path, which it returns; `Ok(None)`
    /// without one.
    pub fn reopen(&self) -> io::Result<Option<PathBuf>> {
        let mut sinks = self.sinks.borrow_mut();
        let Some(path) = sinks.path.clone() else {
            return Ok(None);
        };
        let mut fresh = Sink::file(&path)?;
        sinks.log.flush();
        fresh.take_over(&sinks.log);
        sinks.log = fresh;
        Ok(Some(path))
    }

    pub fn emit(&self, record: &Record) {
        if let Some(line) = self.format(record) {
            let mut sinks = self.sinks.borrow_mut();
            self.push(&mut sinks.log, &line);
        }
    }

    /// `record` as a line, or `None` if `--log-level` leaves it out.
    fn format(&self, record: &Record) -> Option<Vec<u8>> {
        // slog's macros take the level as a constant: pick the macro.
        macro_rules! at_level {
            ($($args:tt)*) => {
                match record.level() {
                    slog::Level::Critical => slog::crit!(self.logger, $($args)*),
                    slog::Level::Error => slog::error!(self.logger, $($args)*),
                    slog::Level::Warning => slog::warn!(self.logger, $($args)*),
                    slog::Level::Info => slog::info!(self.logger, $($args)*),
                    slog::Level::Debug => slog::debug!(self.logger, $($args)*),
                    slog::Level::Trace => slog::trace!(self.logger, $($args)*),
                }
            };
        }
        match self.format {
            LogFormat::Human => at_level!("{}: {}", self.name, render::sentence(record)),
            LogFormat::Json => at_level!("{}", record.name(); record),
        }
        let line = std::mem::take(&mut *lock(&self.formatted));
        (!line.is_empty()).then_some(line)
    }

    /// Writes `lines` to `sink`, first saying how many were lost before, if
    /// any were and it can take lines again.
    fn push(&self, sink: &mut Sink, lines: &[u8]) {
        let (lost, error) = sink.unreported();
        if lost > 0 {
            let report = Record::LogLost {
                lines: lost,
                error: error.unwrap_or_default().to_string(),
            };
            match self.format(&report) {
                // --log-level leaves it out: nobody is waiting for it.
                None => sink.reported(lost),
                Some(text) => {
                    if sink.push(&text, 0) == Pushed::Taken {
                        sink.reported(lost);
                    }
                }
            }
        }
        sink.push(lines, count_lines(lines));
    }

    /// Writes whatever the destinations can take now (the loop calls it
    /// when one of [`watched`](Self::watched) has room).
    pub fn flush(&self) {
        let mut sinks = self.sinks.borrow_mut();
        sinks.log.flush();
        if let Some(stdout) = &mut sinks.stdout {
            stdout.flush();
        }
    }

    /// The fds to watch for room (pipes, terminals, sockets).
    pub fn watched(&self) -> Vec<RawFd> {
        let sinks = self.sinks.borrow();
        [Some(&sinks.log), sinks.stdout.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(Sink::pollable)
            .collect()
    }

    /// Lines that could not be written, since the start.
    pub fn lines_lost(&self) -> u64 {
        let sinks = self.sinks.borrow();
        sinks.log.lost() + sinks.stdout.as_ref().map_or(0, Sink::lost)
    }

    /// A destination of worker output has a long backlog: stop reading the
    /// workers' pipes until it has room (they wait; nothing is lost).
    pub fn congested(&self) -> bool {
        let sinks = self.sinks.borrow();
        sinks.log.congested() || sinks.stdout.as_ref().is_some_and(Sink::congested)
    }
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

impl LineSink for Log {
    /// Lines a worker wrote: as written (its stderr by default), or with
    /// `--log-prefix` `[slot] line`, or one `worker output` JSON record
    /// each; on the same stream (or in the log file), all in one write.
    fn lines(&self, slot: SlotId, pid: Pid, stream: Stream, prefixed: bool, lines: &[&[u8]]) {
        match (self.format, prefixed) {
            (LogFormat::Json, true) => {
                for line in lines {
                    self.emit(&Record::WorkerOutput {
                        slot,
                        pid,
                        stream: stream.name(),
                        line: String::from_utf8_lossy(line).into_owned(),
                    });
                }
            }
            (LogFormat::Human, _) | (LogFormat::Json, false) => {
                let prefix = if prefixed {
                    format!("[{slot}] ")
                } else {
                    String::new()
                };
                let mut out =
                    Vec::with_capacity(lines.iter().map(|l| l.len() + prefix.len() + 1).sum());
                for line in lines {
                    out.extend_from_slice(prefix.as_bytes());
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
                let mut sinks = self.sinks.borrow_mut();
                let Sinks { log, stdout, .. } = &mut *sinks;
                let sink = match (stream, stdout) {
                    (Stream::Stdout, Some(stdout)) => stdout,
                    _ => log,
                };
                self.push(sink, &out);
            }
        }
    }
}
