import type { Socket } from 'node:net';
import { Command, type Redis } from 'ioredis';
import { chunkKeys, newChunkId } from '../shared/chunks.js';

/** Pieces not yet acknowledged by Redis, per chunk being written, before the copy waits. */
const MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024;
/**
 * Socket reads (up to 64 kB each) are gathered into pieces of up to this size, one list element
 * each: one Redis command per megabyte rather than per read cost the producer a tenth less CPU
 * in a copy.
 */
const PIECE_BYTES = 1024 * 1024;
/**
 * Gathering buffers come back here once Redis has acknowledged their piece: a copy then
 * reuses a few megabytes instead of allocating a fresh one per piece, which V8 counts as
 * external memory (a major collection every 64 MB of it) and the kernel must zero.
 */
const spareBuffers: Buffer[] = [];
const MAX_SPARE_BUFFERS = 32;

/**
 * One copy chunk on its way into Redis: COPY output is pushed onto the chunk's list as it
 * arrives, so the producer holds only the pieces in flight and at most a megabyte being
 * gathered, however large the chunk. (A list, not one string appended to: Redis would copy the
 * whole string again as it grows, which took it three times the CPU.) Once sealed (every piece
 * acknowledged, its destinations recorded) the chunk's batch may be enqueued.
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
    if (this.gatheredBytes + piece.length > PIECE_BYTES) await this.pushGathered();
    if (piece.length >= PIECE_BYTES) {
      await this.push(piece);
      return;
    }
    this.gathered ??= spareBuffers.pop() ?? Buffer.allocUnsafe(PIECE_BYTES);
    piece.copy(this.gathered, this.gatheredBytes);
    this.gatheredBytes += piece.length;
  }

  private async pushGathered(): Promise<void> {
    if (!this.gathered || this.gatheredBytes === 0) return;
    const gathered = this.gathered;
    const bytes = gathered.subarray(0, this.gatheredBytes);
    // Another buffer for the next reads: this one is taken until Redis acknowledges it.
    this.gathered = undefined;
    this.gatheredBytes = 0;
    await this.push(bytes, gathered);
  }

  private async push(bytes: Buffer, gathered?: Buffer): Promise<void> {
    const reply = (this.redis.sendCommand(new PushCommand(chunkKeys.data(this.pipeline, this.id), bytes)) as Promise<unknown>).catch((error: unknown) => {
      this.failure ??= error;
    });
    this.inFlight.push({ reply, bytes: bytes.length, gathered });
    this.inFlightBytes += bytes.length;
    while (this.inFlightBytes > MAX_IN_FLIGHT_BYTES) await this.settleOldest();
  }

  /** Waits for every piece, then records who needs the chunk: from then on it is released, not dropped. */
  async seal(destinations: string[]): Promise<void> {
    await this.pushGathered();
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

/**
 * RPUSH of one piece, written to the socket as it is: ioredis would first copy the command and
 * its megabyte of bytes into one new buffer. Only for commands sent on their own (not in a
 * pipeline or MULTI), where ioredis writes what this returns to the socket it is given, right
 * after what this wrote.
 */
class PushCommand extends Command {
  constructor(
    private readonly key: string,
    private readonly piece: Buffer,
  ) {
    super('rpush', [key, piece]);
  }

  override toWritable(socket: object): string {
    const stream = socket as Socket;
    stream.write(`*3\r\n$5\r\nRPUSH\r\n$${Buffer.byteLength(this.key)}\r\n${this.key}\r\n$${this.piece.length}\r\n`);
    stream.write(this.piece);
    return '\r\n';
  }
}
