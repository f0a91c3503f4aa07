//! The `--pid-file`: one per master. A pid file that names a running
//! rcluster master is refused; it is written through a temporary file with
//! an unpredictable name, created exclusively and never through a symlink,
//! then renamed into place; and it is removed on exit only if it still
//! holds this master's pid (a newer master may have replaced it).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Whether `create` could write this pid file now (its directory
    /// exists and takes a new file), without touching the file itself: an
    /// upgrade asks before the point of no return.
    pub fn writable(&self) -> std::io::Result<()> {
        let tmp = temporary_beside(&self.path);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        std::fs::remove_file(&tmp)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn create(path: &Path) -> Result<PidFile, Error> {
        let pid = std::process::id();
        if let Some(other) = running_master(path)
            && other != pid
        {
            return Err(Error::PidFileInUse {
                path: path.to_path_buf(),
                pid: other,
            });
        }
        let error = |source| Error::PidFile {
            path: path.to_path_buf(),
            source,
        };
        let tmp = temporary_beside(path);
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            writeln!(file, "{pid}")?;
            file.sync_all()?;
            // rename replaces whatever is at `path`, a symlink included,
            // without following it.
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            error(e)
        })?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }
}

/// The pid in the file at `path`, if it is a running rcluster master: the
/// same program as this one.
fn running_master(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let theirs = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let ours = std::fs::read_link("/proc/self/exe").ok()?;
    (theirs == ours).then_some(pid)
}

/// `.NAME.<16 random hex digits>` in the pid file's directory: nobody can
/// guess it to plant a symlink there first.
fn temporary_beside(path: &Path) -> PathBuf {
    let mut random = [0u8; 8];
    // SAFETY: fills a local buffer.
    let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    if got != random.len() as isize {
        // Not guessable enough without entropy; still unique and exclusive.
        random = u64::from(std::process::id()).to_ne_bytes();
    }
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{:016x}", u64::from_ne_bytes(random)));
    path.with_file_name(name)
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours =
            std::fs::read_to_string(&self.path).is_ok_and(|s| s.trim() == self.pid.to_string());
        if ours && std::process::id() == self.pid {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temporary_name_is_hidden_beside_and_differs_each_time() {
        let a = temporary_beside(Path::new("/run/app/app.pid"));
        let b = temporary_beside(Path::new("/run/app/app.pid"));
        assert_eq!(a.parent(), Some(Path::new("/run/app")));
        assert!(
            a.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".app.pid.")
        );
        assert_ne!(a, b);
    }

    #[test]
    fn a_pid_file_naming_a_dead_process_or_another_program_is_not_in_use() {
        let dir = std::env::temp_dir().join(format!("rcluster-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.pid");
        // This process runs the same program as itself.
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(running_master(&path), Some(std::process::id()));
        std::fs::write(&path, "1\n").unwrap();
        assert_eq!(running_master(&path), None, "init is another program");
        std::fs::write(&path, "not a pid\n").unwrap();
        assert_eq!(running_master(&path), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
