#!/usr/bin/env python3
"""An HTTP server in Python (standard library only) as an rcluster worker.

It serves on the socket the master passed at fd 3, says READY=1 over the
sd_notify protocol, and drains on SIGTERM without losing a request:

    rcluster --ready notify --listen 127.0.0.1:8080 -- python3 examples/python/server.py

GET /sleep/<ms> answers after <ms>, to watch a drain.
"""

import os
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# While draining, how long an idle keep-alive connection stays open for a
# request that may already be on its way (closing at once races with a client
# that is sending, which then sees a reset). Each keep-alive response states
# it as the idle timeout, so a client away longer knows not to send on it.
DRAIN_GRACE = 1.0

WORKER = os.environ.get("RCLUSTER_WORKER_ID", "-")
GREETING = f"hello from python worker {WORKER} (pid {os.getpid()})\n".encode()
draining = threading.Event()


def sd_notify(state):
    """Sends one sd_notify datagram; a no-op without NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), path)
    return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # The head and the body leave in one write (flushed after each request):
    # written separately, the body waits on Nagle's algorithm for the
    # client's delayed ACK, 40 ms a response. TCP_NODELAY as well, for
    # responses larger than the buffer.
    wbufsize = -1
    disable_nagle_algorithm = True
    connections = set()
    connections_lock = threading.Lock()

    def setup(self):
        super().setup()
        self.idle = True
        with Handler.connections_lock:
            Handler.connections.add(self)

    def finish(self):
        with Handler.connections_lock:
            Handler.connections.discard(self)
        super().finish()

    def handle_one_request(self):
        self.idle = True
        super().handle_one_request()

    def parse_request(self):
        self.idle = False
        return super().parse_request()

    def do_GET(self):
        match = re.fullmatch(r"/(sleep|burn)/(\d+)", self.path)
        if match and match.group(1) == "sleep":
            time.sleep(min(int(match.group(2)), 60000) / 1000)
        elif match:
            # CPU work, to load a worker (the bench's balance scenario).
            until = time.thread_time() + min(int(match.group(2)), 60000) / 1000
            while time.thread_time() < until:
                pass
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(GREETING)))
        # A client that asked to close (or speaks HTTP/1.0) is told so: one
        # that reuses connections reads a response without it as "this one
        # stays open", and its next request fails. While draining, every
        # client is told to reconnect (to a worker that is not leaving).
        if self.close_connection or draining.is_set():
            self.send_header("Connection", "close")
        else:
            self.send_header("Keep-Alive", f"timeout={DRAIN_GRACE:.0f}")
        self.end_headers()
        self.wfile.write(GREETING)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """One line, not a traceback: a client that resets, or a thread the
        system refuses (the connection is closed; the server goes on)."""
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionResetError, BrokenPipeError)):
            print(f"python worker {WORKER}: {client_address[0]}: {error!r}", file=sys.stderr)


def close_idle_connections():
    with Handler.connections_lock:
        idle = [h for h in Handler.connections if h.idle]
    for handler in idle:
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# snippet:start
def main():
    listener = socket.socket(fileno=3)
    # Every worker is woken for each connection; the ones that lose the race
    # must not block in accept() (they could no longer stop).
    listener.setblocking(False)
    server = Server(listener.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    server.daemon_threads = False  # server_close() waits for requests in flight

    # The stop signals are blocked in every thread and taken by one that
    # waits for them. Not a Python signal handler: one runs in the main
    # thread wherever it happens to be, and starting a thread from there can
    # deadlock inside the threading module.
    stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    def stopper():
        signal.sigwait(stop_signals)
        draining.set()
        server.shutdown()  # returns once serve_forever() has stopped accepting

    threading.Thread(target=stopper, daemon=True).start()

    sd_notify("READY=1")
    server.serve_forever(poll_interval=0.1)  # returns once stop() ran
    # What is queued already came to us: serve it, then close our copy of
    # the socket at once, so that once every copy is closed a new
    # connection is refused (a client knows, and goes elsewhere) rather
    # than queued, then reset unanswered.
    while True:
        try:
            server.process_request(*listener.accept())
        except OSError:
            break
    listener.close()
    time.sleep(DRAIN_GRACE)
    close_idle_connections()
    server.server_close()  # joins the request threads
    return 0
# snippet:end


if __name__ == "__main__":
    sys.exit(main())
