'use strict';
// What both apps share: listen on loopback, tell pm2 when ready (wait_ready), and on
// SIGINT (pm2 reload/stop) stop taking connections, finish the open ones, then exit.
const cluster = require('node:cluster');
const http = require('node:http');

function serve(name, port, handler, onClose = async () => {}) {
  const server = http.createServer((req, res) => {
    Promise.resolve(handler(req, res)).catch((err) => {
      console.error(`${name}: ${req.method} ${req.url}: ${err.stack || err}`);
      if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
      else res.end();
    });
  });
  server.keepAliveTimeout = 5000;
  server.listen(port, process.env.LISTEN_HOST || '127.0.0.1', () => {
    console.log(`${name} listening on ${port}`);
    if (process.send) process.send('ready');
  });
  process.on('SIGINT', () => {
    console.log(`${name}: SIGINT, closing`);
    server.close(async () => {
      await onClose();
      exitOnceReleased();
    });
    server.closeIdleConnections();
  });
  return server;
}

// Exits. A worker of pm2's cluster first disconnects from the primary, which answers only
// after the connections it handed over before it learnt of the close: the worker, still
// running, passes those back to another worker. Exiting at once would leave each such
// request open and unanswered (nodejs/node-v0.x-archive#7006; test/cluster.test.js).
function exitOnceReleased() {
  if (!cluster.isWorker) process.exit(0);
  cluster.worker.once('disconnect', () => process.exit(0));
  cluster.worker.disconnect();
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function readJson(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      text += chunk;
      if (text.length > limit) reject(Object.assign(new Error('body too large'), { status: 413 }));
    });
    req.on('end', () => {
      try {
        resolve(text ? JSON.parse(text) : {});
      } catch {
        reject(Object.assign(new Error('body is not JSON'), { status: 400 }));
      }
    });
    req.on('error', reject);
  });
}

module.exports = { serve, sendJson, readJson };
