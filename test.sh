#!/usr/bin/env bash
# The README's test command: installs what the tests need beyond Rust (with
# apt, as root or through sudo), then runs the whole suite. Arguments go to
# `cargo test`. Those who have the tools may run `cargo test` alone: a
# missing tool is then named in one line, with this script as the fix.
#
# `./test.sh --quick`: the edit-and-test loop, under a minute. The unit
# tests, and one fast integration test per part of the architecture
# (ARCHITECTURE.md), listed below; CI runs everything.
set -euo pipefail
cd "$(dirname "$0")"

QUICK=(
    # start: the command line; launch: a command that cannot run
    cli_errors::usage_errors_exit_64_with_all_that_clap_says
    cli_errors::a_missing_command_exits_127_and_a_non_executable_one_126
    # sockets: bound, passed by the systemd protocol, adopted from systemd
    start::workers_serve_on_one_port_each_with_its_own_listen_pid_and_names
    listen::a_worker_holds_only_its_stdio_and_listeners
    notify::sockets_passed_with_listen_fds_are_adopted_instead_of_bound
    # shell and policy: a crash, a reload, a stop, what the release is
    restart::a_killed_worker_is_replaced_in_its_slot_while_the_service_answers
    reload::the_old_worker_is_not_stopped_before_the_new_one_says_ready
    stop::term_lets_a_request_in_flight_finish_then_exits_zero
    releases::a_restart_after_an_aborted_reload_runs_the_serving_release
    observe::a_crash_says_its_last_lines
    upgrade::a_worker_that_dies_during_the_upgrade_is_restarted_by_the_new_image
    # control: status, scale
    control::status_shows_every_worker_as_a_table_and_as_json
    control::scale_sets_the_worker_count
    # start: the configuration file, its layers, a reload that applies it
    config::flags_and_variables_override_the_file
    # check
    check::a_server_that_cannot_run_is_said_so
    # library: a worker's listeners, a cluster of one's own
    library::listeners_are_found_by_position_and_name_and_checked
    cluster::cluster_restarts_a_panicking_worker_and_reloads_on_hup
    # the shape of the code and of the docs
    layout::
    docs::
)

if [ "${1:-}" = --quick ]; then
    # `--test integration` alone would not rebuild the examples it runs.
    cargo build --quiet --bin rcluster --examples
    cargo test --quiet --lib
    # Each name is a filter (`layout::` is the whole module).
    exec cargo test --quiet --test integration -- "${QUICK[@]}"
fi

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
