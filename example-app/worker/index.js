'use strict';
// The example job worker (no HTTP port): takes the jobs the API queued on every enabled
// queue engine (RabbitMQ, MongoDB), one at a time, and records each in the job store
// (PostgreSQL, else Redis, else only this log). pm2 runs one, in fork mode: it says
// "ready" once consuming; on SIGINT (pm2 reload/stop) it takes no new job, finishes the
// one in hand, closes its connections and exits 0.
const { loadEnvFile } = require('../lib/env');

loadEnvFile();

const { enabledEngines, withTimeout } = require('../lib/engines');
const jobs = require('../lib/jobs');

const configured = (name) => Boolean(process.env[`${name.toUpperCase()}_HOST`]);
const queues = jobs.QUEUE_ENGINES.filter(configured);
const store = jobs.storeName(jobs.STORE_ENGINES.filter(configured));
const engines = enabledEngines([...queues, store].filter(Boolean));
const consumers = queues.map((name) => jobs.consumers[name]());

async function handle(job, engine) {
  const done = { id: job.id, engine, text: job.text, queuedAt: job.queuedAt, processedAt: new Date().toISOString() };
  if (store) {
    await withTimeout(jobs.stores[store].record(done), store);
    console.log(`job ${done.id} from ${engine} processed, recorded in ${store}`);
  } else {
    console.log(`job processed (no job store enabled, recorded here only): ${JSON.stringify(done)}`);
  }
}

const ready = () => { if (process.send) process.send('ready'); };

let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  console.log(`worker: ${signal}, finishing the job in hand`);
  await Promise.allSettled(consumers.map((c) => c.stop()));
  await Promise.allSettled(engines.map((e) => e.close()));
  process.exit(0);
}
process.on('SIGINT', () => stop('SIGINT'));
process.on('SIGTERM', () => stop('SIGTERM'));

if (consumers.length === 0) {
  console.log('worker: no queue engine is enabled (rabbitmq, mongodb), idle');
  setInterval(() => {}, 1 << 30);   // stay up, as pm2 expects, until told to stop
  ready();
} else {
  console.log(`worker: jobs from ${queues.join(', ')}; recorded in ${store || 'this log only'}`);
  Promise.all(consumers.map((c) => c.start(handle))).then(() => {
    if (!stopping) { console.log('worker: ready'); ready(); }
  });
}
