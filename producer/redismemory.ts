import type { Redis } from 'ioredis';
import { UserError } from '../shared/errors.js';
import { log } from '../shared/log.js';
import { refusedAtMaxmemory } from '../shared/redis.js';
import { MAX_PENDING_BYTES, type ProducerOptions } from './options.js';

/**
 * Room kept below Redis' maxmemory for the consumers: their applied marks, moving jobs through
 * their queues, status. A Redis at its maxmemory (noeviction) refuses those writes as well, and
 * then nothing that would free its memory can happen.
 */
const CONSUMER_ROOM_BYTES = 8 * 1024 * 1024;
/** Copy chunks are not cut smaller than this to fit a small maxmemory. */
const MIN_CHUNK_BYTES = 2 * 1024 * 1024;
/** How old a reading of Redis' memory the stream's polls may act on. */
const SAMPLE_MS = 250;
const SAY_FULL_MS = 60_000;

const mb = (bytes: number) => `${Math.round(bytes / 2 ** 20)} MB`;

export interface RedisMemoryReading {
  used: number;
  /** maxmemory; 0 when Redis has none. */
  max: number;
}

/** For the log of a session ended by a write Redis refused at its maxmemory: what to do. */
export function redisFullHint(error: unknown): { hint?: string } {
  if (!refusedAtMaxmemory(error)) return {};
  return {
    hint: "Redis refused a write at its maxmemory: something besides this producer's queues fills it (another pipeline or application), or maxmemory was lowered. Raise maxmemory or free memory there; the producer starts again from the slot until it can write.",
  };
}

async function readRedisMemory(redis: Redis): Promise<RedisMemoryReading> {
  return parseRedisMemory(await redis.info('memory'));
}

/** The reading in Redis' `INFO memory`. */
export function parseRedisMemory(info: string): RedisMemoryReading {
  const field = (name: string) => Number(new RegExp(`^${name}:(\\d+)`, 'm').exec(info)?.[1] ?? 0);
  return { used: field('used_memory'), max: field('maxmemory') };
}

/**
 * What the producer may write past its last look at Redis' memory, and what the consumers need
 * beside it: a chunk being written on each copy connection, the batches on their way, one
 * batch, the consumers' room.
 */
export function headroomBytes(options: Pick<ProducerOptions, 'copyConnections' | 'copyChunkBytes' | 'maxBatchBytes'>): number {
  return options.copyConnections * options.copyChunkBytes + MAX_PENDING_BYTES + options.maxBatchBytes + CONSUMER_ROOM_BYTES;
}

/**
 * The options fitted to a Redis with a maxmemory: the backlog bound alone would let the queues
 * grow into it, and a Redis at its maxmemory refuses the producer's writes (every session then
 * ends and starts over, a copy from its beginning) and the consumers' (which would free it).
 * Where the free memory cannot take the headroom and a chunk of backlog besides, copy chunks are
 * cut smaller; where not even small chunks fit, the producer refuses to start, saying why.
 */
export function fitToRedisMemory(options: ProducerOptions, { used, max }: RedisMemoryReading): ProducerOptions {
  if (max === 0) return options;
  const free = max - used;
  if (free >= headroomBytes(options) + options.copyChunkBytes) return options;
  const fixed = headroomBytes({ ...options, copyChunkBytes: 0 });
  const chunkBytes = Math.floor((free - fixed) / (options.copyConnections + 1));
  if (chunkBytes < MIN_CHUNK_BYTES) {
    const needed = fixed + (options.copyConnections + 1) * MIN_CHUNK_BYTES;
    throw new UserError(
      `Redis' maxmemory is ${mb(max)} and ${mb(used)} of it is in use: pg-replicate needs at least ${mb(needed)} free there (a copy chunk on each of --copy-connections ${options.copyConnections}, batches on their way, room for the consumers), and a Redis at its maxmemory refuses the writes that would free it. Raise maxmemory (CONFIG SET maxmemory ${mb(used + needed).replace(' MB', 'mb')}, and in redis.conf), or free memory in this Redis.`,
    );
  }
  if (chunkBytes < options.copyChunkBytes) {
    log.warn(
      { maxmemory: max, used, copyChunkBytes: chunkBytes },
      `Redis' maxmemory (${mb(max)}, ${mb(used)} in use) is small for pg-replicate: copy chunks are cut at ${mb(chunkBytes)} instead of ${mb(options.copyChunkBytes)}, and reading pauses short of maxmemory until the consumers catch up. Raise maxmemory for a faster copy.`,
    );
  }
  return { ...options, copyChunkBytes: Math.min(chunkBytes, options.copyChunkBytes) };
}

/**
 * Whether Redis is near its maxmemory: reading the slot and copying pause there as they do at
 * the backlog bound, whatever else fills this Redis (other pipelines, other applications), so
 * the producer never runs Redis into maxmemory itself.
 */
export class RedisMemoryGuard {
  private reading: RedisMemoryReading = { used: 0, max: 0 };
  private sampledAt = 0;
  private saidFullAt = 0;

  constructor(
    private readonly redis: Redis,
    private readonly headroom: number,
  ) {}

  /** Reads Redis' memory, unless a reading younger than a few polls will do (`fresh`: not). */
  async sample(fresh = false): Promise<void> {
    if (!fresh && Date.now() - this.sampledAt < SAMPLE_MS) return;
    this.reading = await readRedisMemory(this.redis);
    this.sampledAt = Date.now();
    // Said once a minute at most: a copy held back by a small Redis pauses between every chunk.
    if (this.full && Date.now() - this.saidFullAt > SAY_FULL_MS) {
      const { used, max } = this.reading;
      log.info(
        { used, maxmemory: max },
        `Redis is near its maxmemory (${mb(used)} of ${mb(max)} used): reading pauses until the consumers apply what it holds`,
      );
      this.saidFullAt = Date.now();
    }
  }

  get full(): boolean {
    const { used, max } = this.reading;
    return max > 0 && used > max - this.headroom;
  }
}
