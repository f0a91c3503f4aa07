//! The most common production shape of a preforked app server: nginx (from
//! the distribution's packages, its workers running as `www-data`) in
//! front, talking to the workers over a Unix socket. The recipe's rcluster
//! line is read from docs/servers.md and its nginx site is
//! `examples/nginx/app.conf`, so what the docs show is what ran: 5 reloads
//! under wrk, keep-alive and close, and not one failed request.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::examples::{RELOADS, path};
use crate::support::installs::path_with_python;
use crate::support::recipes::recipe;
use crate::support::{
    Master, SHORT_HOLD, TempDir, WAIT, path_str, reload_under_wrk_at, skip, wait_until,
};

/// nginx as the tests run it: in the foreground, its own process group
/// (killed as a group when dropped: its workers outlive a killed master).
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Nginx {
    /// nginx with `examples/nginx/app.conf` as its site, its socket path
    /// and address put in; as root, its workers run as `www-data` (Debian's
    /// `nginx.conf` says so), the user rcluster's socket must let in.
    fn start(dir: &TempDir, socket: &str) -> Nginx {
        let site = std::fs::read_to_string(path("examples/nginx/app.conf")).unwrap();
        assert!(site.contains("unix:/run/app.sock;") && site.contains("listen 80;"));
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
            let site = site
                .replace("unix:/run/app.sock;", &format!("unix:{socket};"))
                .replace("listen 80;", &format!("listen {addr};"));
            let root = dir.path("nginx");
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(root.join("app.conf"), site).unwrap();
            let user = if is_root() { "user www-data;" } else { "" };
            let d = path_str(&root);
            let conf = format!(
                "{user}\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log;\nevents {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 include {d}/app.conf;\n}}\n"
            );
            std::fs::write(root.join("nginx.conf"), conf).unwrap();
            let child = Command::new("nginx")
                .args(["-p", d, "-c", &format!("{d}/nginx.conf"), "-e"])
                .arg(format!("{d}/error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("nginx (./test.sh installs Debian's)");
            let mut nginx = Nginx {
                child,
                addr,
                dir: root,
            };
            // Another test may have taken the port between our look and
            // nginx's bind: then nginx exits, and another port is tried.
            let up = wait_until(WAIT, || {
                TcpStream::connect(addr).is_ok() || nginx.child.try_wait().ok().flatten().is_some()
            });
            if up && nginx.child.try_wait().unwrap().is_none() {
                return nginx;
            }
        }
        panic!("nginx did not start on 5 ports: see its error.log");
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        // SAFETY: signalling the process group this test started.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn nginx_in_front_over_a_unix_socket_loses_nothing_through_reloads() {
    if Command::new("nginx").arg("-v").output().is_err() {
        return skip("nginx is not installed (./test.sh installs it)");
    }
    if !is_root() {
        return skip("needs root: nginx's workers run as www-data, as Debian's do");
    }
    let recipe = recipe("nginx");
    let dir = TempDir::new("nginx");
    let socket = dir.path("app.sock");
    let socket = path_str(&socket);
    let env = path_with_python();
    let python = path("examples/python");
    for keep_alive in [true, false] {
        let listen = format!("unix:{socket}");
        let mut args = vec!["-w", "2", SHORT_HOLD, "--listen", &listen];
        args.extend(recipe.flags());
        args.push("--");
        args.extend(recipe.command());
        let mut master = Master::start_with(&args, |cmd| {
            cmd.env("PATH", &env).current_dir(&python);
        });
        let nginx = Nginx::start(&dir, socket);
        let started = Instant::now();
        let wrk = reload_under_wrk_at(&mut master, nginx.addr, 2, keep_alive, RELOADS, true);
        let mode = if keep_alive { "keep-alive" } else { "close" };
        eprintln!(
            "nginx → unix socket → gunicorn, {mode}, {RELOADS} reloads in {:?}: wrk {} served, \
             {} failed (p50 {} us, p99 {} us)",
            started.elapsed(),
            wrk.requests,
            wrk.failed(),
            wrk.p50_us,
            wrk.p99_us
        );
        let errors = nginx.error_log();
        assert!(
            !errors.contains("Permission denied"),
            "nginx could not connect to the socket:\n{errors}"
        );
        drop(nginx);
        master.stop_cleanly();
        // The master removes its socket file at a graceful stop.
        assert!(wait_until(Duration::from_secs(5), || {
            !std::path::Path::new(socket).exists()
        }));
    }
}
