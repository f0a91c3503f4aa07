// A Node.js http server as an rcluster worker: it listens on the socket the
// master passed at fd 3 and drains on SIGTERM without losing a request.
//
//   rcluster --listen 127.0.0.1:8080 -- node examples/node/server.js
//
// No dependencies. GET /sleep/<ms> answers after <ms>, to watch a drain.
'use strict';

const { execFile } = require('child_process');
const http = require('http');
const net = require('net');

// While draining, how long an idle keep-alive connection stays open for a
// request that may already be on its way (closing it at once races with a
// client that is sending, which then sees a reset): the idle timeout Node
// states in each keep-alive response (`Keep-Alive: timeout=1`), so a client
// away longer knows not to send on it.
const DRAIN_GRACE_MS = 1000;

const id = process.env.RCLUSTER_WORKER_ID ?? '-';
const greeting = `hello from node worker ${id} (pid ${process.pid})\n`;
let draining = false;

const server = http.createServer((req, res) => {
  const m = /^\/sleep\/(\d+)$/.exec(req.url);
  const delay = m ? Math.min(Number(m[1]), 60000) : 0;
  // CPU work, to load a worker (the bench's balance scenario).
  const burn = /^\/burn\/(\d+)$/.exec(req.url);
  if (burn) {
    const until = process.cpuUsage().user + Math.min(Number(burn[1]), 60000) * 1000;
    while (process.cpuUsage().user < until);
  }
  req.resume();
  setTimeout(() => {
    const headers = {
      'Content-Type': 'text/plain',
      'Content-Length': Buffer.byteLength(greeting),
    };
    // Tell keep-alive clients to reconnect (to a worker that is not leaving).
    if (draining) headers.Connection = 'close';
    res.writeHead(200, headers);
    res.end(greeting);
  }, delay);
});

// Idle keep-alive connections close after the drain's grace in normal
// service too, and Node says so in each response.
server.keepAliveTimeout = DRAIN_GRACE_MS;

// snippet:start
function drain() {
  if (draining) return;
  draining = true;
  // Stop accepting now; queued connections go to the other workers, which
  // share the socket. net.Server's close, not http.Server's: since Node 19
  // the latter also closes idle keep-alive connections at once.
  net.Server.prototype.close.call(server, () => process.exit(0));
  setTimeout(() => server.closeIdleConnections(), DRAIN_GRACE_MS).unref();
}

for (const signal of ['SIGTERM', 'SIGINT', 'SIGQUIT']) process.on(signal, drain);

// READY=1 over the sd_notify protocol once the server accepts, so that a
// reload replaces an old worker only after this one is up. Node has no Unix
// datagram sockets, so a helper sends it: `rcluster notify --ready`, which
// waits until the master has read the message (the master counts a message
// only while it can trace its sender to a worker). RCLUSTER_BIN is the
// rcluster that started this worker, whatever the PATH; without it,
// `rcluster` on the PATH, then systemd's helper.
function ready() {
  if (!process.env.NOTIFY_SOCKET) return;
  execFile(process.env.RCLUSTER_BIN || 'rcluster', ['notify', '--ready'], (err) => {
    if (!err) return;
    if (err.code !== 'ENOENT') {
      console.error(`node worker ${id}: rcluster notify failed: ${err.message}`);
      return;
    }
    execFile('systemd-notify', ['--ready', `--pid=${process.pid}`], (err) => {
      if (err) console.error(`node worker ${id}: systemd-notify failed: ${err.message}`);
    });
  });
}

// Node calls listen() again on fd 3, with a backlog of 511 unless told:
// keep rcluster's (--backlog). For a handle, Node takes the backlog only as
// the second argument, not as `options.backlog`.
server.listen({ fd: 3 }, Number(process.env.RCLUSTER_BACKLOG) || 511, ready);
// snippet:end
