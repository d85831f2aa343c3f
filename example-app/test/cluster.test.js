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
const KILL_TIMEOUT_MS = 8000;    // pm2's kill_timeout (cloudinit/app_server/ecosystem.config.js)
const NGINX_KEEPALIVE_TIMEOUT_MS = 1000;   // the app server's upstreams (cloudinit/app_server/site.conf)

// One GET, on a new connection unless an agent keeps them: "ok", an error's name, or "no answer".
const get = (port, agent = false) => new Promise((resolve) => {
  const req = http.get({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
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

// Its exit code or signal once SIGINT stopped it; "still running" after pm2's kill_timeout.
const stopped = (worker) => new Promise((resolve) => {
  const kill = setTimeout(() => { resolve('still running'); worker.process.kill('SIGKILL'); }, KILL_TIMEOUT_MS);
  worker.once('exit', (code, signal) => { clearTimeout(kill); resolve(signal || code); });
  worker.process.kill('SIGINT');
});

// Workers replaced one by one while CLIENTS clients send GETs: what each GET got.
async function replacedUnderLoad(agent) {
  cluster.schedulingPolicy = cluster.SCHED_RR;
  cluster.setupPrimary({ exec: path.join(__dirname, '..', 'web', 'server.js'), silent: true });
  const port = await freePort();
  const workers = [];
  for (let i = 0; i < WORKERS; i++) workers.push(await fork(port));

  let replacing = true;
  const outcomes = {};
  const client = async () => {
    while (replacing) {
      const outcome = await get(port, agent);
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
    // The load goes on until the replaced workers have exited: one kept running by a
    // connection in use would be killed with the request it holds.
    await Promise.all(exits);
  } finally {
    replacing = false;
    await Promise.all(clients);
    exits.push(...workers.map(stopped));
  }
  return { outcomes, exits: [...new Set(await Promise.all(exits))] };
}

test('workers replaced as pm2 reloads them leave no request unanswered', async () => {
  const { outcomes, exits } = await replacedUnderLoad(false);
  assert.deepStrictEqual(exits, [0], 'each worker exits cleanly on SIGINT');
  assert.deepStrictEqual(Object.keys(outcomes), ['ok'], `every request answered: ${JSON.stringify(outcomes)}`);
  assert.ok(outcomes.ok > REPLACEMENTS * 10, `requests all along: ${JSON.stringify(outcomes)}`);
});

// As the app server's nginx keeps connections to the apps: each reused, the last used first,
// closed after 1 s idle. A request sent on a kept connection the worker closes is lost (nginx
// does not send a POST again), and one the worker keeps answering on would keep it running
// until pm2 kills it, and the request it is answering with it.
test('workers replaced under kept-alive connections answer every request and exit before pm2 kills them', async () => {
  const agent = new http.Agent({ keepAlive: true, scheduling: 'lifo', timeout: NGINX_KEEPALIVE_TIMEOUT_MS });
  const { outcomes, exits } = await replacedUnderLoad(agent);
  agent.destroy();
  assert.deepStrictEqual(exits, [0], 'each worker exits cleanly on SIGINT, before pm2 would kill it');
  assert.deepStrictEqual(Object.keys(outcomes), ['ok'], `every request answered: ${JSON.stringify(outcomes)}`);
  assert.ok(outcomes.ok > REPLACEMENTS * 10, `requests all along: ${JSON.stringify(outcomes)}`);
});
