//! Bad input: one line naming the input and the fix, the documented exit
//! code, and no process left behind (nothing is forked before all input is
//! checked).

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use crate::support::{TempDir, example, path_str, rcluster};

fn refused(args: &[&str], code: i32, says: &str) {
    let (got, _, stderr) = rcluster(args);
    assert_eq!(got, code, "rcluster {args:?}: {stderr}");
    assert!(stderr.starts_with("rcluster: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(says),
        "rcluster {args:?} should say {says:?}: {stderr}"
    );
}

#[test]
fn usage_errors_exit_64_with_the_valid_forms() {
    let w = example("test_worker");
    refused(
        &["--frobnicate", "--", &w],
        64,
        "unexpected argument '--frobnicate'",
    );
    refused(
        &["--workers", "0", "--", &w],
        64,
        "expected auto or a number from 1 to",
    );
    refused(
        &["--workers", "many", "--", &w],
        64,
        "expected auto or a number",
    );
    refused(
        &["--stop-timeout", "soon", "--", &w],
        64,
        "500ms, 30s or 2m",
    );
    refused(
        &["--listen", "localhost:80", "--", &w],
        64,
        "127.0.0.1:8080, :8080, [::1]:8080",
    );
    refused(
        &["--listen", "999.1.1.1:80", "--", &w],
        64,
        "unix:/path/app.sock",
    );
    refused(&["--workers", "2"], 64, "no command given");
    refused(&["--stop-signal", "SIGFOO", "--", &w], 64, "TERM, QUIT");
}

#[test]
fn an_address_in_use_exits_71_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let w = example("test_worker");
    refused(
        &["--listen", &addr, "--", &w],
        71,
        &format!("cannot listen on {addr}: address already in use"),
    );
}

#[test]
fn a_port_it_may_not_bind_exits_71_saying_why() {
    let unprivileged_start: u32 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    if !root || unprivileged_start <= 80 || !std::path::Path::new("/usr/sbin/runuser").exists() {
        eprintln!("skipped: needs root, runuser, and port 80 to be privileged");
        return;
    }
    let bin = crate::support::rcluster_bin();
    let bin = path_str(&bin);
    let args = [
        "-u",
        "nobody",
        "--",
        bin,
        "--listen",
        "127.0.0.1:80",
        "--",
        "/bin/true",
    ];
    let (code, _, stderr) = crate::support::run("/usr/sbin/runuser", &args);
    assert_eq!(code, 71, "{stderr}");
    assert!(
        stderr.contains("cannot listen on 127.0.0.1:80: permission denied"),
        "{stderr}"
    );
}

#[test]
fn a_missing_command_exits_127_and_a_non_executable_one_126() {
    refused(
        &["--", "./does-not-exist"],
        127,
        "command not found: ./does-not-exist",
    );
    refused(
        &["--", "no-such-command-on-path"],
        127,
        "command not found: no-such-command-on-path",
    );
    let dir = TempDir::new("exec");
    let script = dir.path("server.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(&["--", path_str(&script)], 126, "chmod +x");
    refused(&["--", path_str(&dir.0)], 126, "is a directory");
}

#[test]
fn an_unwritable_pid_file_exits_73() {
    let w = example("test_worker");
    refused(
        &["--pid-file", "/nonexistent-dir/x.pid", "--", &w],
        73,
        "cannot write the pid file /nonexistent-dir/x.pid",
    );
}

#[test]
fn help_and_version_exit_zero() {
    let (code, _, _) = rcluster(&["--help"]);
    assert_eq!(code, 0);
    let (code, _, _) = rcluster(&["--version"]);
    assert_eq!(code, 0);
}
