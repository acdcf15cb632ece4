import type { Redis } from 'ioredis';
import { chunkKeys, newChunkId } from '../shared/chunks.js';

/** Appends not yet acknowledged by Redis, per chunk being written, before the copy waits. */
const MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024;
/**
 * Pieces (a socket read each, up to 64 kB) are gathered into appends of up to this size: one
 * Redis command per megabyte rather than per read cost the producer a tenth less CPU in a copy.
 */
const APPEND_BYTES = 1024 * 1024;
/**
 * Gathering buffers come back here once Redis has acknowledged their append: a copy then
 * reuses a few megabytes instead of allocating a fresh one per append, which V8 counts as
 * external memory (a major collection every 64 MB of it) and the kernel must zero.
 */
const spareBuffers: Buffer[] = [];
const MAX_SPARE_BUFFERS = 32;

/**
 * One copy chunk on its way into Redis: pieces of COPY output are appended to the chunk's
 * string as they arrive, so the producer holds only the appends in flight and at most a
 * megabyte being gathered, however large the chunk. Once sealed (every append acknowledged, its destinations recorded) the chunk's batch
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
  private readonly inFlight: { reply: Promise<unknown>; bytes: number; gathered?: Buffer }[] = [];
  private gathered?: Buffer;
  private gatheredBytes = 0;
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
    this.rows += rows;
    this.bytes += piece.length;
    this.longestRow = Math.max(this.longestRow, piece.length);
    if (this.gatheredBytes + piece.length > APPEND_BYTES) await this.appendGathered();
    if (piece.length >= APPEND_BYTES) {
      await this.append(piece);
      return;
    }
    this.gathered ??= spareBuffers.pop() ?? Buffer.allocUnsafe(APPEND_BYTES);
    piece.copy(this.gathered, this.gatheredBytes);
    this.gatheredBytes += piece.length;
  }

  private async appendGathered(): Promise<void> {
    if (!this.gathered || this.gatheredBytes === 0) return;
    const gathered = this.gathered;
    const bytes = gathered.subarray(0, this.gatheredBytes);
    // Another buffer for the next pieces: this one is taken until Redis acknowledges its append.
    this.gathered = undefined;
    this.gatheredBytes = 0;
    await this.append(bytes, gathered);
  }

  private async append(bytes: Buffer, gathered?: Buffer): Promise<void> {
    const reply = this.redis.append(chunkKeys.data(this.pipeline, this.id), bytes).catch((error: unknown) => {
      this.failure ??= error;
    });
    this.inFlight.push({ reply, bytes: bytes.length, gathered });
    this.inFlightBytes += bytes.length;
    while (this.inFlightBytes > MAX_IN_FLIGHT_BYTES) await this.settleOldest();
  }

  /** Waits for every append, then records who needs the chunk: from then on it is released, not dropped. */
  async seal(destinations: string[]): Promise<void> {
    await this.appendGathered();
    while (this.inFlight.length > 0) await this.settleOldest();
    if (this.failure) throw this.failure;
    if (destinations.length > 0) await this.redis.sadd(chunkKeys.holders(this.pipeline, this.id), ...destinations);
    else await this.redis.del(chunkKeys.data(this.pipeline, this.id));
  }

  private async settleOldest(): Promise<void> {
    const oldest = this.inFlight.shift()!;
    await oldest.reply;
    this.inFlightBytes -= oldest.bytes;
    if (oldest.gathered && spareBuffers.length < MAX_SPARE_BUFFERS) spareBuffers.push(oldest.gathered);
    if (this.failure) throw this.failure;
  }
}
