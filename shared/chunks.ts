import type { Redis } from 'ioredis';

/**
 * Large payloads live in Redis beside the queues, not inside job data: the rows of a copy chunk
 * (the producer streams COPY output into a Redis list as it arrives, a piece of up to a megabyte
 * per element, never holding a chunk in memory) and the change records of a large batch.
 * Neither is encoded as JSON or base64; the job carries only the chunk's id. One string serves every
 * destination; a set lists the destinations that still need it, and the last one to release it
 * deletes both.
 *
 * Ids are `epoch.partition.n` (n counts the producer process's chunks): unique across producer runs;
 * a batch whose payload is a chunk has the chunk's id as its job id.
 */
export const chunkKeys = {
  data: (pipeline: string, id: string) => `pgr:{${pipeline}}:chunk:${id}`,
  holders: (pipeline: string, id: string) => `pgr:{${pipeline}}:chunk-for:${id}`,
};

/**
 * Rows are gathered into pieces of up to this size (a row larger than that is a piece of its
 * own): one Redis command per megabyte rather than per socket read cost the producer a tenth
 * less CPU in a copy. A little under a megabyte: a list element of a whole megabyte plus Redis'
 * few bytes of framing takes its allocator's next size, a quarter more memory.
 */
export const PIECE_BYTES = 1024 * 1024 - 64;

let made = 0;

/** A new chunk id for a batch of this producer run and partition. */
export function newChunkId(epoch: number, partition: number): string {
  return `${epoch}.${partition}.${++made}`;
}

/** Whether a job id names a chunk (a batch whose payload is a chunk); other jobs get BullMQ's numeric ids. */
export function isChunkId(id: string): boolean {
  return id.includes('.');
}

export function parseChunkId(id: string): { epoch: number; partition: number } {
  const [epoch, partition] = id.split('.').map(Number);
  return { epoch, partition };
}

/** A chunk's pieces as one buffer (copied only when there are several). */
export function joinPieces(pieces: Buffer[]): Buffer {
  return pieces.length === 1 ? pieces[0] : Buffer.concat(pieces);
}

/** How many bytes a chunk's pieces hold. */
export function piecesLength(pieces: Buffer[]): number {
  let length = 0;
  for (const piece of pieces) length += piece.length;
  return length;
}

// Atomic, so that of two destinations releasing at once exactly the last one deletes the bytes;
// releasing twice (a batch retried after its release) changes nothing.
const RELEASE = `
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[1], KEYS[2]) end`;

/** This destination no longer needs the chunk (it applied it, or it was removed). */
export async function releaseChunk(redis: Redis, pipeline: string, id: string, destination: string): Promise<void> {
  await redis.eval(RELEASE, 2, chunkKeys.data(pipeline, id), chunkKeys.holders(pipeline, id), destination);
}

/** Ids of the chunks of this pipeline that some destination still holds. */
export async function heldChunks(redis: Redis, pipeline: string): Promise<string[]> {
  const prefix = chunkKeys.holders(pipeline, '');
  const ids: string[] = [];
  for await (const found of redis.scanStream({ match: `${prefix}*`, count: 1000 })) {
    for (const key of found as string[]) ids.push(key.slice(prefix.length));
  }
  return ids;
}

/**
 * Deletes chunk bytes that no destination was ever given: a producer run that ended while
 * writing a chunk (before its batch was enqueued, so before its holders were set).
 */
export async function dropUnheldChunks(redis: Redis, pipeline: string): Promise<number> {
  const prefix = chunkKeys.data(pipeline, '');
  let dropped = 0;
  for await (const found of redis.scanStream({ match: `${prefix}*`, count: 1000 })) {
    for (const key of found as string[]) {
      const id = key.slice(prefix.length);
      // Only if still without holders when deleted: checked and done in one step.
      dropped += Number(
        await redis.eval(`if redis.call('EXISTS', KEYS[2]) == 0 then return redis.call('DEL', KEYS[1]) end return 0`, 2, key, chunkKeys.holders(pipeline, id)),
      );
    }
  }
  return dropped;
}
