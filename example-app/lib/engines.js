'use strict';
// Each datastore engine the platform may enable. An engine is enabled when the .env names
// its host; every connection is TLS, verified against the platform's internal CA.
const fs = require('node:fs');

const TIMEOUT_MS = 3000;

function settings(prefix) {
  const env = process.env;
  if (!env[`${prefix}_HOST`]) return null;
  return {
    host: env[`${prefix}_HOST`],
    port: Number(env[`${prefix}_PORT`]),
    user: env[`${prefix}_USER`],
    password: env[`${prefix}_PASSWORD`],
    database: env[`${prefix}_DATABASE`],
  };
}

function caCert() {
  return fs.readFileSync(process.env.PLATFORM_CA_FILE);
}

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const postgresql = {
  name: 'postgresql',
  client: null,
  connect(s) {
    const { Pool } = require('pg');
    this.client = new Pool({
      host: s.host, port: s.port, user: s.user, password: s.password, database: s.database,
      ssl: { ca: caCert(), rejectUnauthorized: true },
      max: 4, connectionTimeoutMillis: TIMEOUT_MS,
    });
    this.client.on('error', (err) => console.error(`postgresql: ${err.message}`));
    this.ready = null;
    this.table().catch(() => {});   // early, but a failure now is not for ever
  },
  // The notes table, made once; a failed attempt (the datastore not answering yet) is
  // forgotten, so the next request tries again instead of failing with it for ever.
  table() {
    if (!this.ready) {
      this.ready = this.client.query(
        'CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, text text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())');
      this.ready.catch(() => { this.ready = null; });
    }
    return this.ready;
  },
  async ping() { await this.client.query('SELECT 1'); },
  async write(note) {
    await this.table();
    await this.client.query('INSERT INTO notes (text, created_at) VALUES ($1, $2)', [note.text, note.at]);
  },
  async read() {
    await this.table();
    const { rows } = await this.client.query('SELECT text, created_at AS at FROM notes ORDER BY id DESC LIMIT 10');
    return rows.map((r) => ({ text: r.text, at: new Date(r.at).toISOString() }));
  },
  async close() { await this.client.end(); },
};

// A Redis transaction's result: ioredis resolves one whose command Redis refused at its
// run (a wrong type, say) with that command's error among the results, not by rejecting.
async function transaction(multi) {
  const results = await multi.exec();
  const refused = results.find(([err]) => err);
  if (refused) throw refused[0];
  return results;
}

const redis = {
  name: 'redis',
  client: null,
  connect(s) {
    const Redis = require('ioredis');
    this.client = new Redis({
      host: s.host, port: s.port, username: s.user || undefined, password: s.password,
      tls: { ca: caCert(), rejectUnauthorized: true },
      connectTimeout: TIMEOUT_MS, maxRetriesPerRequest: 1, lazyConnect: false,
    });
    this.client.on('error', (err) => console.error(`redis: ${err.message}`));
  },
  async ping() { await this.client.ping(); },
  async write(note) {
    await transaction(this.client.multi().lpush('notes', JSON.stringify(note)).ltrim('notes', 0, 99));
  },
  async read() { return (await this.client.lrange('notes', 0, 9)).map((t) => JSON.parse(t)); },
  async close() { this.client.disconnect(); },
};

const mongodb = {
  name: 'mongodb',
  client: null,
  connect(s) {
    const { MongoClient } = require('mongodb');
    this.client = new MongoClient(`mongodb://${s.host}:${s.port}/`, {
      auth: { username: s.user, password: s.password }, authSource: s.database,
      tls: true, tlsCAFile: process.env.PLATFORM_CA_FILE,
      serverSelectionTimeoutMS: TIMEOUT_MS,
    });
    this.db = this.client.db(s.database);
  },
  async ping() { await this.db.command({ ping: 1 }); },
  async write(note) { await this.db.collection('notes').insertOne({ ...note }); },
  async read() {
    const docs = await this.db.collection('notes').find({}, { projection: { _id: 0 } }).sort({ _id: -1 }).limit(10).toArray();
    return docs;
  },
  async close() { await this.client.close(); },
};

// RabbitMQ holds notes as messages on a bounded queue, oldest first; reading peeks (gets
// every message, then requeues them) and keeps the newest 10, as the other engines read.
const NOTES_QUEUE_BOUND = 100;
const rabbitmq = {
  name: 'rabbitmq',
  connection: null,
  connect(s) { this.settings = s; },
  // A new AMQPS connection (the job worker keeps its own, to consume on). amqplib sends
  // the host as the server's name (SNI), and an address there is against RFC 6066 (Node
  // warns, DEP0123): it sends the name on the datastore's certificate instead.
  open() {
    const amqp = require('amqplib');
    const s = this.settings;
    const url = `amqps://${encodeURIComponent(s.user)}:${encodeURIComponent(s.password)}@${s.host}:${s.port}/${encodeURIComponent(s.database)}`;
    return amqp.connect(url, { ca: [caCert()], servername: process.env.PLATFORM_DATASTORE_TLS_NAME, timeout: TIMEOUT_MS });
  },
  // The shared connection and its channel for notes, opened once and forgotten when lost.
  async link() {
    if (!this.connection) {
      this.connection = this.open().then(async (conn) => {
        const forget = () => { this.connection = null; };
        conn.on('error', forget);
        conn.on('close', forget);
        const ch = await conn.createChannel();
        await ch.assertQueue('notes', { durable: true, arguments: { 'x-max-length': NOTES_QUEUE_BOUND } });
        return { conn, ch };
      });
      this.connection.catch(() => { this.connection = null; });
    }
    return this.connection;
  },
  async channel() { return (await this.link()).ch; },
  async ping() { await (await this.channel()).checkQueue('notes'); },
  async write(note) {
    const ch = await this.channel();
    ch.sendToQueue('notes', Buffer.from(JSON.stringify(note)), { persistent: true });
  },
  async read() {
    const ch = await this.channel();
    const notes = [];
    for (let i = 0; i < NOTES_QUEUE_BOUND; i += 1) {
      const message = await ch.get('notes', { noAck: false });
      if (!message) break;
      notes.push(JSON.parse(message.content.toString()));
    }
    ch.nackAll(true);
    return notes.slice(-10).reverse();
  },
  async close() { if (this.connection) await (await this.connection).conn.close(); },
};

const ALL = [postgresql, mongodb, redis, rabbitmq];

// The enabled engines (among `names`, by default all), each connected.
function enabledEngines(names = ALL.map((e) => e.name)) {
  return ALL.filter((engine) => names.includes(engine.name)).filter((engine) => {
    const s = settings(engine.name.toUpperCase());
    if (s) engine.connect(s);
    return s !== null;
  });
}

module.exports = { ALL, enabledEngines, transaction, withTimeout };
