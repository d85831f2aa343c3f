'use strict';
// What both apps share: listen on loopback, tell pm2 when ready (wait_ready), and on
// SIGINT (pm2 reload/stop) stop taking connections, finish the open ones, then exit.
const cluster = require('node:cluster');
const http = require('node:http');

function serve(name, port, handler, onClose = async () => {}) {
  let closing = false;
  const answering = new Set();   // responses not yet sent
  const server = http.createServer((req, res) => {
    answering.add(res);
    res.once('close', () => answering.delete(res));
    if (closing) res.setHeader('connection', 'close');
    Promise.resolve(handler(req, res)).catch((err) => {
      console.error(`${name}: ${req.method} ${req.url}: ${err.stack || err}`);
      if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
      else res.end();
    });
  });
  server.keepAliveTimeout = 5000;
  const connections = new Set();
  server.on('connection', (socket) => {
    connections.add(socket);
    socket.once('close', () => connections.delete(socket));
  });
  server.listen(port, process.env.LISTEN_HOST || '127.0.0.1', () => {
    console.log(`${name} listening on ${port}`);
    if (process.send) process.send('ready');
  });
  // A kept-alive connection is never closed while idle: the app server's nginx may be
  // sending a request on it that very moment, and a POST it sent is not sent again (a 502).
  // Every answer from now on closes its connection instead, and nginx closes those it keeps
  // idle after 1 s (its upstreams' keepalive_timeout). Once the connections open at the
  // signal are gone, the server closes (Node 19 and later also close the idle ones then:
  // only connections that came after the signal, each closed by its first answer).
  process.on('SIGINT', () => {
    console.log(`${name}: SIGINT, closing`);
    closing = true;
    for (const res of answering) if (!res.headersSent) res.setHeader('connection', 'close');
    const open = [...connections].map((socket) => new Promise((resolve) => socket.once('close', resolve)));
    Promise.all(open).then(() => server.close(async () => {
      await onClose();
      exitOnceReleased();
    }));
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
