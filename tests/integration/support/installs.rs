//! What the tests of real servers need, installed by the tests themselves
//! from the project's own files, once per run: Express from
//! `examples/express/package-lock.json` (`npm ci`), gunicorn and uvicorn
//! from `examples/python/requirements.txt` (a virtual environment under
//! `target/tmp`), and the Go example built with the Go toolchain, if there
//! is one (`./test.sh` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`, panicking with its output if it fails: an install that
/// fails is a failed test, not a skipped one.
fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn newer_or_same(a: &Path, b: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(a), modified(b)), (Some(a), Some(b)) if a >= b)
}

/// `examples/express` with its `node_modules` installed from the lock file.
pub fn express() -> &'static Path {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = root().join("examples/express");
        let installed = dir.join("node_modules/.package-lock.json");
        if !newer_or_same(&installed, &dir.join("package-lock.json")) {
            let mut npm = Command::new("npm");
            npm.args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir);
            run(npm, "npm ci in examples/express");
        }
        dir
    })
}

/// The `bin` directory of a virtual environment with the pinned Python
/// servers, made once and remade when the requirements change.
pub fn python_bin() -> &'static Path {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let requirements = root().join("examples/python/requirements.txt");
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("venv");
        let stamp = venv.join("requirements.installed");
        let wanted = std::fs::read(&requirements).expect("requirements.txt");
        if std::fs::read(&stamp).ok().as_deref() != Some(&wanted[..]) {
            let _ = std::fs::remove_dir_all(&venv);
            let mut python = Command::new("python3");
            python.args(["-m", "venv"]).arg(&venv);
            run(python, "python3 -m venv");
            let mut pip = Command::new(venv.join("bin/pip"));
            pip.args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements);
            run(pip, "pip install -r examples/python/requirements.txt");
            std::fs::write(&stamp, &wanted).expect("writing the venv's stamp");
        }
        venv.join("bin")
    })
}

/// `examples/go/server.go`, built statically (`CGO_ENABLED=0`, as Go
/// programs are usually deployed); `None`, said on stderr, without a Go
/// toolchain.
pub fn go_server() -> Option<&'static Path> {
    static DONE: OnceLock<Option<PathBuf>> = OnceLock::new();
    DONE.get_or_init(|| {
        if Command::new("go").arg("version").output().is_err() {
            crate::support::skip("no Go toolchain (Debian: apt install golang-go; ./test.sh does)");
            return None;
        }
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = tmp.join("go-server");
        let mut go = Command::new("go");
        go.arg("build")
            .arg("-o")
            .arg(&out)
            .arg(root().join("examples/go/server.go"))
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", tmp.join("go-cache"))
            .env("GOPATH", tmp.join("go-path"))
            .env("GOTOOLCHAIN", "local");
        run(go, "go build examples/go/server.go");
        Some(out)
    })
    .as_deref()
}

/// `PATH` with the virtual environment's `bin` (and, as for every worker,
/// the rcluster under test) first.
pub fn path_with_python() -> std::ffi::OsString {
    let mut path = std::ffi::OsString::from(python_bin());
    path.push(":");
    path.push(super::path_with_rcluster());
    path
}
