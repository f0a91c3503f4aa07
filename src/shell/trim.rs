//! Giving back what the master used and will not use again soon: the heap
//! that parsing, binding or a reload freed (`malloc_trim`), whenever the
//! loop is about to sleep for long after it woke up ([`Trimmer`]); at most
//! once a second, so that a worker logging a line at a time costs a trim a
//! second, not one a line.
//!
//! The master's code is kept instead ([`keep_code`]): every file mapping
//! (the binary, libc, the loader) is locked as it faults in
//! (`mlock2(MLOCK_ONFAULT)`), so what the loop has run once stays resident
//! however long it sleeps. Nothing is faulted in for it: RSS is what the
//! master touched, as before. A host may reclaim cold pages of idle
//! processes, mapped or not (the test machine runs DAMON with `pageout` for
//! pages unused 60 s; the kernel's own reclaim does the same under memory
//! pressure), and the first crash after an idle hour would otherwise read
//! the restart path's code from the disk, in uninterruptible sleep.
//! Locking counts against `RLIMIT_MEMLOCK` (8 MiB by default; the release
//! binary's mappings take about 5): refused, the master says so once and
//! goes on unlocked.
//!
//! The master's code is not given back. It used to be: `MADV_DONTNEED` on
//! clean file mappings dropped the page-table entries of the binary's text
//! (RSS asleep 0.6 MB instead of 3 MB). That saved no memory (the pages
//! stayed cached, charged to the same cgroup) and it made the master stall
//! (#35): unmapped pages are the first a cache eviction takes (`drop_caches`
//! and `fadvise` take no other), and the next turn of the loop then waited
//! in a major fault for the disk, in uninterruptible sleep (caught twice
//! in `filemap_fault` by a monitor of the suite's masters, turns of 1.6 s;
//! the 10.4 s and 19.9 s turns seen earlier had the same signature). A
//! process manager must not wait on the disk to handle a worker's exit.

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

/// `mlock2` flag: lock pages as they fault in, not all at once.
const MLOCK_ONFAULT: libc::c_uint = 1;

/// Locks every file mapping of the master as it faults in (see the module
/// doc). Returns the bytes of mappings locked; the first refusal as `Err`.
pub fn keep_code() -> std::io::Result<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut locked = 0;
    for (start, end) in file_mappings(&maps) {
        // SAFETY: a whole mapping of this process; locking changes no
        // content, only whether its pages may be reclaimed.
        let done =
            unsafe { libc::mlock2(start as *const libc::c_void, end - start, MLOCK_ONFAULT) };
        if done != 0 {
            return Err(std::io::Error::last_os_error());
        }
        locked += end - start;
    }
    Ok(locked)
}

/// The ranges of `/proc/self/maps` that a file backs.
fn file_mappings(maps: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            // perms, offset, device, inode, then the path.
            let path = fields.nth(4)?;
            path.starts_with('/').then_some(())?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

/// Gives the heap's free memory back to the kernel.
pub fn heap() {
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_file_mappings_are_locked() {
        let maps = "\
55d0-55e0 r-xp 00001000 fe:00 12                         /usr/bin/rcluster
5600-5610 rw-p 00000000 00:00 0                          [heap]
7f00-7f10 r--p 00000000 fe:00 34                         /usr/lib/libc.so.6
7f20-7f30 rw-p 00000000 00:00 0 
7ffd-7ffe rw-p 00000000 00:00 0                          [stack]
";
        assert_eq!(file_mappings(maps), [(0x55d0, 0x55e0), (0x7f00, 0x7f10)]);
    }

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
}
