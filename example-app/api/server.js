'use strict';
// The example API: /api/hello, /api/notes (written to and read from every enabled
// engine), /api/jobs (queued on every enabled queue engine for the worker, and the jobs
// it processed) and the health endpoint the load balancer and the operators watch (the LB
// answers the internet's /healthz with up or down only).
const os = require('node:os');
const { loadEnvFile } = require('../lib/env');

loadEnvFile();

const { ALL, enabledEngines, withTimeout } = require('../lib/engines');
const { serve, sendJson, readJson } = require('../lib/serve');
const jobs = require('../lib/jobs');

const engines = enabledEngines();
// The answering server's name, for /api/hello only when SHOW_SERVER_NAME is "true" (as the web page).
const serverName = process.env.SHOW_SERVER_NAME === 'true' ? os.hostname() : undefined;
const jobStore = jobs.storeName(engines.map((e) => e.name));

// Runs `action` on every enabled engine (among `names`); each answers "ok" (with a
// result) or "error". The error's text (it may name the datastore's address) goes to the
// log, and into the answer only when `detail` says so: the health check, which the
// internet never sees.
async function onEach(action, { detail = false, names = ALL.map((e) => e.name) } = {}) {
  const chosen = engines.filter((e) => names.includes(e.name));
  const disabled = names.filter((name) => !chosen.some((e) => e.name === name));
  const results = await Promise.all(chosen.map(async (engine) => {
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
    const report = await onEach((e) => e.ping(), { detail: true });
    for (const r of Object.values(report)) delete r.result;
    return sendJson(res, allOk(report) ? 200 : 503, { host: os.hostname(), engines: report });
  }
  if (req.method === 'GET' && path === '/api/hello') {
    return sendJson(res, 200, { hello: 'world', host: serverName, pid: process.pid });
  }
  if (path === '/api/notes' && req.method === 'POST') {
    const body = await textBody(req, res);
    if (!body) return undefined;
    const note = { text: body.text, at: new Date().toISOString() };
    const report = await onEach(async (e) => { await e.write(note); return null; });
    return sendJson(res, allOk(report) ? 201 : 502, { note, engines: report });
  }
  if (path === '/api/notes' && req.method === 'GET') {
    const report = await onEach((e) => e.read());
    return sendJson(res, allOk(report) ? 200 : 502, { engines: report });
  }
  if (path === '/api/jobs' && req.method === 'POST') {
    const body = await textBody(req, res);
    if (!body) return undefined;
    if (!engines.some((e) => jobs.QUEUE_ENGINES.includes(e.name))) {
      // Not 503: the LB counts a 502/503 against the app server that sent it.
      return sendJson(res, 501, { error: `no queue engine is enabled (${jobs.QUEUE_ENGINES.join(', ')})` });
    }
    const job = jobs.newJob(body.text);
    const report = await onEach(async (e) => { await jobs.publish[e.name].add(job); return null; },
      { names: jobs.QUEUE_ENGINES });
    return sendJson(res, allOk(report) ? 202 : 502, { job, engines: report });
  }
  if (path === '/api/jobs' && req.method === 'GET') {
    if (!jobStore) {
      return sendJson(res, 200, { store: null, jobs: [], note: 'no job store is enabled (postgresql, redis): processed jobs are in the worker\'s log only' });
    }
    try {
      return sendJson(res, 200, { store: jobStore, jobs: await withTimeout(jobs.stores[jobStore].latest(), jobStore) });
    } catch (err) {
      console.error(`${jobStore}: ${err.message}`);
      return sendJson(res, 502, { store: jobStore, error: 'the job store did not answer' });
    }
  }
  return sendJson(res, 404, { error: 'not found' });
}

// A JSON body with a valid `text` (a note's, a job's), or null once the 400 is sent.
async function textBody(req, res) {
  let body;
  try {
    body = await readJson(req);
  } catch (err) {
    sendJson(res, err.status || 400, { error: err.message });
    return null;
  }
  if (!body || !jobs.validText(body.text)) {
    sendJson(res, 400, { error: 'text: a string of 1 to 1000 characters' });
    return null;
  }
  return body;
}

serve('api', Number(process.env.PORT || 3001), handle, async () => {
  await Promise.allSettled(engines.map((e) => e.close()));
});
