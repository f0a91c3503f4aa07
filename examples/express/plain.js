// An Express app as people write it, with nothing for rcluster: it binds
// its own port and dies on SIGTERM. Under `rcluster --adopt-bind` it runs
// unchanged, with rolling reloads (see docs/servers.md, "A server that binds
// its own port").
//
//   rcluster --adopt-bind --listen 127.0.0.1:8080 -- node examples/express/plain.js
'use strict';

const express = require('express');

const app = express();
app.get('/', (req, res) => {
  res.type('text/plain').send(`hello from express (pid ${process.pid})\n`);
});
app.listen(Number(process.env.PORT) || 3000);
