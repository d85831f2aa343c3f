'use strict';
// The example API: /api/hello, /api/notes (written to and read from every enabled
// engine) and the health endpoint the load balancer and the operators watch (the LB
// answers the internet's /healthz with up or down only).
const os = require('node:os');
const { loadEnvFile } = require('../lib/env');

loadEnvFile();

const { ALL, enabledEngines, withTimeout } = require('../lib/engines');
const { serve, sendJson, readJson } = require('../lib/serve');

const engines = enabledEngines();
// The answering server's name, for /api/hello only when SHOW_SERVER_NAME is "true" (as the web page).
const serverName = process.env.SHOW_SERVER_NAME === 'true' ? os.hostname() : undefined;
const disabled = ALL.filter((e) => !engines.includes(e)).map((e) => e.name);

// Runs `action` on every enabled engine; each answers "ok" (with a result) or "error".
// The error's text (it may name the datastore's address) goes to the log, and into the
// answer only when `detail` says so: the health check, which the internet never sees.
async function onEach(action, detail = false) {
  const results = await Promise.all(engines.map(async (engine) => {
    try {
      return [engine.name, { status: 'ok', result: await withTimeout(action(engine), engine.name) }];
    } catch (err) {
      console.error(`${engine.name}: ${err.message}`);
      return [engine.name, detail ? { status: 'error', error: err.message } : { status: 'error' }];
    }
  }));
  for (const name of disabled) results.push([name, { status: 'disabled' }]);
  return Object.fromEntries(results);
}

const allOk = (report) => Object.values(report).every((r) => r.status !== 'error');

async function handle(req, res) {
  const path = new URL(req.url, 'http://localhost').pathname;
  if (req.method === 'GET' && path === '/healthz') {
    const report = await onEach((e) => e.ping(), true);
    for (const r of Object.values(report)) delete r.result;
    return sendJson(res, allOk(report) ? 200 : 503, { host: os.hostname(), engines: report });
  }
  if (req.method === 'GET' && path === '/api/hello') {
    return sendJson(res, 200, { hello: 'world', host: serverName, pid: process.pid });
  }
  if (path === '/api/notes' && req.method === 'POST') {
    let body;
    try {
      body = await readJson(req);
    } catch (err) {
      return sendJson(res, err.status || 400, { error: err.message });
    }
    if (typeof body.text !== 'string' || !body.text || body.text.length > 1000) {
      return sendJson(res, 400, { error: 'text: a string of 1 to 1000 characters' });
    }
    const note = { text: body.text, at: new Date().toISOString() };
    const report = await onEach(async (e) => { await e.write(note); return null; });
    return sendJson(res, allOk(report) ? 201 : 502, { note, engines: report });
  }
  if (path === '/api/notes' && req.method === 'GET') {
    const report = await onEach((e) => e.read());
    return sendJson(res, allOk(report) ? 200 : 502, { engines: report });
  }
  return sendJson(res, 404, { error: 'not found' });
}

serve('api', Number(process.env.PORT || 3001), handle, async () => {
  await Promise.allSettled(engines.map((e) => e.close()));
});
