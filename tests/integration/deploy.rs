//! Where rcluster is deployed: under systemd socket activation, as PID 1 of
//! a container, with privileges dropped for its workers, on Kubernetes.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use crate::support::{Master, TempDir, WAIT, example, http, pass_as_fd_3, path_str, rcluster};

fn has(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn systemd_socket_activation_hands_rcluster_its_socket_and_hears_it_is_ready() {
    assert!(
        has("systemd-socket-activate"),
        "systemd-socket-activate is missing: apt-get install systemd (./test.sh does)"
    );
    let dir = TempDir::new("socket-activate");
    let notify = dir.path("notify");
    let systemd = UnixDatagram::bind(&notify).unwrap();
    systemd.set_read_timeout(Some(WAIT)).unwrap();
    // The test binds (port 0 and no race); systemd-socket-activate passes
    // sockets it was itself given through to rcluster, and starts it on the
    // first connection, as systemd does.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let hello = example("hello");
    let wrapper = format!(
        "LISTEN_PID=$$ LISTEN_FDS=1 exec systemd-socket-activate --fdname=web -E NOTIFY_SOCKET={} \"$@\"",
        path_str(&notify)
    );
    // The example unit's file, with the test's paths: flags override it.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd/rcluster-hello.toml");
    let mut master = Master::start_via(
        "sh",
        &["-c", &wrapper, "sh"],
        &[
            "--config",
            path_str(&config),
            "--control",
            "none",
            "-w",
            "2",
            "--",
            &hello,
        ],
        |cmd| pass_as_fd_3(cmd, fd),
    );
    let response = http::get(addr, "/").expect("served on the socket systemd passed");
    assert_eq!(response.status, 200);
    let listening = master.expect_msg("listening");
    assert_eq!(listening["listener"], "web");
    assert_eq!(listening["addr"], addr.to_string());
    master.ready_workers();
    let mut buf = [0u8; 256];
    let n = systemd.recv(&mut buf).expect("READY=1 from rcluster");
    assert_eq!(&buf[..n], b"READY=1");
    let n = systemd.recv(&mut buf).expect("STATUS= from rcluster");
    assert_eq!(&buf[..n], b"STATUS=serving generation 1");
    master.signal(libc::SIGTERM);
    let n = systemd.recv(&mut buf).expect("STOPPING=1 from rcluster");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn as_pid_1_rcluster_reaps_orphans_and_still_stops_gracefully() {
    let permitted = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !permitted {
        crate::support::skip("unshare --pid is not permitted here");
        return;
    }
    let hello = example("hello");
    // Each worker leaves a grandchild behind: a subshell starts `sleep` and
    // exits, so `sleep` is reparented to PID 1, rcluster.
    let script = format!("(sleep 0.2 &); exec {hello}");
    let mut master = Master::start_via(
        "unshare",
        &["--pid", "--fork", "--mount-proc"],
        &[
            "--log-level",
            "debug",
            "-w",
            "2",
            "-l",
            "127.0.0.1:0",
            "--",
            "sh",
            "-c",
            &script,
        ],
        |_| {},
    )
    .in_pid_namespace();
    master.ready_workers();
    let orphan = master.expect_msg("orphan reaped");
    assert_eq!(
        orphan["code"], 0,
        "the orphaned sleep exited and was reaped: {orphan}"
    );
    // rcluster is unshare's child; TERM goes to it, not to unshare.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", master.pid)).unwrap();
    let rcluster: i32 = children
        .split_whitespace()
        .next()
        .expect("unshare's child")
        .parse()
        .unwrap();
    // A live upgrade as PID 1; the new image reaps the orphans of the
    // workers a reload then starts.
    // SAFETY: signalling the rcluster this test started.
    unsafe { libc::kill(rcluster, libc::SIGUSR2) };
    master.expect_msg("upgraded");
    // SAFETY: as above.
    unsafe { libc::kill(rcluster, libc::SIGHUP) };
    let orphan = master.expect_msg("orphan reaped");
    assert_eq!(orphan["code"], 0, "after the upgrade: {orphan}");
    // SAFETY: signalling the rcluster this test started.
    unsafe { libc::kill(rcluster, libc::SIGTERM) };
    master.expect_msg("stopped");
    assert_eq!(master.wait_exit().code(), Some(0));
}

#[test]
fn workers_run_as_the_user_given_with_user() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        crate::support::skip("--user needs rcluster to run as root");
        return;
    }
    let worker = example("test_worker");
    let mut master = Master::start(&["-w", "2", "--user", "nobody", "--", &worker]);
    for (_, pid) in master.ready_workers() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let ids: Vec<&str> = uid.split_whitespace().skip(1).collect();
        assert_eq!(ids, ["65534"; 4], "{uid}");
        assert_eq!(
            crate::support::environ(pid, "USER").as_deref(),
            Some("nobody")
        );
    }
    master.signal(libc::SIGTERM);
    assert_eq!(master.wait_exit().code(), Some(0));
}

/// What `rcluster config show --config FILE` says of `key`: its value and
/// where it came from, as one line.
fn shown(file: &Path, key: &str) -> String {
    let (code, out, err) = rcluster(&["config", "show", "--config", path_str(file)]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key));
    let line = line.unwrap_or_else(|| panic!("{key} in {out}"));
    line.split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_kubernetes_grace_period_outlasts_the_stop_timeout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes");
    let manifest = std::fs::read_to_string(root.join("deployment.yaml")).unwrap();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let grace: u64 = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("terminationGracePeriodSeconds in deployment.yaml");
    // The ConfigMap's file, as the pod reads it, and the image's own.
    let dir = TempDir::new("k8s-config");
    let mounted = dir.path("rcluster.toml");
    let embedded: Vec<&str> = manifest
        .split("rcluster.toml: |\n")
        .nth(1)
        .expect("the ConfigMap's rcluster.toml")
        .lines()
        .take_while(|l| !l.starts_with("---"))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    std::fs::write(&mounted, embedded.join("\n")).unwrap();
    for file in [mounted.as_path(), &root.join("rcluster.toml")] {
        let (code, out, err) = rcluster(&["config", "check", path_str(file)]);
        assert_eq!(code, 0, "{}: {out}{err}", file.display());
        // "25s file, line 9"
        let value = shown(file, "stop-timeout");
        assert!(value.contains(" file, line "), "{value}");
        let stop_timeout: u64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.strip_suffix('s')?.parse().ok())
            .expect("stop-timeout in seconds in the file");
        let pre_stop: u64 = manifest
            .split("command: [\"sleep\", \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            pre_stop + stop_timeout < grace,
            "{pre_stop}s + {stop_timeout}s must fit in {grace}s"
        );
        assert!(shown(file, "control").starts_with("/run/rcluster/control.sock file"));
    }
    assert!(
        manifest.contains(
            r#"command: ["rcluster", "status", "--control", "/run/rcluster/control.sock"]"#
        )
    );
    assert!(
        dockerfile
            .contains(r#"ENTRYPOINT ["rcluster", "--config", "/etc/rcluster/rcluster.toml"]"#)
    );
    assert!(manifest.contains("mountPath: /etc/rcluster\n"));
}
