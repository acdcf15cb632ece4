import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { chunkKeys, dropUnheldChunks, heldChunks, newChunkId, parseChunkId, releaseChunk } from '../shared/chunks.js';
import { encodeBatch } from '../shared/codec.js';
import type { OutgoingBatch } from '../shared/events.js';
import { QUEUE_PREFIX, queueName } from '../shared/keys.js';
import { log } from '../shared/log.js';
import { heardQueue } from '../shared/redis.js';
import { storeChunk } from './chunkwriter.js';
import { tally } from './metrics.js';

/**
 * bullmq, loaded once the producer's start is waiting on Postgres and Redis (Producer.run calls
 * this right after it starts connecting), not before the thread runs anything: its modules are
 * the largest part of the thread's start (0.15 s of 0.35). The module cache keeps it.
 */
export const loadQueues = (): Promise<typeof import('bullmq')> => import('bullmq');

/** A batch in the queues: its number, what Redis holds for it, and the destinations it went to when not all. */
interface Enqueued {
  seq: number;
  bytes: number;
  only?: string[];
  /** A copy chunk: its table and rows. */
  copy?: { oid: number; rows: number };
}

/** How much Redis memory a stored batch takes, for the backlog bound (measured: `npm run bench` samples Redis' used memory). */
const STORED_OVERHEAD = 1.25;
const JOB_BYTES = 2048;

/** Change records up to this size travel inside the job; larger ones as a chunk beside it. */
const INLINE_RECORDS_BYTES = 64 * 1024;

/**
 * The producer's side of the queues: one BullMQ queue per (destination, partition). Adds to
 * one queue are chained so they reach Redis in the order they were made: that order is the
 * partition's FIFO order, which consumers rely on.
 */
export class BatchQueues {
  private readonly queues = new Map<string, Queue[]>();
  private readonly tails = new Map<Queue, Promise<unknown>>();
  private failure: Error | undefined;
  private inFlight = 0;
  private inFlightBytes = 0;
  /** Per partition, the batches not yet known to be applied by every destination they went to. */
  private readonly enqueued = new Map<number, Enqueued[]>();
  /**
   * Per destination, the number of the last batch sent to each partition in this run: each
   * batch names the one before it (`q`), so that a consumer finds a gap (Redis lost batches) and
   * never applies past it.
   */
  private readonly lastSent = new Map<string, number[]>();
  /** Per table OID, the rows of copy chunks enqueued in this run, and of those not yet applied everywhere they went (as of unapplied()). */
  private readonly copyRows = new Map<number, { enqueued: number; unapplied: number }>();

  private constructor(
    private readonly queueClass: typeof Queue,
    private readonly redis: Redis,
    private readonly pipeline: string,
    destinations: string[],
    readonly partitions: number,
  ) {
    for (const destination of destinations) this.open(destination);
  }

  static async open(redis: Redis, pipeline: string, destinations: string[], partitions: number): Promise<BatchQueues> {
    return new BatchQueues((await loadQueues()).Queue, redis, pipeline, destinations, partitions);
  }

  get destinations(): string[] {
    return [...this.queues.keys()];
  }

  private open(destination: string, startAt?: number[]): Queue[] {
    this.lastSent.set(destination, startAt ? [...startAt] : new Array(this.partitions).fill(0));
    const perPartition: Queue[] = [];
    for (let partition = 0; partition < this.partitions; partition++) {
      perPartition.push(heardQueue(new this.queueClass(queueName(this.pipeline, destination, partition), { connection: this.redis, prefix: QUEUE_PREFIX })));
    }
    this.queues.set(destination, perPartition);
    return perPartition;
  }

  /** One worker at a time per partition, across every consumer process: that is what keeps a partition in order. */
  async limitToOneWorker(queues = [...this.queues.values()].flat()): Promise<void> {
    await Promise.all(queues.map((queue) => queue.setGlobalConcurrency(1)));
  }

  /**
   * Starts feeding a destination: every batch enqueued from now on goes to it too. `startAt`:
   * per partition, the batch its applied marks are set to (its first batch names it).
   */
  async addDestination(destination: string, startAt: number[]): Promise<void> {
    if (this.queues.has(destination)) return;
    await this.limitToOneWorker(this.open(destination, startAt));
  }

  /** Jobs in the destination's partition queue, waiting or being applied. */
  async queuedFor(destination: string, partition: number): Promise<number> {
    const queue = this.queues.get(destination)?.[partition];
    if (!queue) return 0;
    const counts = await queue.getJobCounts('wait', 'active', 'delayed', 'prioritized', 'waiting-children');
    return Object.values(counts).reduce((sum, count) => sum + count, 0);
  }

  /** The last batch sent to the destination's partition in this run (0: none yet). */
  lastSentTo(destination: string, partition: number): number {
    return this.lastSent.get(destination)?.[partition] ?? 0;
  }

  /** Stops feeding a destination and drops its queues with whatever they still hold. */
  async removeDestination(destination: string): Promise<void> {
    const perPartition = this.queues.get(destination);
    if (!perPartition) return;
    this.queues.delete(destination);
    this.lastSent.delete(destination);
    await Promise.allSettled(perPartition.map((queue) => this.tails.get(queue)));
    for (const queue of perPartition) {
      this.tails.delete(queue);
      await queue.obliterate({ force: true });
      await queue.close();
    }
    for (const id of await heldChunks(this.redis, this.pipeline)) await releaseChunk(this.redis, this.pipeline, id, destination);
  }

  /**
   * Adds the batch to its partition's queue of every destination (or of those named). Errors
   * surface on the next call or on settle(). Its size, for the backlog bound, is what Redis
   * stores for it: the encoded changes, or a copy chunk's rows (already in Redis).
   */
  enqueue(batch: OutgoingBatch, only?: string[]): void {
    this.throwIfFailed();
    tally.batches++;
    const targets = [...this.queues.keys()].filter((destination) => !only || only.includes(destination));
    const records = batch.copy ? undefined : batch.records;
    // Large change records are stored as a chunk beside the job (no base64, no JSON), before it.
    const stored = records && records.length > INLINE_RECORDS_BYTES && targets.length > 0 ? newChunkId(batch.epoch, batch.partition) : undefined;
    const written = stored ? storeChunk(this.redis, this.pipeline, stored, records!, targets) : undefined;
    const data = encodeBatch(batch, stored);
    // What Redis holds for it: its payload, rounded up as Redis' allocator does (up to a
    // quarter for large strings), and the job's own hash.
    const bytes = Math.ceil((records ? records.length : batch.copy!.bytes) * STORED_OVERHEAD) + JOB_BYTES;
    let enqueued = this.enqueued.get(batch.partition);
    if (!enqueued) this.enqueued.set(batch.partition, (enqueued = []));
    const copy = batch.copy && batch.copy.rows > 0 ? { oid: batch.relations[batch.copy.relation].oid, rows: batch.copy.rows } : undefined;
    enqueued.push({ seq: batch.seq, bytes, ...(targets.length < this.queues.size ? { only: targets } : {}), ...(copy ? { copy } : {}) });
    if (copy) {
      const rows = this.copyRows.get(copy.oid) ?? { enqueued: 0, unapplied: 0 };
      rows.enqueued += copy.rows;
      rows.unapplied += copy.rows;
      this.copyRows.set(copy.oid, rows);
    }
    // A batch whose payload is a chunk (its rows, or its records) is named after the chunk.
    const jobId = batch.copy?.id ?? stored;
    const addedBytes = batch.copy ? 0 : bytes;
    for (const destination of targets) {
      const queue = this.queues.get(destination)![batch.partition];
      const sent = this.lastSent.get(destination)!;
      // The batch names the one sent to this destination before it (one job object for all, unless they differ).
      const payload = data.q === undefined || data.q === sent[batch.partition] ? data : { ...data };
      payload.q = sent[batch.partition];
      sent[batch.partition] = batch.seq;
      this.inFlight++;
      this.inFlightBytes += addedBytes;
      const added = (this.tails.get(queue) ?? Promise.resolve())
        .then(() => written)
        .then(() => queue.add('batch', payload, { removeOnComplete: true, removeOnFail: false, ...(jobId ? { jobId } : {}) }))
        .catch((error: Error) => {
          this.failure ??= error;
        })
        .finally(() => {
          this.inFlight--;
          this.inFlightBytes -= addedBytes;
        });
      this.tails.set(queue, added);
    }
  }

  /**
   * Releases copy chunks of earlier producer runs that no queue will deliver: a destination
   * holds a chunk only while its queue holds the chunk's job (a run that ended between sealing
   * a chunk and enqueueing it, or a removed destination, leaves holders without jobs), and a
   * chunk nobody holds was never enqueued at all.
   */
  async releaseOrphanedChunks(epoch: number): Promise<void> {
    let released = await dropUnheldChunks(this.redis, this.pipeline);
    for (const id of await heldChunks(this.redis, this.pipeline)) {
      const { epoch: madeBy, partition } = parseChunkId(id);
      if (madeBy >= epoch) continue;
      for (const destination of await this.redis.smembers(chunkKeys.holders(this.pipeline, id))) {
        const queue = this.queues.get(destination)?.[partition];
        if (queue && (await queue.getJob(id))) continue;
        await releaseChunk(this.redis, this.pipeline, id, destination);
        released++;
      }
    }
    if (released > 0) log.info({ released }, 'released copy chunks left behind by an earlier run or a removed destination');
  }

  /**
   * The backlog, given each destination's last batch applied per partition: the most batches
   * one destination has waiting for it, and the bytes Redis holds for batches some destination
   * they went to still needs. A batch that went only to some destinations (a resync or a new
   * destination's copy) is not waited for by the others. Batches applied by every destination
   * they went to are forgotten.
   */
  unapplied(appliedSeq: Map<string, (partition: number) => number>): { batches: number; bytes: number } {
    const waiting = new Map([...appliedSeq.keys()].map((destination) => [destination, 0]));
    let bytes = 0;
    for (const rows of this.copyRows.values()) rows.unapplied = 0;
    for (const [partition, enqueued] of this.enqueued) {
      const marks = [...appliedSeq].map(([destination, seqOf]) => ({ destination, seq: seqOf(partition) }));
      const waitingFor = (batch: Enqueued) => marks.filter(({ destination, seq }) => seq < batch.seq && (!batch.only || batch.only.includes(destination)));
      let applied = 0;
      while (applied < enqueued.length && waitingFor(enqueued[applied]).length === 0) applied++;
      if (applied > 0) enqueued.splice(0, applied);
      for (const batch of enqueued) {
        const behind = waitingFor(batch);
        for (const { destination } of behind) waiting.set(destination, waiting.get(destination)! + 1);
        if (behind.length > 0) bytes += batch.bytes;
        if (behind.length > 0 && batch.copy) this.copyRows.get(batch.copy.oid)!.unapplied += batch.copy.rows;
      }
    }
    return { batches: Math.max(0, ...waiting.values()), bytes };
  }

  /** Per table OID, the rows of this run's copy chunks that every destination they went to has applied (as of unapplied()). */
  copyRowsApplied(): Map<number, number> {
    return new Map([...this.copyRows].map(([oid, rows]) => [oid, rows.enqueued - rows.unapplied]));
  }

  /** Adds made but not yet acknowledged by Redis, and their approximate bytes: what the producer holds in memory. */
  get pendingAdds(): number {
    return this.inFlight;
  }

  get pendingBytes(): number {
    return this.inFlightBytes;
  }

  /** An add that failed lost its batch: the session must end and re-read it from the slot. */
  throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  /** Waits until every add made so far has reached Redis; throws the first add that failed. */
  async settle(): Promise<void> {
    await Promise.all(this.tails.values());
    if (this.failure) throw this.failure;
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.tails.values());
    await Promise.all([...this.queues.values()].flat().map((queue) => queue.close()));
  }
}
