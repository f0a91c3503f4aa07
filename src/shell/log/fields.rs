//! How one record's arm in `render.rs` writes its fields (the JSON keys)
//! and its sentence: typed setters over an [`Out`], which the JSON logger
//! and the human one implement.

use std::fmt;
use std::time::Duration;

use crate::vocab::{Exit, Pid, SlotId, signal_name};

/// One field's value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    U64(u64),
    I64(i64),
    Bool(bool),
    Str(&'a str),
}

/// Where a record is rendered to.
pub trait Out {
    fn field(&mut self, key: &'static str, value: Value<'_>);
    fn sentence(&mut self, text: fmt::Arguments<'_>);
}

/// The fields, as one record's arm writes them.
pub(super) struct Fields<'o>(pub(super) &'o mut dyn Out);

/// Keys the logger writes on every record; no record's field may reuse one
/// (a JSON object with a key twice is read differently by each parser).
pub const LOGGER_KEYS: [&str; 4] = ["msg", "level", "ts", "name"];

impl Fields<'_> {
    pub(super) fn put(&mut self, key: &'static str, value: Value<'_>) -> &mut Self {
        debug_assert!(!LOGGER_KEYS.contains(&key), "{key:?} is the logger's key");
        self.0.field(key, value);
        self
    }

    pub(super) fn u64(&mut self, key: &'static str, value: u64) -> &mut Self {
        self.put(key, Value::U64(value))
    }

    pub(super) fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        self.put(key, Value::Str(value))
    }

    pub(super) fn bool(&mut self, key: &'static str, value: bool) -> &mut Self {
        self.put(key, Value::Bool(value))
    }

    pub(super) fn slot(&mut self, slot: SlotId) -> &mut Self {
        self.u64("slot", slot as u64)
    }

    pub(super) fn pid(&mut self, pid: Pid) -> &mut Self {
        self.put("pid", Value::I64(pid.as_raw().into()))
    }

    pub(super) fn ms(&mut self, key: &'static str, d: Duration) -> &mut Self {
        self.u64(key, d.as_millis() as u64)
    }

    pub(super) fn exit(&mut self, exit: Exit) -> &mut Self {
        match exit {
            Exit::Code(code) => self.put("code", Value::I64(code.into())),
            Exit::Signaled {
                signal,
                core_dumped,
            } => self
                .str("signal", &signal_name(signal))
                .bool("core_dumped", core_dumped),
        }
    }

    pub(super) fn say(&mut self, text: fmt::Arguments<'_>) {
        self.0.sentence(text);
    }
}
