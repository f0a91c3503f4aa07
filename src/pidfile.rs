//! The `--pid-file`: written atomically, removed on exit only if it still
//! holds our pid (a newer master may have replaced it).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;

#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    pub fn create(path: &Path) -> Result<PidFile, Error> {
        let pid = std::process::id();
        let error = |source| Error::PidFile {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{pid}"));
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            writeln!(file, "{pid}")?;
            file.sync_all()?;
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

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours =
            std::fs::read_to_string(&self.path).is_ok_and(|s| s.trim() == self.pid.to_string());
        if ours && std::process::id() == self.pid {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
