//! Bad input: a usage error is clap's whole message (the argument, the
//! valid forms, its tips, the usage) and exit 64; anything else refused is
//! one line naming the input and the fix, with the documented exit code;
//! and no process is left behind (nothing is forked before all input is
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

/// A usage error: exit 64 and clap's message, all of it.
fn usage(args: &[&str], says: &[&str]) {
    let (got, out, stderr) = rcluster(args);
    assert_eq!(got, 64, "rcluster {args:?}: {stderr}");
    assert!(out.is_empty(), "rcluster {args:?} printed {out}");
    assert!(stderr.starts_with("error: "), "rcluster {args:?}: {stderr}");
    assert!(
        stderr.contains("For more information, try '--help'."),
        "rcluster {args:?}: {stderr}"
    );
    for said in says {
        assert!(
            stderr.contains(said),
            "rcluster {args:?} should say {said:?}: {stderr}"
        );
    }
}

#[test]
fn usage_errors_exit_64_with_all_that_clap_says() {
    let w = example("test_worker");
    let w = w.as_str();
    let table: &[(&[&str], &[&str])] = &[
        (
            &["--frobnicate", "--", w],
            &["unexpected argument '--frobnicate'", "Usage:"],
        ),
        (
            &["--workerz", "2", "--", w],
            &["tip: a similar argument exists: '--workers'"],
        ),
        (
            &["-w", "2", w],
            &["tip: put the server and its arguments after --"],
        ),
        (
            &["--workers", "0", "--", w],
            &["expected auto or a number from 1 to"],
        ),
        (
            &["--workers", "many", "--", w],
            &["'many'", "expected auto or a number"],
        ),
        (&["--stop-timeout", "soon", "--", w], &["500ms, 30s or 2m"]),
        (
            &["--listen", "localhost:80", "--", w],
            &["127.0.0.1:8080, :8080, [::1]:8080"],
        ),
        (
            &["--listen", "999.1.1.1:80", "--", w],
            &["unix:/path/app.sock"],
        ),
        (&["--stop-signal", "SIGFOO", "--", w], &["TERM, QUIT"]),
        // 512 bytes would recycle every worker at every look.
        (
            &["--max-memory", "512", "--", w],
            &["512 is 512 bytes", "give a unit, e.g. 512M"],
        ),
        (
            &["--ready", "soon", "--", w],
            &["auto, exec, notify or delay:DUR"],
        ),
        (
            &["--log-format", "xml", "--", w],
            &["possible values: human, json"],
        ),
        (
            &["scale"],
            &["the following required arguments were not provided", "<N>"],
        ),
        (&["scale", "0"], &["0 is not in 1..=4096"]),
        (
            &["status", "--bogus"],
            &["unexpected argument '--bogus'", "Usage: rcluster status"],
        ),
        (&["reload", "--timeout", "later"], &["500ms, 30s or 2m"]),
        (&["-w", "2", "status"], &["unexpected argument 'status'"]),
    ];
    for (args, says) in table {
        usage(args, says);
    }
}

#[test]
fn a_missing_command_is_one_line() {
    refused(&["--workers", "2"], 64, "no command given");
}

#[test]
fn help_works_for_every_command() {
    let (code, out, _) = rcluster(&["help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Usage: rcluster [OPTIONS] -- COMMAND"),
        "{out}"
    );
    for command in ["status", "reload", "scale", "stop"] {
        let (code, out, err) = rcluster(&["help", command]);
        assert_eq!(code, 0, "help {command}: {err}");
        assert!(out.contains(&format!("Usage: rcluster {command}")), "{out}");
        let (code, again, _) = rcluster(&[command, "--help"]);
        assert_eq!((code, &again), (0, &out));
        // Every argument says what it is for.
        for line in out.lines().filter(|l| l.trim_start().starts_with('-')) {
            assert!(
                line.trim().split("  ").filter(|p| !p.is_empty()).count() >= 2,
                "help {command}: an argument without help: {line:?}"
            );
        }
    }
    let (_, out, _) = rcluster(&["help", "scale"]);
    assert!(out.contains("<N>  How many workers"), "{out}");
}

#[test]
fn the_same_address_twice_is_a_usage_error_not_a_clash() {
    let w = example("test_worker");
    refused(
        &["-l", "127.0.0.1:8080", "-l", "127.0.0.1:8080", "--", &w],
        64,
        "--listen 127.0.0.1:8080 is given twice; give each address once",
    );
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
        crate::support::skip("needs root, runuser, and port 80 to be privileged");
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

#[test]
fn user_without_root_is_a_usage_error_64() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        crate::support::skip("needs root to run rcluster as another user");
        return;
    }
    let binary = crate::support::rcluster_bin();
    let (code, _, err) = crate::support::run(
        "runuser",
        &[
            "-u",
            "nobody",
            "--",
            binary.to_str().unwrap(),
            "--user",
            "root",
            "--",
            "true",
        ],
    );
    if err.contains("runuser:") {
        crate::support::skip(&format!("runuser is not permitted here: {err}"));
        return;
    }
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("need rcluster to run as root"), "{err}");
}
