import type { Socket } from 'node:net';
import { Command, type Redis } from 'ioredis';
import { chunkKeys, newChunkId } from '../shared/chunks.js';
import { type CopyPiece, recycle } from './copyout.js';

/** Pieces not yet acknowledged by Redis, per chunk being written, before the copy waits. */
const MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024;

/**
 * One copy chunk on its way into Redis: the pieces of COPY output (producer/copyout) are pushed
 * onto the chunk's list as they come, so the producer holds only the pieces in flight, however
 * large the chunk. (A list, not one string appended to: Redis would copy the whole string again
 * as it grows, which took it three times the CPU.) Once sealed (every piece acknowledged, its
 * destinations recorded) the chunk's batch may be enqueued.
 */
export class ChunkWriter {
  readonly id: string;
  rows = 0;
  bytes = 0;
  longestRow = 0;
  private readonly inFlight: { reply: Promise<unknown>; piece: CopyPiece }[] = [];
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

  /** Sends the piece; it is recycled once Redis has it. Waits while too many are in flight. */
  async write(piece: CopyPiece): Promise<void> {
    if (this.failure) throw this.failure;
    this.rows += piece.rows;
    this.bytes += piece.data.length;
    this.longestRow = Math.max(this.longestRow, piece.longestRow);
    const reply = (this.redis.sendCommand(new PushCommand(chunkKeys.data(this.pipeline, this.id), piece.data)) as Promise<unknown>).catch((error: unknown) => {
      this.failure ??= error;
    });
    this.inFlight.push({ reply, piece });
    this.inFlightBytes += piece.data.length;
    while (this.inFlightBytes > MAX_IN_FLIGHT_BYTES) await this.settleOldest();
  }

  /** Waits for every piece, then records who needs the chunk: from then on it is released, not dropped. */
  async seal(destinations: string[]): Promise<void> {
    while (this.inFlight.length > 0) await this.settleOldest();
    if (this.failure) throw this.failure;
    if (destinations.length > 0) await this.redis.sadd(chunkKeys.holders(this.pipeline, this.id), ...destinations);
    else await this.redis.del(chunkKeys.data(this.pipeline, this.id));
  }

  private async settleOldest(): Promise<void> {
    const oldest = this.inFlight.shift()!;
    await oldest.reply;
    this.inFlightBytes -= oldest.piece.data.length;
    recycle(oldest.piece);
    if (this.failure) throw this.failure;
  }
}

/**
 * Writes bytes as one chunk of one piece (a large batch's change records), pushed as they are
 * (through ioredis' MULTI they were copied twice, a tenth of the producer's CPU in a large
 * transaction), then records which destinations hold it.
 */
export async function storeChunk(redis: Redis, pipeline: string, id: string, bytes: Buffer, destinations: string[]): Promise<void> {
  const key = chunkKeys.data(pipeline, id);
  // In this order on the one connection: the piece goes into an empty list.
  await Promise.all([redis.del(key), redis.sendCommand(new PushCommand(key, bytes))]);
  await redis.sadd(chunkKeys.holders(pipeline, id), ...destinations);
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
