//! The shim, for servers written without rcluster in mind: a small C
//! library (`shim.c`, built by `build.rs` and embedded here) that each
//! worker loads with `LD_PRELOAD`. With `--adopt-bind`, the server's own
//! `bind()` to a `--listen` port gets the inherited socket; with either
//! `--adopt-bind` or `--http-drain`, the shim drains for a server that
//! cannot (see `shim.c`).
//!
//! The master keeps the library in a sealed memfd that each worker inherits
//! and loads as `/proc/self/fd/N`: nothing to install, nothing on disk, and
//! a worker (of any user) can read it but not change it for the next.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::error::Error;
use crate::launch::spawn::env::Value;

const LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rcluster-shim.so"));

/// What the shim does in each worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `--http-drain`: the drain only.
    Drain,
    /// `--adopt-bind`: the server's own binds get the listeners, and the
    /// drain.
    AdoptAndDrain,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Drain => "--http-drain",
            Mode::AdoptAndDrain => "--adopt-bind",
        }
    }
}

/// The library, ready to hand to workers.
#[derive(Debug)]
pub struct Shim {
    file: OwnedFd,
    mode: Mode,
}

impl Shim {
    /// The library in a sealed memfd (close-on-exec in the master; each
    /// worker gets its own copy of the fd).
    pub fn new(mode: Mode) -> io::Result<Shim> {
        let file = memfd_create(
            c"rcluster-shim",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        std::fs::File::from(file.try_clone()?).write_all(LIBRARY)?;
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        Ok(Shim { file, mode })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The variables that make a worker load the shim, which it inherits at
    /// `fd` (its number in the worker), ahead of any `LD_PRELOAD` of the
    /// master's own.
    pub fn vars(&self, fd: RawFd, stop_signal: i32) -> Vec<(String, Value)> {
        let mut preload = format!("/proc/self/fd/{fd}");
        if let Some(theirs) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
            preload.push(':');
            preload.push_str(&theirs.to_string_lossy());
        }
        let spec = match self.mode {
            Mode::Drain => format!("drain stop={stop_signal}"),
            Mode::AdoptAndDrain => format!("adopt drain stop={stop_signal}"),
        };
        vec![
            ("LD_PRELOAD".to_string(), Value::Text(preload)),
            ("RCLUSTER_SHIM".to_string(), Value::Text(spec)),
        ]
    }

    /// Refuses a command that cannot load the shim: a statically linked
    /// program (Go's usually are), or a script whose interpreter is one.
    pub fn check(&self, program: &Path, display: &str) -> Result<(), Error> {
        let Some(head) = read_head(program) else {
            return Ok(());
        };
        let (program, what) = match head.strip_prefix(b"#!") {
            Some(line) => match interpreter(line) {
                Some(interpreter) => {
                    let what = format!("its interpreter, {},", interpreter.display());
                    (interpreter, what)
                }
                None => return Ok(()),
            },
            None => (program.to_path_buf(), "it".to_string()),
        };
        let linked_statically = read_head(&program).is_some_and(|head| is_static(&head));
        if linked_statically {
            return Err(Error::Usage(format!(
                "{} cannot work with {display}: {what} is statically linked (as Go programs \
                 usually are), so its bind() does not go through the C library where rcluster \
                 takes it over; have it serve the socket rcluster passes at fd 3 (see docs/servers.md, \
                 \"Your server under rcluster\")",
                self.mode.flag(),
            )));
        }
        Ok(())
    }
}

/// The first 64 KiB of `path`: enough for an ELF's program headers or a
/// `#!` line. `None` if it cannot be read (exec will say why).
fn read_head(path: &Path) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(64 * 1024);
    std::fs::File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}

/// The interpreter a `#!` line names.
fn interpreter(line: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let line = line.split(|&b| b == b'\n').next()?;
    let word = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(word)))
}

/// An ELF program with no `PT_INTERP`: nothing loads `LD_PRELOAD` for it.
/// Anything else (a script, an unreadable header) is not called static.
fn is_static(head: &[u8]) -> bool {
    use object::elf::{FileHeader32, FileHeader64, PT_INTERP};
    use object::read::elf::{FileHeader, ProgramHeader};
    fn has_interp<H: FileHeader>(head: &[u8]) -> Option<bool> {
        let header = H::parse(head).ok()?;
        let endian = header.endian().ok()?;
        let headers = header.program_headers(endian, head).ok()?;
        Some(headers.iter().any(|h| h.p_type(endian) == PT_INTERP))
    }
    if !head.starts_with(b"\x7fELF") {
        return false;
    }
    let interp = match head.get(4) {
        Some(1) => has_interp::<FileHeader32<object::Endianness>>(head),
        Some(2) => has_interp::<FileHeader64<object::Endianness>>(head),
        _ => None,
    };
    interp == Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_programs_are_not_static_and_scripts_are_looked_through() {
        let shim = Shim::new(Mode::AdoptAndDrain).unwrap();
        assert!(!is_static(&read_head(Path::new("/bin/sh")).unwrap()));
        assert!(shim.check(Path::new("/bin/sh"), "sh").is_ok());
        assert!(!is_static(b"#!/bin/sh\n"));
        assert_eq!(
            interpreter(b"/usr/bin/env node\n"),
            Some(PathBuf::from("/usr/bin/env"))
        );
    }

    #[test]
    fn the_library_is_sealed() {
        let shim = Shim::new(Mode::Drain).unwrap();
        let path = format!("/proc/self/fd/{}", shim.fd());
        assert_eq!(std::fs::read(&path).unwrap(), LIBRARY);
        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(writer.write_all(b"x").is_err(), "sealed against writes");
        assert_eq!(
            shim.vars(5, libc::SIGTERM)[1],
            (
                "RCLUSTER_SHIM".to_string(),
                Value::Text("drain stop=15".into())
            )
        );
    }
}
