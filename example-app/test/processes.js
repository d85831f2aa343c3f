'use strict';
// Starting and stopping the apps as pm2 does (IPC for "ready", SIGINT to stop), for the tests.
const { spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');

const freePort = () => new Promise((resolve) => {
  const server = net.createServer().listen(0, '127.0.0.1', () => {
    const { port } = server.address();
    server.close(() => resolve(port));
  });
});

const READY_MS = 10000;   // pm2's listen_timeout on the servers

// `script` relative to the app, e.g. "api/server.js": the child, its output so far, and
// `ready`, which resolves once it said "ready" (rejects if it exits first).
async function spawnApp(script, extra = {}) {
  const port = await freePort();
  const env = { PATH: process.env.PATH, PORT: String(port), ...extra };
  const child = spawn(process.execPath, [path.join(__dirname, '..', script)], {
    env, stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (text) => { output += text; });
  child.stderr.setEncoding('utf8').on('data', (text) => { output += text; });
  const ready = new Promise((resolve, reject) => {
    child.once('message', (m) => (m === 'ready' ? resolve() : reject(new Error(String(m)))));
    child.once('exit', (code) => reject(new Error(`${script} exited with ${code}: ${output}`)));
  });
  ready.catch(() => {});   // awaited by whoever wants it
  return { child, ready, url: `http://127.0.0.1:${port}`, output: () => output };
}

// Spawned and ready; one that is not ready in time is killed and the test fails.
async function start(script, extra = {}) {
  const app = await spawnApp(script, extra);
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${script} not ready in ${READY_MS} ms: ${app.output()}`)), READY_MS);
  });
  try {
    await Promise.race([app.ready, late]);
  } catch (err) {
    app.child.kill('SIGKILL');
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return app;
}

async function stop({ child }) {
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  child.kill('SIGINT');
  return exited;
}

module.exports = { freePort, spawnApp, start, stop };
