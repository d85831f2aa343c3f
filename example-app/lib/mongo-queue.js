'use strict';
// A job queue in one MongoDB collection, after the npm package mongodb-queue (whose 4.0.0
// uses callbacks and `returnOriginal`/`result.value`, which the 6.x driver no longer has).
// A job taken by `get` is hidden for `visibility` seconds; acknowledged, it is marked
// deleted (and expires a day later); not acknowledged in time (its worker died, or could
// not record it), it is visible again and another `get` takes it: at least once.
const crypto = require('node:crypto');

const DONE_KEPT_SECONDS = 24 * 3600;

class MongoQueue {
  constructor(db, name, { visibility = 30 } = {}) {
    this.collection = db.collection(name);
    this.visibility = visibility;
  }

  async createIndexes() {
    await this.collection.createIndex({ deleted: 1, visible: 1 });
    await this.collection.createIndex({ ack: 1 }, { unique: true, sparse: true });
    await this.collection.createIndex({ done_at: 1 }, { expireAfterSeconds: DONE_KEPT_SECONDS });
  }

  async add(payload) {
    const { insertedId } = await this.collection.insertOne({ visible: new Date(), payload, tries: 0 });
    return String(insertedId);
  }

  // The oldest visible job, hidden from the others until acknowledged or timed out; or null.
  async get() {
    const now = new Date();
    const doc = await this.collection.findOneAndUpdate(
      { deleted: null, visible: { $lte: now } },
      { $inc: { tries: 1 }, $set: { ack: crypto.randomUUID(), visible: new Date(now.getTime() + this.visibility * 1000) } },
      { sort: { _id: 1 }, returnDocument: 'after' },
    );
    if (!doc) return null;
    return { id: String(doc._id), ack: doc.ack, payload: doc.payload, tries: doc.tries };
  }

  // Done: only while still hidden for this taker (after that another may hold it).
  async ack(ack) {
    const now = new Date();
    const { modifiedCount } = await this.collection.updateOne(
      { ack, visible: { $gt: now }, deleted: null },
      { $set: { deleted: true, done_at: now } },
    );
    if (modifiedCount !== 1) throw new Error('mongodb queue: the job was no longer held (visibility timed out)');
  }
}

module.exports = { MongoQueue };
