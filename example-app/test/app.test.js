'use strict';
// Starts the two apps with no engine configured and checks what they answer.
const test = require('node:test');
const assert = require('node:assert');
const { freePort, start: startScript, stop } = require('./processes');

const start = (app, extra) => startScript(`${app}/server.js`, extra);

test('by default no answer names the server that answered', async () => {
  const web = await start('web');
  const api = await start('api');
  try {
    const res = await fetch(web.url + '/');
    assert.strictEqual(res.status, 200);
    assert.strictEqual(res.headers.get('x-served-by'), null);
    const hostname = require('node:os').hostname();
    assert.ok(!(await res.text()).includes(hostname), 'the page does not name the host');
    const hello = await (await fetch(api.url + '/api/hello')).json();
    assert.strictEqual(hello.host, undefined);
  } finally {
    assert.strictEqual(await stop(web), 0, 'SIGINT closes the server and exits cleanly');
    await stop(api);
  }
});

test('SHOW_SERVER_NAME=true names the server in the page, its header and /api/hello', async () => {
  const hostname = require('node:os').hostname();
  const web = await start('web', { SHOW_SERVER_NAME: 'true' });
  const api = await start('api', { SHOW_SERVER_NAME: 'true' });
  try {
    const res = await fetch(web.url + '/');
    assert.strictEqual(res.headers.get('x-served-by'), hostname);
    assert.match(await res.text(), new RegExp(`<strong id="host">${hostname}</strong>`));
    assert.strictEqual((await (await fetch(api.url + '/api/hello')).json()).host, hostname);
  } finally {
    await stop(web);
    await stop(api);
  }
});

test('the API answers with every engine disabled', async () => {
  const api = await start('api');
  try {
    const hello = await (await fetch(api.url + '/api/hello')).json();
    assert.strictEqual(hello.hello, 'world');
    const health = await fetch(api.url + '/healthz');
    assert.strictEqual(health.status, 200);
    const report = (await health.json()).engines;
    assert.deepStrictEqual(Object.keys(report).sort(), ['mongodb', 'postgresql', 'rabbitmq', 'redis']);
    assert.ok(Object.values(report).every((r) => r.status === 'disabled'));
    const bad = await fetch(api.url + '/api/notes', { method: 'POST', body: '{"text": 5}' });
    assert.strictEqual(bad.status, 400);
    const created = await fetch(api.url + '/api/notes', { method: 'POST', body: '{"text": "hi"}' });
    assert.strictEqual(created.status, 201);
    assert.strictEqual((await fetch(api.url + '/nowhere')).status, 404);
  } finally {
    assert.strictEqual(await stop(api), 0);
  }
});

test("an engine's error text (its address) stays out of the notes' answer, in the health check's", async () => {
  const closed = await freePort();   // nothing listens there: the engine refuses at once
  const api = await start('api', {
    POSTGRESQL_HOST: '127.0.0.1', POSTGRESQL_PORT: String(closed), POSTGRESQL_USER: 'app',
    POSTGRESQL_PASSWORD: 'x', POSTGRESQL_DATABASE: 'app', PLATFORM_CA_FILE: __filename,
  });
  try {
    const notes = await fetch(api.url + '/api/notes');
    assert.strictEqual(notes.status, 502);
    const text = await notes.text();
    assert.deepStrictEqual(JSON.parse(text).engines.postgresql, { status: 'error' });
    assert.ok(!text.includes('127.0.0.1') && !text.includes(String(closed)), text);
    const health = await fetch(api.url + '/healthz');
    assert.strictEqual(health.status, 503);
    assert.match((await health.json()).engines.postgresql.error, /ECONNREFUSED/);
  } finally {
    assert.strictEqual(await stop(api), 0);
  }
});

test('a notes table that could not be made at start is made by a later request', async () => {
  const { ALL } = require('../lib/engines');
  const postgresql = ALL.find((e) => e.name === 'postgresql');
  const queries = [];
  let down = true;   // the datastore does not answer yet
  postgresql.client = {
    query: async (sql) => {
      queries.push(sql.split(' ')[0]);
      if (down) throw new Error('connect ECONNREFUSED');
      return { rows: [] };
    },
  };
  postgresql.ready = null;
  await assert.rejects(postgresql.write({ text: 'a', at: new Date().toISOString() }), /ECONNREFUSED/);
  down = false;
  await postgresql.write({ text: 'b', at: new Date().toISOString() });
  assert.deepStrictEqual(queries, ['CREATE', 'CREATE', 'INSERT']);
});

test('a note Redis refused inside its transaction is an error, not a note written', async () => {
  const { ALL } = require('../lib/engines');
  const redis = ALL.find((e) => e.name === 'redis');
  let answers = [[null, 1], [null, 'OK']];
  const queued = [];
  const multi = {
    lpush: (...args) => { queued.push(['lpush', ...args]); return multi; },
    ltrim: (...args) => { queued.push(['ltrim', ...args]); return multi; },
    exec: async () => answers,   // as ioredis resolves EXEC: each command's [error, result]
  };
  redis.client = { multi: () => multi };
  await redis.write({ text: 'a', at: new Date().toISOString() });
  assert.deepStrictEqual(queued.map(([name]) => name), ['lpush', 'ltrim']);
  answers = [[new Error('WRONGTYPE Operation against a key holding the wrong kind of value'), null], [null, 'OK']];
  await assert.rejects(redis.write({ text: 'b', at: new Date().toISOString() }), /WRONGTYPE/);
});
