'use strict';
// Jobs: queued by the API on every enabled queue engine (RabbitMQ, MongoDB), taken one at
// a time by the worker, and recorded, once processed, in the job store the API reads:
// PostgreSQL when enabled, else Redis, else nowhere but the worker's log.
const crypto = require('node:crypto');
const { ALL, transaction } = require('./engines');
const { MongoQueue } = require('./mongo-queue');

const QUEUE = 'jobs';
const RETRY_MS = 5000;   // an engine that did not answer is asked again this much later
const POLL_MS = 1000;    // an empty MongoDB queue is looked at again this much later
const SHOWN = 20;

const engine = (name) => ALL.find((e) => e.name === name);
const QUEUE_ENGINES = ['rabbitmq', 'mongodb'];
const STORE_ENGINES = ['postgresql', 'redis'];

// A job's (and a note's) text: what the API takes.
const validText = (text) => typeof text === 'string' && text.length >= 1 && text.length <= 1000;

function newJob(text) {
  return { id: crypto.randomUUID(), text, queuedAt: new Date().toISOString() };
}

// Whether a message is a job (anything else on the queue is dropped, and said so).
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
function isJob(job) {
  return Boolean(job) && UUID.test(job.id) && validText(job.text) && !Number.isNaN(Date.parse(job.queuedAt));
}

// An interruptible pause: `wake()` ends it at once (the worker stopping).
function pause(ms) {
  let wake;
  const done = new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake = () => { clearTimeout(timer); resolve(); };
  });
  return { done, wake };
}

// Queuing, for the API: RabbitMQ on a confirm channel of the shared connection, so
// "queued" means the broker has it; MongoDB as one document.
const publish = {
  rabbitmq: {
    channel: null,
    async confirmChannel() {
      if (!this.channel) {
        this.channel = engine('rabbitmq').link().then(async ({ conn }) => {
          const ch = await conn.createConfirmChannel();
          ch.on('error', (err) => console.error(`rabbitmq jobs channel: ${err.message}`));
          ch.on('close', () => { this.channel = null; });
          await ch.assertQueue(QUEUE, { durable: true });
          return ch;
        });
        this.channel.catch(() => { this.channel = null; });
      }
      return this.channel;
    },
    async add(job) {
      const ch = await this.confirmChannel();
      await new Promise((resolve, reject) => {
        ch.sendToQueue(QUEUE, Buffer.from(JSON.stringify(job)),
          { persistent: true, contentType: 'application/json', messageId: job.id },
          (err) => (err ? reject(err) : resolve()));
      });
    },
  },
  mongodb: {
    async add(job) { await new MongoQueue(engine('mongodb').db, QUEUE).add(job); },
  },
};

// Consuming, for the worker. Each consumer: start(handle) resolves once it consumes
// (retrying while its engine does not answer); stop() takes no new job, waits for the
// one in hand and closes. `handle(job)` rejects when the job could not be recorded: the
// job goes back on the queue.
class RabbitConsumer {
  constructor() { this.name = 'rabbitmq'; this.inHand = Promise.resolve(); this.retryMs = RETRY_MS; }

  start(handle) {
    this.handle = handle;
    return new Promise((resolve) => { this.consuming = resolve; this.connect(); });
  }

  async connect() {
    if (this.stopping) return;
    try {
      const conn = await engine('rabbitmq').open();
      this.conn = conn;
      conn.on('error', (err) => console.error(`rabbitmq: ${err.message}`));
      conn.on('close', () => {
        this.conn = null;
        if (!this.stopping) { console.error('rabbitmq: connection lost, reconnecting'); this.retry(); }
      });
      const ch = await conn.createChannel();
      this.ch = ch;
      ch.on('error', (err) => console.error(`rabbitmq jobs channel: ${err.message}`));
      // The channel lost (the broker closed it): start again on a new connection.
      ch.on('close', () => { if (!this.stopping && this.conn === conn) conn.close().catch(() => {}); });
      await ch.assertQueue(QUEUE, { durable: true });
      await ch.prefetch(1);   // one job in hand at a time
      this.tag = (await ch.consume(QUEUE, (message) => { if (message) this.deliver(message); })).consumerTag;
      console.log('rabbitmq: consuming jobs');
      this.consuming();
    } catch (err) {
      console.error(`rabbitmq: ${err.message}`);
      if (this.conn) this.conn.close().catch(() => {});
      else this.retry();
    }
  }

  retry() {
    if (this.stopping || this.retrying) return;   // a failed connect may also close
    this.retrying = true;
    this.wait = pause(this.retryMs);
    this.wait.done.then(() => { this.retrying = false; this.connect(); });
  }

  deliver(message) {
    const ch = this.ch;
    this.inHand = (async () => {
      let job;
      try {
        job = JSON.parse(message.content.toString());
      } catch { /* not JSON: dropped below */ }
      if (!isJob(job)) {
        console.error('rabbitmq: a message that is not a job, dropped');
        return ch.nack(message, false, false);
      }
      try {
        await this.handle(job, this.name);
        ch.ack(message);
      } catch (err) {
        console.error(`rabbitmq: job ${job.id} not recorded (${err.message}), requeued`);
        await pause(this.retryMs).done;   // not at once: the store may need a while
        ch.nack(message, false, true);
      }
    })().catch((err) => console.error(`rabbitmq: ${err.message}`));   // the channel closed under us
  }

  async stop() {
    this.stopping = true;
    if (this.wait) this.wait.wake();
    if (this.ch && this.tag) await this.ch.cancel(this.tag).catch(() => {});
    await this.inHand;
    if (this.conn) await this.conn.close().catch(() => {});
  }
}

class MongoConsumer {
  constructor() { this.name = 'mongodb'; this.retryMs = RETRY_MS; this.pollMs = POLL_MS; }

  async start(handle) {
    this.queue = new MongoQueue(engine('mongodb').db, QUEUE);
    for (;;) {
      if (this.stopping) return;
      try {
        await this.queue.createIndexes();   // the first answer: connected
        break;
      } catch (err) {
        console.error(`mongodb: ${err.message}`);
        this.wait = pause(this.retryMs);
        await this.wait.done;
      }
    }
    console.log('mongodb: consuming jobs');
    this.loop = this.poll(handle);
  }

  async poll(handle) {
    while (!this.stopping) {
      let wait = this.pollMs;
      try {
        const message = await this.queue.get();
        if (message && !isJob(message.payload)) {
          console.error('mongodb: a message that is not a job, dropped');
          await this.queue.ack(message.ack);
          wait = 0;
        } else if (message) {
          try {
            await handle(message.payload, this.name);
            await this.queue.ack(message.ack);
            wait = 0;
          } catch (err) {
            // Not acknowledged: visible again once its visibility times out.
            console.error(`mongodb: job ${message.payload.id} not recorded (${err.message}), left to time out`);
            wait = this.retryMs;
          }
        }
      } catch (err) {
        console.error(`mongodb: ${err.message}`);
        wait = this.retryMs;
      }
      if (wait && !this.stopping) {
        this.wait = pause(wait);
        await this.wait.done;
      }
    }
  }

  async stop() {
    this.stopping = true;
    if (this.wait) this.wait.wake();
    await this.loop;   // the worker closes the engine's client
  }
}

const consumers = { rabbitmq: () => new RabbitConsumer(), mongodb: () => new MongoConsumer() };

// The job store: one engine object with record(done) and latest().
const stores = {
  postgresql: {
    ready: null,
    table(pg) {
      if (!this.ready) {
        this.ready = pg.client.query(`CREATE TABLE IF NOT EXISTS jobs (
          id uuid NOT NULL, engine text NOT NULL, text text NOT NULL,
          queued_at timestamptz NOT NULL, processed_at timestamptz NOT NULL, PRIMARY KEY (id, engine))`);
        this.ready.catch(() => { this.ready = null; });   // tried again by the next job
      }
      return this.ready;
    },
    // A job delivered again (at least once) is recorded once.
    async record(done) {
      const pg = engine('postgresql');
      await this.table(pg);
      await pg.client.query(
        'INSERT INTO jobs (id, engine, text, queued_at, processed_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING',
        [done.id, done.engine, done.text, done.queuedAt, done.processedAt]);
    },
    async latest() {
      const pg = engine('postgresql');
      await this.table(pg);
      const { rows } = await pg.client.query(
        'SELECT id, engine, text, queued_at, processed_at FROM jobs ORDER BY processed_at DESC LIMIT $1', [SHOWN]);
      return rows.map((r) => ({
        id: r.id, engine: r.engine, text: r.text,
        queuedAt: new Date(r.queued_at).toISOString(), processedAt: new Date(r.processed_at).toISOString(),
      }));
    },
  },
  // A list of the last 100 (a job delivered twice shows twice).
  redis: {
    async record(done) {
      await transaction(engine('redis').client.multi().lpush('jobs', JSON.stringify(done)).ltrim('jobs', 0, 99));
    },
    async latest() { return (await engine('redis').client.lrange('jobs', 0, SHOWN - 1)).map((t) => JSON.parse(t)); },
  },
};

// Which engine stores processed jobs, given the enabled ones (by name): the first of
// STORE_ENGINES enabled, or null.
const storeName = (enabled) => STORE_ENGINES.find((name) => enabled.includes(name)) || null;

module.exports = { QUEUE_ENGINES, STORE_ENGINES, validText, newJob, isJob, publish, consumers, stores, storeName, MongoConsumer, RabbitConsumer };
