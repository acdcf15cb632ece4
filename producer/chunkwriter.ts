import type { Redis } from 'ioredis';
import { chunkKeys, newChunkId } from '../shared/chunks.js';

/** Appends not yet acknowledged by Redis, per chunk being written, before the copy waits. */
const MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024;

/**
 * One copy chunk on its way into Redis: pieces of COPY output are appended to the chunk's
 * string as they arrive, so the producer holds only the appends in flight, however large the
 * chunk. Once sealed (every append acknowledged, its destinations recorded) the chunk's batch
 * may be enqueued.
 */
export class ChunkWriter {
  readonly id: string;
  rows = 0;
  bytes = 0;
  /**
   * The longest piece written: at least as long as any row in the chunk, since a piece of many
   * rows holds only what one socket read brought, and a longer row comes as a piece of its own.
   */
  longestRow = 0;
  private readonly inFlight: { reply: Promise<unknown>; bytes: number }[] = [];
  private inFlightBytes = 0;
  private failure?: unknown;

  constructor(
    private readonly redis: Redis,
    private readonly pipeline: string,
    epoch: number,
    partition: number,
  ) {
    this.id = newChunkId(epoch, partition);
  }

  async write(piece: Buffer, rows: number): Promise<void> {
    if (this.failure) throw this.failure;
    const reply = this.redis.append(chunkKeys.data(this.pipeline, this.id), piece).catch((error: unknown) => {
      this.failure ??= error;
    });
    this.inFlight.push({ reply, bytes: piece.length });
    this.inFlightBytes += piece.length;
    this.rows += rows;
    this.bytes += piece.length;
    this.longestRow = Math.max(this.longestRow, piece.length);
    while (this.inFlightBytes > MAX_IN_FLIGHT_BYTES) await this.settleOldest();
  }

  /** Waits for every append, then records who needs the chunk: from then on it is released, not dropped. */
  async seal(destinations: string[]): Promise<void> {
    while (this.inFlight.length > 0) await this.settleOldest();
    if (this.failure) throw this.failure;
    if (destinations.length > 0) await this.redis.sadd(chunkKeys.holders(this.pipeline, this.id), ...destinations);
    else await this.redis.del(chunkKeys.data(this.pipeline, this.id));
  }

  private async settleOldest(): Promise<void> {
    const oldest = this.inFlight.shift()!;
    await oldest.reply;
    this.inFlightBytes -= oldest.bytes;
    if (this.failure) throw this.failure;
  }
}
