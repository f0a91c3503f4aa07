//! Giving back what the master used and will not use again soon: the heap
//! that parsing, binding or a reload freed (`malloc_trim`), and the
//! page-table entries of code and read-only data they ran (`MADV_DONTNEED`
//! on clean file mappings). The pages stay in the page cache, shared with
//! every other process using them; whatever the loop touches comes back on
//! its next use, as a minor fault.
//!
//! A fault on a file page maps the cached pages around it too (the
//! kernel's fault-around, 64 KiB), so a reload, a `status` or a scrape
//! that runs a little code in many places brings back most of the binary's
//! text: 2 MB resident for a master that, asleep, needs a few hundred KiB.
//! So the loop trims again whenever it is about to sleep for long after
//! it woke up ([`Trimmer`]), not only after start-up; at most once a
//! second, so that a worker logging a line at a time costs a trim a
//! second, not one a line.
//!
//! A daemon that forks into the background (nginx's master) starts its
//! loop with the same small resident set, because `fork` does not copy the
//! page-table entries of clean file mappings. rcluster stays in the
//! foreground (systemd's `Type=notify`, PID 1 in a container), so it drops
//! them itself. Only mappings that are file-backed, not writable and hold
//! no anonymous page, resident or in swap, are touched: for those,
//! dropping an entry loses nothing (a writable or copied-on-write page
//! would lose its contents).

use std::io;
use std::time::{Duration, Instant};

/// The least time between two trims.
const GAP: Duration = Duration::from_secs(1);

/// When the loop trims: before a quiet sleep, if it woke since the last
/// trim, and not within a second of it (then at its end: a deadline).
#[derive(Debug, Default)]
pub struct Trimmer {
    woke: bool,
    last: Option<Instant>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to give back, or not now (work is under way).
    No,
    Now,
    /// Trim at this deadline, if still quiet then.
    At(Instant),
}

impl Trimmer {
    /// The loop woke up: whatever it ran is resident again.
    pub fn woke(&mut self) {
        self.woke = true;
    }

    /// Before a sleep: `quiet` when nothing is under way and the sleep is
    /// long. After `Now`, the caller trims.
    pub fn decide(&mut self, quiet: bool, now: Instant) -> Decision {
        if !self.woke || !quiet {
            return Decision::No;
        }
        match self.last.map(|last| last + GAP) {
            Some(next) if now < next => Decision::At(next),
            _ => {
                self.woke = false;
                self.last = Some(now);
                Decision::Now
            }
        }
    }
}

/// Trims the heap and drops the page-table entries of clean file mappings.
/// Returns how many bytes of mappings were dropped.
pub fn resident_set() -> io::Result<usize> {
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut dropped = 0;
    for mapping in clean_file_mappings(&smaps) {
        // SAFETY: the range is a whole mapping with no anonymous page,
        // backed by a file and not writable: MADV_DONTNEED only unmaps its
        // pages, which fault back in from the page cache unchanged.
        let done = unsafe {
            libc::madvise(
                mapping.start as *mut libc::c_void,
                mapping.end - mapping.start,
                libc::MADV_DONTNEED,
            )
        };
        if done == 0 {
            dropped += mapping.end - mapping.start;
        }
    }
    Ok(dropped)
}

#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
}

/// The mappings of `/proc/self/smaps` that are backed by a file, not
/// writable, and hold no anonymous (private, modified) page, resident or
/// swapped out.
fn clean_file_mappings(smaps: &str) -> Vec<Mapping> {
    let mut found = Vec::new();
    let mut current: Option<Mapping> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = fields.next().unwrap_or_default();
            // offset, device, inode, then the path.
            let path = fields.nth(3).unwrap_or_default();
            let clean = !perms.contains('w') && path.starts_with('/');
            current = clean.then_some(Mapping { start, end });
            continue;
        }
        // A private page copied once (relocated data made read-only by
        // RELRO: the GOT, vtables) shows as `Anonymous` while resident and
        // as `Swap` once swapped out. Dropping the entry of a swapped one
        // would lose it: the next access would read the file's unrelocated
        // bytes.
        if (first == "Anonymous:" || first == "Swap:") && fields.next() != Some("0") {
            current = None;
        }
        // The last field of each entry: the mapping is complete.
        if first == "VmFlags:"
            && let Some(mapping) = current.take()
        {
            found.push(mapping);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_sleep_after_a_wakeup_trims_at_most_once_a_gap() {
        let start = Instant::now();
        let mut trimmer = Trimmer::default();
        trimmer.woke();
        assert_eq!(trimmer.decide(false, start), Decision::No, "work under way");
        assert_eq!(trimmer.decide(true, start), Decision::Now);
        assert_eq!(trimmer.decide(true, start), Decision::No, "nothing since");
        let soon = start + GAP / 2;
        trimmer.woke();
        assert_eq!(trimmer.decide(true, soon), Decision::At(start + GAP));
        assert_eq!(trimmer.decide(true, start + GAP), Decision::Now);
        assert_eq!(trimmer.decide(true, start + GAP * 3), Decision::No);
    }

    #[test]
    /// The second libc mapping is its relocated, read-only data, swapped
    /// out: `Anonymous: 0`, `Swap: 8`. Chosen, its pages were thrown away
    /// (#35).
    fn only_clean_file_mappings_are_chosen() {
        let smaps = "\
55d0-55e0 r-xp 00001000 fe:00 12 /usr/bin/rcluster
Rss:                  64 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
55e0-55f0 r--p 00002000 fe:00 12 /usr/bin/rcluster
Anonymous:             8 kB
VmFlags: rd mr mw me ac
55f0-5600 rw-p 00003000 fe:00 12 /usr/bin/rcluster
Anonymous:             0 kB
VmFlags: rd wr mr mw me ac
5600-5610 rw-p 00000000 00:00 0 [heap]
Anonymous:             4 kB
VmFlags: rd wr mr mw me ac
7f00-7f10 r--p 00000000 fe:00 34 /usr/lib/libc.so.6
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me
7f10-7f20 r--p 00010000 fe:00 34 /usr/lib/libc.so.6
Rss:                   0 kB
Anonymous:             0 kB
Swap:                  8 kB
VmFlags: rd mr mw me ac
";
        assert_eq!(
            clean_file_mappings(smaps),
            [
                Mapping {
                    start: 0x55d0,
                    end: 0x55e0
                },
                Mapping {
                    start: 0x7f00,
                    end: 0x7f10
                }
            ]
        );
    }
}
