//! The master's logger: slog to stderr, human sentences by default or one
//! JSON object per line (`--log-format json`) whose `msg` is the record's
//! stable name and whose keys are its fields.
//!
//! Drains are synchronous: no slog-async thread in a forking master.

use std::io;
use std::sync::Mutex;

use slog::{Drain, Logger, o};

use crate::config::LogFormat;
use crate::record::Record;

pub struct Log {
    logger: Logger,
    format: LogFormat,
}

impl Log {
    pub fn new(format: LogFormat, level: slog::Level) -> Log {
        let logger = match format {
            LogFormat::Human => {
                let decorator = slog_term::PlainSyncDecorator::new(io::stderr());
                let drain = slog_term::FullFormat::new(decorator).build();
                Logger::root(slog::LevelFilter::new(drain, level).fuse(), o!())
            }
            LogFormat::Json => {
                let drain = slog_json::Json::new(io::stderr())
                    .add_default_keys()
                    .set_flush(true)
                    .build();
                Logger::root(
                    slog::LevelFilter::new(Mutex::new(drain), level).fuse(),
                    o!(),
                )
            }
        };
        Log { logger, format }
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
            LogFormat::Human => at_level!("{}", record),
            LogFormat::Json => at_level!("{}", record.name(); record),
        }
    }
}
