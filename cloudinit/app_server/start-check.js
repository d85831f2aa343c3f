// The start check: each process of a release that serves a route started once beside the
// running apps, as pm2 runs it (a worker of a cluster primary, here this script, its PORT a
// free one); it must say ready, and the one that answers the health path (if asked) must
// answer it 200; then it is stopped as pm2 stops one (SIGINT, SIGKILL after the kill
// timeout). Run as the app user by platform-app-exec, in the release, with the apps'
// environment, before pm2's reload, which would delete the old workers once its new ones'
// listen_timeout ran out: by a deploy before a server switches to a new release (`node -
// SPEC`, sent on stdin as deploy/remote.sh is), and by platform-apps-start-check, from its
// copy on each app server, before an env push reloads the apps with a new .env.
//
// SPEC: {"processes": [{"name", "script", "health": path or null}], "ready_ms", "stop_ms",
// "health_ms"}. Prints one line per process; exit 1 if any failed, each failure followed by
// the last lines the process wrote, indented.
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');

const SAID_LINES = 20;
const spec = JSON.parse(process.argv[2]);
const seconds = (since) => `${((Date.now() - since) / 1000).toFixed(1)}s`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

function get(port, urlPath) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, timeout: 2000, agent: false }, (res) => {
      res.resume();
      res.once('end', () => resolve(String(res.statusCode)));
    });
    req.once('timeout', () => req.destroy(new Error('no answer in 2s')));
    req.once('error', (err) => resolve(err.code || err.message));
  });
}

// The first 200 at `urlPath` before `deadline`, or why not: the last answer, or the exit.
async function healthy(port, urlPath, deadline, exited) {
  let last = 'none';
  while (Date.now() < deadline) {
    const answer = await Promise.race([get(port, urlPath), exited]);
    if (answer.exit) return `it exited (${answer.exit}) before ${urlPath} answered 200`;
    if (answer === '200') return null;
    last = answer;
    await sleep(500);
  }
  return `${urlPath} did not answer 200 within ${spec.health_ms / 1000}s (last: ${last})`;
}

// Stopped as pm2 stops a worker: one that outlives the kill timeout would hold each reload as long.
async function stop(worker, exited) {
  const stopping = Date.now();
  worker.process.kill('SIGINT');
  if (await Promise.race([exited, sleep(spec.stop_ms).then(() => null)])) return `stopped in ${seconds(stopping)}`;
  worker.process.kill('SIGKILL');
  await exited;
  return `still running ${spec.stop_ms / 1000}s after SIGINT: killed, as pm2 would`;
}

async function check({ name, script, health }) {
  const port = await freePort();
  const said = [];
  const keep = (chunk) => {
    said.push(...chunk.toString().split('\n').filter((line) => line.trim()));
    said.splice(0, said.length - SAID_LINES);
  };
  cluster.setupPrimary({ exec: path.resolve(script), args: [], silent: true });
  const started = Date.now();
  const worker = cluster.fork({ PORT: String(port) });
  worker.process.stdout.on('data', keep);
  worker.process.stderr.on('data', keep);
  worker.process.on('error', () => {});   // a signal sent as it exited: its exit says the rest
  const exited = new Promise((resolve) => worker.once('exit', (code, signal) => resolve({
    exit: signal ? `signal ${signal}` : `code ${code}`,
  })));
  const ready = new Promise((resolve) => worker.on('message', (m) => { if (m === 'ready') resolve({ ready: true }); }));
  const first = await Promise.race([ready, exited, sleep(spec.ready_ms).then(() => ({}))]);
  const notes = [];
  let problem = null;
  if (first.exit) problem = `it exited (${first.exit}) before it said ready`;
  else if (first.ready) notes.push(`ready in ${seconds(started)}`);
  else notes.push(`no 'ready' within ${spec.ready_ms / 1000}s (pm2 waits as long for each worker)`);
  if (!problem && health) {
    problem = await healthy(port, health, Date.now() + spec.health_ms, exited);
    if (!problem) notes.push(`${health} 200`);
  }
  if (!worker.isDead()) notes.push(await stop(worker, exited));
  return { name, problem, notes, said };
}

async function main() {
  const results = await Promise.all(spec.processes.map(check));
  for (const { name, problem, notes, said } of results) {
    if (!problem) {
      console.log(`${name}: started (${notes.join(', ')})`);
      continue;
    }
    console.log(`${name}: FAILED: ${problem}${notes.length ? ` (${notes.join(', ')})` : ''}`);
    for (const line of said.length ? said : ['(it wrote nothing)']) console.log(`  ${name}: ${line}`);
  }
  process.exit(results.some((r) => r.problem) ? 1 : 0);
}

main().catch((err) => {
  console.error(`start check: ${err.stack || err}`);
  process.exit(2);
});
