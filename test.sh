#!/usr/bin/env bash
# The README's test command: installs what the tests need beyond Rust (with
# apt, as root or through sudo), then runs the whole suite. Arguments go to
# `cargo test`. Those who have the tools may run `cargo test` alone: a
# missing tool is then named in one line, with this script as the fix.
set -euo pipefail
cd "$(dirname "$0")"

apt_install() {
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    fi
}

# The Node.js and Python examples are tested under rcluster; the Node one
# says READY=1 through systemd-notify; socket activation is tested with
# systemd-socket-activate; PID 1 with unshare, privileges with runuser.
command -v node >/dev/null || apt_install nodejs
command -v python3 >/dev/null || apt_install python3
command -v systemd-notify >/dev/null || apt_install systemd
command -v systemd-socket-activate >/dev/null || apt_install systemd
command -v unshare >/dev/null && command -v runuser >/dev/null || apt_install util-linux
# wrk: every "no request lost" is checked with a client nobody here wrote.
command -v wrk >/dev/null || apt_install wrk
# ss: the Node recipe keeps the listen backlog (a listener's Send-Q).
command -v ss >/dev/null || apt_install iproute2
# The servers people run, from their registries: the tests install Express
# from its lock file and gunicorn and uvicorn into a virtual environment of
# their own (they need npm, and Python's venv); Go's net/http needs go, and
# a static build (the --adopt-bind refusal) a C compiler with a static libc.
command -v npm >/dev/null || apt_install npm
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
command -v go >/dev/null || apt_install golang-go
# /metrics is checked with Prometheus's own parser.
command -v promtool >/dev/null || apt_install prometheus
cc -print-file-name=libc.a 2>/dev/null | grep -q / || apt_install gcc libc6-dev
# nginx in front over a Unix socket, the recipe in docs/servers.md. Its
# package starts a daemon when installed, which may fail where port 80 is
# taken: the binary is what the tests need.
command -v nginx >/dev/null || apt_install nginx || command -v nginx >/dev/null
(cd examples/express && npm ci --no-audit --no-fund)

# A test that cannot run here says so in this list (libtest shows it `ok`).
skipped=target/tmp/skipped-tests
rm -f "$skipped"
status=0
cargo test "$@" || status=$?
if [ -s "$skipped" ]; then
    echo "$(wc -l < "$skipped") tests skipped (they need what this machine lacks):"
    sed 's/^/  /' "$skipped"
fi
exit "$status"
