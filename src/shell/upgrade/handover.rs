//! The hand-over: everything a new image of the master needs to go on
//! where the old one stopped, written once into a sealed memfd.
//!
//! Descriptors are kept by number: the old image clears their
//! close-on-exec flag just before `execve`, the new one sets it again as
//! it adopts them. The format is versioned; a reader that does not know
//! the version refuses it in one line, and since the old image first runs
//! the new binary on a copy of the hand-over (`--upgrade-check`), a
//! refusal only ever happens before anything is handed over.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::shell::output::PipeFd;
use crate::shell::releases::ReleasesSnapshot;
use crate::sockets::balance::GroupFd;
use crate::supervisor::snapshot::Snapshot;
use crate::vocab::SlotId;

/// The version of this format. A change that an older reader would
/// misread takes a new number.
pub const FORMAT: u32 = 1;

/// Format 1 with `balance` (`--balance reuseport`): a reader of format 1
/// alone would drop the groups and leave the sockets unsteered, so it must
/// refuse. Written only when there are groups; everything else is
/// format 1, which every upgrade-capable image reads.
pub const FORMAT_BALANCE: u32 = 2;

/// The argument that runs a new binary as a check of the hand-over on
/// its standard input: it reads it, and the command line after it, and
/// says whether it can go on from there. A binary that predates live
/// upgrades rejects it as an unknown option.
pub const CHECK_ARG: &str = "--upgrade-check";

/// The argument that makes a new image go on from the hand-over in this
/// descriptor: `--upgrade-resume=FD`, or `--upgrade-resume=FD,OLD,NEW`
/// with the old image's binary in `OLD`, to go back to if the new image
/// cannot go on (`fallback.rs`), and the new one's, exec'd, in `NEW` (to
/// close).
pub const RESUME_ARG: &str = "--upgrade-resume=";

/// After `RESUME_ARG`, when the old image runs again because the new one
/// could not go on: `--upgrade-failed=CAUSE`.
pub const FAILED_ARG: &str = "--upgrade-failed=";

/// The first line a check prints when it can go on from the hand-over.
pub const CHECK_OK: &str = "rcluster upgrade check: ok";

/// What a check that can go on from the hand-over prints.
pub fn check_answer() -> String {
    format!("{CHECK_OK}\nversion {}\n", crate::vocab::version())
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Handover {
    pub format: u32,
    /// The version of the image that wrote it.
    pub from_version: String,
    /// The path the binary is read from at each upgrade, as the master
    /// was first started (a symlink stays a symlink).
    pub exe: PathBuf,
    /// The master's command line after the program name, and that name.
    pub argv0: std::ffi::OsString,
    pub args: Vec<std::ffi::OsString>,
    /// Upgrades this master went through before this one.
    pub upgrades: u32,
    /// The number of this attempt (`rcluster upgrade --wait` watches for
    /// it); absent from hand-overs written before there was a way back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// Set when the old image runs again from its own hand-over: why the
    /// new one could not go on. Never written.
    #[serde(skip)]
    pub failed: Option<String>,
    /// When the upgrade was asked for, on the system's monotonic clock (the
    /// same in every image), for the time it took.
    pub asked_at_ns: u64,
    /// The master's first start, this long before the hand-over.
    pub started_ago_us: u64,
    /// Then: roll the workers once the new image runs.
    pub reload_after: bool,
    pub supervisor: Snapshot,
    pub releases: Option<ReleasesSnapshot>,
    pub listeners: Vec<ListenerFd>,
    pub notify: NotifyFd,
    pub control: Option<ControlFd>,
    pub metrics: Option<MetricsFd>,
    pub pipes: Vec<PipeFd>,
    /// The last lines on stderr of each slot's last exited worker.
    pub last_words: Vec<(SlotId, i32, Vec<String>)>,
    pub notify_dropped: u64,
    pub log_lines_lost: u64,
    /// Children the master had before its first worker.
    pub inherited: Vec<i32>,
    /// The `/metrics` counters, by name and labels.
    pub counters: serde_json::Value,
    /// The master's end of the undertaker's pipe, and its pid; absent from
    /// hand-overs written before there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undertaker: Option<(RawFd, i32)>,
    /// `--balance reuseport`: each group's sockets. Empty otherwise, and
    /// in hand-overs written before it could upgrade.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub balance: Vec<GroupFd>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerFd {
    pub fd: RawFd,
    pub name: String,
    pub local: String,
    /// The socket file this master created, removed when it exits.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifyFd {
    pub fd: RawFd,
    pub address: String,
    /// Its own directory, removed when the master exits.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlFd {
    pub fd: RawFd,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsFd {
    pub fd: RawFd,
    pub addr: String,
    pub file: Option<PathBuf>,
}

impl Handover {
    /// Every descriptor it hands over.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.listeners.iter().map(|l| l.fd).collect();
        fds.push(self.notify.fd);
        fds.extend(self.control.iter().map(|c| c.fd));
        fds.extend(self.metrics.iter().map(|m| m.fd));
        fds.extend(self.pipes.iter().map(|p| p.fd));
        fds.extend(self.undertaker.iter().map(|u| u.0));
        fds.extend(
            self.balance
                .iter()
                .flat_map(|g| g.sockets.iter().map(|q| q.fd)),
        );
        fds
    }

    /// Writes it into a new memfd, sealed against any change, at offset 0.
    pub fn seal(&self) -> std::io::Result<OwnedFd> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let fd = nix::sys::memfd::memfd_create(
            c"rcluster-handover",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let mut file = std::fs::File::from(fd);
        file.write_all(&json)?;
        let seals =
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        nix::fcntl::fcntl(
            file.as_fd(),
            nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::from_bits_truncate(seals)),
        )?;
        file.seek(SeekFrom::Start(0))?;
        Ok(OwnedFd::from(file))
    }

    /// Reads a hand-over from `fd` (from its start), and closes `fd`.
    /// `Err`: one line that says why it cannot be used.
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else owns.
    pub unsafe fn read(fd: RawFd) -> Result<Handover, String> {
        // SAFETY: the caller gives us the descriptor.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = file.seek(SeekFrom::Start(0));
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the hand-over (fd {fd}): {e}"))?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Handover, String> {
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let version: Version = serde_json::from_slice(bytes)
            .map_err(|e| format!("the hand-over is not one (no format number): {e}"))?;
        if version.format != FORMAT && version.format != FORMAT_BALANCE {
            return Err(format!(
                "hand-over format {} is unknown to rcluster {} (it reads formats \
                 {FORMAT} and {FORMAT_BALANCE})",
                version.format,
                crate::vocab::version()
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("the hand-over is malformed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_this_image_does_not_know_is_refused_in_one_line() {
        let error = Handover::parse(br#"{"format": 3, "anything": "else"}"#).unwrap_err();
        assert_eq!(
            error,
            format!(
                "hand-over format 3 is unknown to rcluster {} (it reads formats 1 and 2)",
                crate::vocab::version()
            )
        );
        assert!(!error.contains('\n'));
        let error = Handover::parse(b"not json").unwrap_err();
        assert!(error.starts_with("the hand-over is not one"), "{error}");
        let error = Handover::parse(br#"{"format": 1}"#).unwrap_err();
        assert!(error.starts_with("the hand-over is malformed"), "{error}");
    }

    /// A hand-over of format 1 as a master wrote it (2 workers, a control
    /// socket, `--metrics`): every later image must read it, and write
    /// format 1 exactly so. A change here needs a new format number (and
    /// a reader for the old one).
    #[test]
    fn format_1_is_read_and_written_as_it_was() {
        let written = include_bytes!("../../../tests/fixtures/handover-format-1.json");
        let handover = Handover::parse(written).expect("format 1 is read");
        assert_eq!(handover.supervisor.workers.len(), 2);
        let again = serde_json::to_vec(&handover).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(written).trim_end()
        );
    }

    /// Format 2 is format 1 with the reuseport groups, and reads back as
    /// written.
    #[test]
    fn format_2_carries_the_reuseport_groups() {
        let written = include_bytes!("../../../tests/fixtures/handover-format-1.json");
        let mut handover = Handover::parse(written).unwrap();
        handover.format = FORMAT_BALANCE;
        handover.balance = vec![GroupFd {
            position: 0,
            addr: "127.0.0.1:8080".parse().unwrap(),
            backlog: 1024,
            sockets: vec![crate::sockets::balance::QueueFd {
                slot: 1,
                lane: 1,
                index: 3,
                fd: 17,
            }],
        }];
        let again = Handover::parse(&serde_json::to_vec(&handover).unwrap()).unwrap();
        assert_eq!(again.balance[0].sockets[0].index, 3);
        assert_eq!(again.balance[0].addr.port(), 8080);
        assert!(again.fds().contains(&17), "handed over by number");
    }
}
