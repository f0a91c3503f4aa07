// An Express app under rcluster: the recipe for any Node web framework.
//
//   npm ci --prefix examples/express
//   rcluster --listen 127.0.0.1:8080 --ready notify -- node examples/express/app.js
//
// Three things make it a good worker:
// 1. It serves on the socket rcluster passes (fd 3) when LISTEN_FDS is set,
//    and on PORT otherwise (`node app.js` in development).
// 2. It says READY=1 once it listens, so a reload replaces an old worker
//    only after this one serves. Node cannot send a Unix datagram itself:
//    `rcluster notify --ready` sends it, run from RCLUSTER_BIN (the rcluster
//    that started this worker), so the PATH need not hold it.
// 3. On SIGTERM it drains: it stops accepting at once, tells each client
//    that sends another request to reconnect (`Connection: close`), closes
//    idle connections after a short grace, and exits once the last request
//    is answered.
'use strict';

const { execFile } = require('child_process');
const net = require('net');
const express = require('express');

// While draining, how long an idle keep-alive connection stays open for a
// request that may already be on its way (closing at once races with it).
const DRAIN_GRACE_MS = 500;

const id = process.env.RCLUSTER_WORKER_ID ?? '-';
let draining = false;

// snippet:start
const app = express();
app.use((req, res, next) => {
  if (draining) res.set('Connection', 'close');
  next();
});
app.get('/', (req, res) => {
  res.type('text/plain').send(`hello from express worker ${id} (pid ${process.pid})\n`);
});
app.get('/sleep/:ms', (req, res) => {
  const ms = Math.min(Number(req.params.ms) || 0, 60000);
  setTimeout(() => res.type('text/plain').send(`slept ${ms} ms (pid ${process.pid})\n`), ms);
});

function ready() {
  if (!process.env.NOTIFY_SOCKET) return;
  execFile(process.env.RCLUSTER_BIN || 'rcluster', ['notify', '--ready'], (err) => {
    if (err) console.error(`express worker ${id}: rcluster notify failed: ${err.message}`);
  });
}

const server = process.env.LISTEN_FDS
  ? app.listen({ fd: 3 }, Number(process.env.RCLUSTER_BACKLOG) || 511, ready)
  : app.listen(Number(process.env.PORT) || 3000, ready);

process.on('SIGTERM', () => {
  if (draining) return;
  draining = true;
  // net.Server's close stops accepting; http.Server's would also close
  // idle keep-alive connections at once (since Node 19), racing with
  // requests on their way.
  net.Server.prototype.close.call(server, () => process.exit(0));
  setTimeout(() => server.closeIdleConnections(), DRAIN_GRACE_MS).unref();
});
// snippet:end
