'use strict';
// The web app as pm2 runs it: workers of Node's cluster, behind the primary's round-robin
// listener, replaced one by one as a reload does (the new worker listening, then SIGINT
// to an old one), while new connections keep arriving. Every request is answered: a
// worker that stops hands back what the primary gave it in its last moment.
const cluster = require('node:cluster');
const http = require('node:http');
const path = require('node:path');
const test = require('node:test');
const assert = require('node:assert');
const { freePort } = require('./processes');

const WORKERS = 2;
const REPLACEMENTS = 20;
const REPLACE_EVERY_MS = 150;
const CLIENTS = 16;
const ANSWER_WITHIN_MS = 3000;   // an unanswered request would wait for the LB's 60 s

// One GET on a new connection: "ok", an error's name, or "no answer".
const get = (port) => new Promise((resolve) => {
  const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
    res.resume();
    res.on('end', () => resolve(res.statusCode === 200 ? 'ok' : `status ${res.statusCode}`));
  });
  req.setTimeout(ANSWER_WITHIN_MS, () => { req.destroy(); resolve('no answer'); });
  req.on('error', (err) => resolve(err.code || err.name));
});

// A worker forked, resolved once it listens.
const fork = (port) => new Promise((resolve, reject) => {
  const worker = cluster.fork({ PORT: String(port) });
  worker.once('listening', () => resolve(worker));
  worker.once('exit', (code) => reject(new Error(`a worker exited with ${code} before listening`)));
});

const stopped = (worker) => new Promise((resolve) => {
  worker.once('exit', (code, signal) => resolve(signal || code));
  worker.process.kill('SIGINT');
});

test('workers replaced as pm2 reloads them leave no request unanswered', async () => {
  cluster.schedulingPolicy = cluster.SCHED_RR;
  cluster.setupPrimary({ exec: path.join(__dirname, '..', 'web', 'server.js'), silent: true });
  const port = await freePort();
  const workers = [];
  for (let i = 0; i < WORKERS; i++) workers.push(await fork(port));

  let replacing = true;
  const outcomes = {};
  const client = async () => {
    while (replacing) {
      const outcome = await get(port);
      outcomes[outcome] = (outcomes[outcome] || 0) + 1;
    }
  };
  const clients = Array.from({ length: CLIENTS }, client);

  const exits = [];
  try {
    for (let i = 0; i < REPLACEMENTS; i++) {
      await new Promise((resolve) => setTimeout(resolve, REPLACE_EVERY_MS));
      workers.push(await fork(port));
      exits.push(stopped(workers.shift()));
    }
  } finally {
    replacing = false;
    await Promise.all(clients);
    exits.push(...workers.map(stopped));
  }
  assert.deepStrictEqual([...new Set(await Promise.all(exits))], [0], 'each worker exits cleanly on SIGINT');
  assert.deepStrictEqual(Object.keys(outcomes), ['ok'], `every request answered: ${JSON.stringify(outcomes)}`);
  assert.ok(outcomes.ok > REPLACEMENTS * 10, `requests all along: ${JSON.stringify(outcomes)}`);
});
