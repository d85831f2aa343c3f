'use strict';
// The job queue: the worker's life under pm2, the API's /api/jobs, and the queues'
// consumers on stand-ins for MongoDB's collection and RabbitMQ's channel.
const test = require('node:test');
const assert = require('node:assert');
const { freePort, spawnApp, start, stop } = require('./processes');
const { ALL } = require('../lib/engines');
const { MongoQueue } = require('../lib/mongo-queue');
const jobs = require('../lib/jobs');

const until = async (check, what, ms = 5000) => {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 20))) {
    if (check()) return;
  }
  throw new Error(`no ${what} in ${ms} ms`);
};

test('with no queue engine the worker says ready, idles, and exits 0 on SIGINT', async () => {
  const worker = await start('worker/index.js');
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.strictEqual(worker.child.exitCode, null, 'it stays up');
  assert.match(worker.output(), /no queue engine is enabled/);
  assert.strictEqual(await stop(worker), 0);
});

test('a worker whose RabbitMQ does not answer keeps trying, is not ready, and exits 0 on SIGINT', async () => {
  const closed = await freePort();
  const worker = await spawnApp('worker/index.js', {
    RABBITMQ_HOST: '127.0.0.1', RABBITMQ_PORT: String(closed), RABBITMQ_USER: 'app',
    RABBITMQ_PASSWORD: 'x', RABBITMQ_DATABASE: 'app', PLATFORM_CA_FILE: __filename,
  });
  let ready = false;
  worker.ready.then(() => { ready = true; }, () => {});
  await until(() => /ECONNREFUSED/.test(worker.output()), 'connection error logged');
  assert.strictEqual(ready, false);
  assert.strictEqual(await stop(worker), 0);
});

test("/api/jobs with every engine disabled: the text is checked, nothing is queued, and it says why", async () => {
  const api = await start('api/server.js');
  try {
    const post = (body) => fetch(api.url + '/api/jobs', { method: 'POST', body });
    for (const bad of ['{"text": 5}', '{"text": ""}', JSON.stringify({ text: 'x'.repeat(1001) }), '{}', 'null', 'not json']) {
      const res = await post(bad);
      assert.strictEqual(res.status, 400, bad);
      assert.ok((await res.json()).error, bad);
    }
    const none = await post('{"text": "a job"}');
    assert.strictEqual(none.status, 501);
    assert.match((await none.json()).error, /no queue engine is enabled \(rabbitmq, mongodb\)/);
    const list = await fetch(api.url + '/api/jobs');
    assert.strictEqual(list.status, 200);
    const shown = await list.json();
    assert.deepStrictEqual([shown.store, shown.jobs], [null, []]);
    assert.match(shown.note, /worker's log only/);
    assert.strictEqual((await fetch(api.url + '/api/jobs', { method: 'PUT' })).status, 404);
  } finally {
    assert.strictEqual(await stop(api), 0);
  }
});

test("an engine's error text (its address) stays out of /api/jobs' answers", async () => {
  const closed = await freePort();
  const api = await start('api/server.js', {
    RABBITMQ_HOST: '127.0.0.1', RABBITMQ_PORT: String(closed), RABBITMQ_USER: 'app',
    RABBITMQ_PASSWORD: 'x', RABBITMQ_DATABASE: 'app',
    POSTGRESQL_HOST: '127.0.0.1', POSTGRESQL_PORT: String(closed), POSTGRESQL_USER: 'app',
    POSTGRESQL_PASSWORD: 'x', POSTGRESQL_DATABASE: 'app', PLATFORM_CA_FILE: __filename,
  });
  try {
    const queued = await fetch(api.url + '/api/jobs', { method: 'POST', body: '{"text": "a job"}' });
    assert.strictEqual(queued.status, 502);
    const text = await queued.text();
    const answer = JSON.parse(text);
    assert.deepStrictEqual(answer.engines, { rabbitmq: { status: 'error' }, mongodb: { status: 'disabled' } });
    assert.strictEqual(answer.job.text, 'a job');
    assert.ok(jobs.isJob(answer.job), text);
    const list = await fetch(api.url + '/api/jobs');
    assert.strictEqual(list.status, 502);
    const listed = await list.text();
    assert.deepStrictEqual(JSON.parse(listed), { store: 'postgresql', error: 'the job store did not answer' });
    for (const body of [text, listed]) assert.ok(!body.includes('127.0.0.1') && !body.includes(String(closed)), body);
    await until(() => /rabbitmq: .*ECONNREFUSED/.test(api.output()), 'detail in the log');
  } finally {
    assert.strictEqual(await stop(api), 0);
  }
});

// A stand-in for a MongoDB collection: the few queries MongoQueue makes.
function fakeCollection() {
  const docs = [];
  let next = 0;
  const matches = (doc, query) => Object.entries(query).every(([key, want]) => {
    if (want === null) return doc[key] === undefined || doc[key] === null;
    if (want && want.$lte) return doc[key] <= want.$lte;
    if (want && want.$gt) return doc[key] > want.$gt;
    return doc[key] === want;
  });
  const apply = (doc, update) => {
    for (const [key, by] of Object.entries(update.$inc || {})) doc[key] = (doc[key] || 0) + by;
    Object.assign(doc, update.$set || {});
  };
  return {
    docs,
    async createIndex() {},
    async insertOne(doc) { next += 1; docs.push({ _id: next, ...doc }); return { insertedId: next }; },
    async findOneAndUpdate(query, update, options) {
      assert.deepStrictEqual(options, { sort: { _id: 1 }, returnDocument: 'after' });
      const doc = docs.find((d) => matches(d, query));
      if (doc) apply(doc, update);
      return doc ? { ...doc } : null;
    },
    async updateOne(query, update) {
      const doc = docs.find((d) => matches(d, query));
      if (doc) apply(doc, update);
      return { modifiedCount: doc ? 1 : 0 };
    },
  };
}

test('the MongoDB queue hands a job to one taker, and again only once its visibility timed out', async () => {
  const collection = fakeCollection();
  const queue = new MongoQueue({ collection: () => collection }, 'jobs', { visibility: 0.2 });
  const job = jobs.newJob('a job');
  await queue.add(job);
  const first = await queue.get();
  assert.deepStrictEqual(first.payload, job);
  assert.strictEqual(await queue.get(), null, 'hidden from the next taker');
  await new Promise((resolve) => setTimeout(resolve, 250));
  await assert.rejects(queue.ack(first.ack), /no longer held/, 'too late: another may take it now');
  const again = await queue.get();
  assert.strictEqual(again.tries, 2, 'not acknowledged in time: taken again');
  await queue.ack(again.ack);
  await new Promise((resolve) => setTimeout(resolve, 250));
  assert.strictEqual(await queue.get(), null, 'acknowledged: done');
});

test('the MongoDB consumer records each job once, and on stop finishes the one in hand', async () => {
  const collection = fakeCollection();
  const mongodb = ALL.find((e) => e.name === 'mongodb');
  mongodb.db = { collection: () => collection };
  const queue = new MongoQueue(mongodb.db, 'jobs');
  const [a, b, c] = ['a', 'b', 'c'].map((text) => jobs.newJob(text));
  for (const job of [a, b, c]) await queue.add(job);

  const consumer = jobs.consumers.mongodb();
  consumer.pollMs = 20;
  const recorded = [];
  let release;
  const handle = async (job, engine) => {
    if (job.id === b.id) {   // b takes a while: the worker is stopped meanwhile
      await new Promise((resolve) => { release = resolve; });
    }
    recorded.push([job.text, engine]);
  };
  await consumer.start(handle);
  await until(() => release, 'job b in hand');
  const stopped = consumer.stop();
  let done = false;
  stopped.then(() => { done = true; });
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.strictEqual(done, false, 'stop waits for the job in hand');
  release();
  await stopped;
  assert.deepStrictEqual(recorded, [['a', 'mongodb'], ['b', 'mongodb']], 'c is not taken after stop');
  assert.deepStrictEqual(collection.docs.map((d) => Boolean(d.deleted)), [true, true, false]);
});

test('the RabbitMQ consumer acknowledges a recorded job, requeues one not recorded, drops a non-job', async () => {
  const calls = [];
  const consumer = jobs.consumers.rabbitmq();
  consumer.retryMs = 10;
  consumer.ch = {
    ack: (m) => calls.push(['ack', m.n]),
    nack: (m, all, requeue) => calls.push([requeue ? 'requeue' : 'drop', m.n]),
    cancel: async () => calls.push(['cancel']),
  };
  consumer.tag = 'tag';
  const message = (n, body) => ({ n, content: Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)) });
  let release;
  consumer.handle = async (job) => {
    if (job.text === 'fails') throw new Error('store down');
    if (job.text === 'slow') await new Promise((resolve) => { release = resolve; });
  };
  consumer.deliver(message(1, jobs.newJob('ok')));
  await consumer.inHand;
  consumer.deliver(message(2, jobs.newJob('fails')));
  await consumer.inHand;
  consumer.deliver(message(3, 'not json'));
  await consumer.inHand;
  consumer.deliver(message(4, { ...jobs.newJob('no uuid'), id: 'x' }));
  await consumer.inHand;
  consumer.deliver(message(5, jobs.newJob('slow')));
  await until(() => release, 'the slow job in hand');
  const stopped = consumer.stop();
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepStrictEqual(calls.at(-1), ['cancel'], 'no new delivery; the job in hand not done yet');
  release();
  await stopped;
  assert.deepStrictEqual(calls, [['ack', 1], ['requeue', 2], ['drop', 3], ['drop', 4], ['cancel'], ['ack', 5]]);
});
