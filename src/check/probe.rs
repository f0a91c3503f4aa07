//! The `probe` question: with `--probe PATH`, whether the workers pass it
//! (as the master saw, and as the check's own request sees); without, a
//! suggestion when the server has a conventional health path.

use std::ffi::OsString;
use std::net::SocketAddr;

use serde_json::json;

use super::child::Checked;
use super::http;
use super::report::{Answer, Verdict};

/// The paths servers conventionally answer health checks on.
const HEALTH_PATHS: [&str; 4] = ["/healthz", "/health", "/ready", "/livez"];

/// A path no server has: a server that answers it 2xx answers anything.
const NO_SUCH_PATH: &str = "/rcluster-check-no-such-path";

/// `--probe PATH` (or `--probe=PATH`) among the options before `--`.
pub fn probe_path(args: &[OsString]) -> Option<String> {
    let mut iter = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = iter.next() {
        if arg == "--" {
            return None;
        }
        if arg == "--probe" {
            return iter.next().map(|p| p.into_owned());
        }
        if let Some(path) = arg.strip_prefix("--probe=") {
            return Some(path.to_string());
        }
    }
    None
}

fn passes(addr: SocketAddr, path: &str) -> Option<u16> {
    http::get(addr, path).ok().map(|r| r.status)
}

/// Asked once the workers are ready; `None` when there is nothing to say
/// (no `--probe`, and no conventional health path found).
pub fn probe(checked: &Checked, path: Option<&str>) -> Option<Answer> {
    let addr = checked.addr?;
    let Some(path) = path else {
        return suggest(addr);
    };
    let failed = checked.seen(|r| r["msg"] == "probe failed");
    let status = passes(addr, path);
    let figures = json!({"path": path, "status": status, "failed": failed.len()});
    let good = status.is_some_and(|s| (200..400).contains(&s)) && failed.is_empty();
    if good {
        return Some(
            Answer::new(
                "probe",
                Verdict::Good,
                format!(
                    "every worker passed GET {path}; it answers {}",
                    status.unwrap_or(0)
                ),
            )
            .figures(figures),
        );
    }
    let seen = match (status, failed.first()) {
        (_, Some(first)) => format!(
            "the master's probes failed {} times (first: {})",
            failed.len(),
            first["cause"].as_str().unwrap_or("?")
        ),
        (Some(status), None) => format!("GET {path} answers {status}"),
        (None, None) => format!("GET {path} got no answer"),
    };
    Some(
        Answer::new("probe", Verdict::Bad, seen)
            .fix(format!(
                "have the server answer 2xx on {path} when it can serve, or probe another path"
            ))
            .figures(figures),
    )
}

/// A server that answers `/` and a conventional health path (and not any
/// path at all) gets the flag suggested.
fn suggest(addr: SocketAddr) -> Option<Answer> {
    let ok = |path| passes(addr, path).is_some_and(|s| (200..300).contains(&s));
    if !ok("/") || ok(NO_SUCH_PATH) {
        return None;
    }
    let path = HEALTH_PATHS.into_iter().find(|p| ok(p))?;
    Some(
        Answer::new(
            "probe",
            Verdict::Notice,
            format!(
                "GET {path} answers 2xx, and rcluster does not ask it: with --probe {path}, a \
                 release that answers errors never replaces a worker, and a hung worker is \
                 replaced"
            ),
        )
        .fix(format!(
            "run it with --probe {path} (docs/reloads.md, \"Probes\")"
        ))
        .figures(json!({"path": path})),
    )
}
