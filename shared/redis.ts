import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { keys, parseApplied } from './keys.js';

export { connectRedis, loginRefused } from './redistarget.js';

/**
 * Whether Redis refused a write at its maxmemory (noeviction): it takes writes again once memory
 * is freed. A MULTI with such a write fails as a whole (EXECABORT), the refusal among its causes.
 */
export function refusedAtMaxmemory(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const causes = (error as { previousErrors?: unknown[] }).previousErrors ?? [];
  return error.message.startsWith('OOM ') || causes.some(refusedAtMaxmemory);
}

/**
 * The queue, listening for its errors: unheard, BullMQ prints each with console.error, the
 * failed command's arguments included (after a refused login, HELLO's AUTH password). The
 * queue's connection reports Redis' errors through its own handler.
 */
export function heardQueue<Q extends Queue>(queue: Q): Q {
  queue.on('error', () => {});
  return queue;
}

/** What the producer records about a pipeline in Redis. Redis is a buffer: losing this forces a fresh copy. */
export interface PipelineState {
  slot: string;
  publication: string;
  partitions: number;
  destinations: string[];
  /** The running producer's epoch; its disappearance tells the producer Redis lost its data. */
  epoch: number;
  /**
   * 'started' while copying, 'enqueued' once every row is queued, 'done' once every destination
   * applied it; 'requested' (`resync --all`): the next producer session copies every table anew.
   */
  copy?: 'requested' | 'started' | 'enqueued' | 'done';
  /** OIDs of the tables every destination has a copy of (or is being given one): a table outside it is new. */
  tables?: number[];
  /** Each published table's membership of the publication, by OID (catalog publicationMemberships): a change means it left and came back. */
  memberships?: Record<string, string>;
}

export async function readPipelineState(redis: Redis, pipeline: string): Promise<PipelineState | undefined> {
  const raw = await redis.hgetall(keys.state(pipeline));
  if (!raw.slot) return undefined;
  return {
    slot: raw.slot,
    publication: raw.publication,
    partitions: Number(raw.partitions),
    destinations: JSON.parse(raw.destinations ?? '[]'),
    epoch: Number(raw.epoch),
    ...(raw.copy ? { copy: raw.copy as PipelineState['copy'] } : {}),
    ...(raw.tables ? { tables: JSON.parse(raw.tables) } : {}),
    ...(raw.memberships ? { memberships: JSON.parse(raw.memberships) } : {}),
  };
}

export async function writePipelineState(redis: Redis, pipeline: string, state: Partial<PipelineState>): Promise<void> {
  const fields: Record<string, string> = {};
  for (const [field, value] of Object.entries(state)) {
    if (value !== undefined) fields[field] = typeof value === 'string' ? value : JSON.stringify(value);
  }
  await redis.hset(keys.state(pipeline), fields);
}

/** A table's initial copy as the producer records it, range by range, so that a restart continues it. */
export interface TableCopyProgress {
  schema: string;
  name: string;
  /** The copy's identity: its rows carry version (snapshotLsn, 0). */
  snapshotLsn: string;
  /** The table is copied in this many CTID ranges of rangeBlocks heap blocks (the last one open-ended). */
  ranges: number;
  rangeBlocks: number;
  /** Ranges whose every row is in the queues. */
  done: number[];
  rows: number;
  /** Postgres' estimate of the table's rows when the copy was planned (pg_class.reltuples); absent when it has none. */
  estimatedRows?: number;
  startedAt: number;
  /** When the last range was recorded. */
  updatedAt?: number;
}

/**
 * A copy of one table beside the stream (a table added to the publication, a resync, a new
 * destination's copy), recorded before it starts and deleted once its last chunk is in the
 * queues: a restarted producer continues it.
 */
export interface TableSyncRecord {
  /** Only for these destinations; for every destination when absent. */
  destinations?: string[];
  reason: string;
  /** Set once the copy's snapshot is taken: its ranges, and those whose rows are all in the queues. */
  progress?: TableCopyProgress;
}

export async function readTableSyncs(redis: Redis, pipeline: string): Promise<Map<number, TableSyncRecord>> {
  const raw = await redis.hgetall(keys.tableSyncs(pipeline));
  return new Map(Object.entries(raw).map(([oid, text]) => [Number(oid), JSON.parse(text) as TableSyncRecord]));
}

/** Rows of the initial copy applied by the slowest destination, by table OID (the producer measures them as it polls). */
export async function readCopyApplied(redis: Redis, pipeline: string): Promise<Map<number, number>> {
  const raw = await redis.hgetall(keys.copyApplied(pipeline));
  return new Map(Object.entries(raw).map(([oid, rows]) => [Number(oid), Number(rows)]));
}

export async function readCopyProgress(redis: Redis, pipeline: string): Promise<Map<number, TableCopyProgress>> {
  const raw = await redis.hgetall(keys.copyProgress(pipeline));
  return new Map(Object.entries(raw).map(([oid, text]) => [Number(oid), JSON.parse(text) as TableCopyProgress]));
}

// The mark only moves forward: batches applied together with an earlier one (consumers/runner
// joins queued copy chunks) are marked at once, and their own jobs complete after that.
const RECORD_APPLIED = `
local current = redis.call('HGET', KEYS[1], ARGV[1])
local epoch, seq = string.match(current or '', '^(%d+):(%d+)$')
if epoch then
  epoch, seq = tonumber(epoch), tonumber(seq)
  local newEpoch, newSeq = tonumber(ARGV[2]), tonumber(ARGV[3])
  if epoch > newEpoch or (epoch == newEpoch and seq >= newSeq) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
if ARGV[4] ~= '0' then redis.call('HINCRBY', KEYS[2], 'changes', ARGV[4]) end
if ARGV[5] ~= '0' then redis.call('HINCRBY', KEYS[2], 'rows', ARGV[5]) end
return 1`;

/**
 * Records that a destination has durably applied the partition's batches up to (epoch, seq),
 * unless its mark is there already; only then are the batches' changes and copied rows added
 * to its totals (a batch delivered again is not counted twice).
 */
export async function recordApplied(
  redis: Redis,
  pipeline: string,
  destination: string,
  partition: number,
  mark: { epoch: number; seq: number },
  counts: { changes: number; rows: number } = { changes: 0, rows: 0 },
): Promise<void> {
  await redis.eval(
    RECORD_APPLIED,
    2,
    keys.applied(pipeline, destination),
    keys.totals(pipeline, destination),
    String(partition),
    String(mark.epoch),
    String(mark.seq),
    String(counts.changes),
    String(counts.rows),
  );
}

/** The applied marks of one destination: partition → last batch applied. */
export async function readApplied(redis: Redis, pipeline: string, destination: string): Promise<Map<number, { epoch: number; seq: number }>> {
  const raw = await redis.hgetall(keys.applied(pipeline, destination));
  const marks = new Map<number, { epoch: number; seq: number }>();
  for (const [partition, text] of Object.entries(raw)) {
    const mark = parseApplied(text);
    if (mark) marks.set(Number(partition), mark);
  }
  return marks;
}
