//! The master's logger: slog to stderr (or `--log-file`), human sentences by
//! default or one JSON object per line (`--log-format json`) whose `msg` is
//! the record's stable name and whose keys are its fields (both renderings
//! are in `render.rs`). It also writes the workers' output lines under
//! `--log-prefix`, as the `LineSink` worker output is handed to.
//!
//! Drains are synchronous: no slog-async thread in a forking master.

pub mod render;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use slog::{Drain, Logger, o};

use crate::config::LogFormat;
use crate::output::{LineSink, Stream};
use crate::supervisor::record::Record;
use crate::vocab::{Pid, SlotId};

pub struct Log {
    logger: Logger,
    format: LogFormat,
    file: Option<Arc<LogFile>>,
}

/// `--log-file`, reopened on `SIGUSR1` (after logrotate moved it).
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }
}

/// A handle on the log file that slog's drains write through.
#[derive(Clone)]
struct FileWriter(Arc<LogFile>);

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush()
    }
}

fn root<W: Write + Send + 'static>(format: LogFormat, level: slog::Level, out: W) -> Logger {
    match format {
        LogFormat::Human => {
            let decorator = slog_term::PlainSyncDecorator::new(out);
            let drain = slog_term::FullFormat::new(decorator).build();
            Logger::root(slog::LevelFilter::new(drain, level).fuse(), o!())
        }
        LogFormat::Json => {
            let drain = slog_json::Json::new(out)
                .add_default_keys()
                .set_flush(true)
                .build();
            Logger::root(
                slog::LevelFilter::new(Mutex::new(drain), level).fuse(),
                o!(),
            )
        }
    }
}

impl Log {
    /// Logs to `file` if given (created, appended to), else to stderr.
    pub fn new(format: LogFormat, level: slog::Level, file: Option<&Path>) -> io::Result<Log> {
        let (logger, file) = match file {
            None => (root(format, level, io::stderr()), None),
            Some(path) => {
                let file = Arc::new(LogFile {
                    path: path.to_path_buf(),
                    file: Mutex::new(LogFile::open(path)?),
                });
                (
                    root(format, level, FileWriter(Arc::clone(&file))),
                    Some(file),
                )
            }
        };
        Ok(Log {
            logger,
            format,
            file,
        })
    }

    /// Opens the log file anew at its path, which it returns; `Ok(None)`
    /// without one.
    pub fn reopen(&self) -> io::Result<Option<&Path>> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let fresh = LogFile::open(&file.path)?;
        *file.file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(Some(&file.path))
    }

    pub fn emit(&self, record: &Record) {
        // slog's macros take the level as a constant; pick the macro.
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
            LogFormat::Human => at_level!("{}", render::sentence(record)),
            LogFormat::Json => at_level!("{}", record.name(); record),
        }
    }
}

impl LineSink for Log {
    /// Lines a worker wrote: `[slot] line` on the same stream (or in the
    /// log file), all in one write, or one `worker output` JSON record each.
    fn lines(&self, slot: SlotId, pid: Pid, stream: Stream, lines: &[&[u8]]) {
        match self.format {
            LogFormat::Json => {
                for line in lines {
                    self.emit(&Record::WorkerOutput {
                        slot,
                        pid,
                        stream: stream.name(),
                        line: String::from_utf8_lossy(line).into_owned(),
                    });
                }
            }
            LogFormat::Human => {
                let prefix = format!("[{slot}] ");
                let mut out =
                    Vec::with_capacity(lines.iter().map(|l| l.len() + prefix.len() + 1).sum());
                for line in lines {
                    out.extend_from_slice(prefix.as_bytes());
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
                // An error (a closed stdout) is not the workers' problem.
                let _ = match (&self.file, stream) {
                    (Some(file), _) => FileWriter(Arc::clone(file)).write_all(&out),
                    (None, Stream::Stdout) => io::stdout().lock().write_all(&out),
                    (None, Stream::Stderr) => io::stderr().lock().write_all(&out),
                };
            }
        }
    }
}
