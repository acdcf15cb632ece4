import type { Redis } from 'ioredis';
import { releaseChunk } from '../shared/chunks.js';
import type { EncodedBatch } from '../shared/codec.js';
import type { Batch } from '../shared/events.js';
import { keys, parseApplied } from '../shared/keys.js';
import { recordApplied } from '../shared/redis.js';

/** A destination's applied mark in a partition: the last batch (producer run, sequence number) it applied. */
export type AppliedMark = { epoch: number; seq: number };

/**
 * Where one destination stands in each partition's chain of batches, as Redis records it: its
 * applied marks, and the producer run the pipeline is in. A batch of the running producer run
 * names the one sent before it to the same partition (`q`): a batch that does not follow the
 * mark shows batches lost from Redis, which is reported for the producer to read them again.
 */
export class AppliedMarks {
  constructor(
    private readonly redis: Redis,
    private readonly pipeline: string,
    private readonly destination: string,
  ) {}

  /** The pipeline's current producer run and this destination's mark for the partition, in one round trip. */
  async runAndMark(partition: number): Promise<{ run: number; mark?: AppliedMark }> {
    const [[, epoch], [, mark]] = (await this.redis
      .multi()
      .hget(keys.state(this.pipeline), 'epoch')
      .hget(keys.applied(this.pipeline, this.destination), String(partition))
      .exec()) as [[unknown, string | null], [unknown, string | null]];
    if (epoch === null) throw new Error(`Redis holds no record of pipeline ${this.pipeline} (was Redis flushed?): waiting for its producer to start a new run`);
    return { run: Number(epoch), mark: parseApplied(mark ?? undefined) };
  }

  /**
   * Whether the batch comes from a producer run older than the pipeline's current one. Without
   * a record of the pipeline (Redis lost it), nothing is applied until the producer writes its
   * new run: the batch is retried in place.
   */
  async fromEarlierRun(encoded: EncodedBatch): Promise<boolean> {
    return (await this.runAndMark(encoded.n)).run > encoded.e;
  }

  /** A batch of the running producer run: the next after the mark, or applied already; a gap before it is reported and thrown. */
  async checkChain(partition: number, encoded: EncodedBatch, mark: AppliedMark | undefined): Promise<'next' | 'applied'> {
    if (encoded.q === undefined) return 'next';
    if (mark && mark.epoch === encoded.e && mark.seq >= encoded.s) return 'applied';
    const applied = mark && mark.epoch === encoded.e ? mark.seq : 0;
    if (encoded.q === applied) return 'next';
    const gap = { epoch: encoded.e, destination: this.destination, partition, applied, missing: [applied + 1, encoded.q], found: encoded.s };
    await this.redis.hset(keys.state(this.pipeline), 'gap', JSON.stringify(gap));
    throw new Error(
      `batches ${applied + 1}–${encoded.q} of partition ${partition} are missing from Redis (this destination applied up to batch ${applied} of the producer's run; the queue's next is ${encoded.s}): Redis lost recent writes (a failover, a restart from an older snapshot, eviction). The producer re-reads them from the slot; nothing past the gap is applied.`,
    );
  }

  /** Whether this destination's applied mark for the partition is at or past the batch (queue order is (epoch, seq)). */
  async isApplied(partition: number, encoded: EncodedBatch): Promise<boolean> {
    const mark = parseApplied((await this.redis.hget(keys.applied(this.pipeline, this.destination), String(partition))) ?? undefined);
    return !!mark && (mark.epoch > encoded.e || (mark.epoch === encoded.e && mark.seq >= encoded.s));
  }

  /** Records the partition's applied mark (it only moves forward), with what the batches held, and releases the chunks applied. */
  async complete(partition: number, mark: AppliedMark, chunks: (string | undefined)[], batches: Batch[]): Promise<void> {
    const counts = { changes: 0, rows: 0 };
    for (const batch of batches) {
      counts.changes += batch.changes.length;
      counts.rows += batch.copy?.rows ?? 0;
    }
    await recordApplied(this.redis, this.pipeline, this.destination, partition, mark, counts);
    await Promise.all(chunks.flatMap((chunk) => (chunk ? [releaseChunk(this.redis, this.pipeline, chunk, this.destination)] : [])));
  }
}
