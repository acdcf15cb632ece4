import type { Redis } from 'ioredis';
import { UserError } from '../shared/errors.js';
import { qualifiedName, type Relation } from '../shared/events.js';
import { ByteReader, type RowOp, readRowImages } from '../shared/tupledata.js';

/** Redis' default proto-max-bulk-len: what a managed Redis that hides CONFIG most likely has. */
const DEFAULT_MAX_BULK_BYTES = 512 * 1024 * 1024;
/** Room for what travels with a row in one Redis value (the batch's header, the job's JSON). */
const ENVELOPE_BYTES = 64 * 1024;

/**
 * The largest row the producer can hand to Redis: one Redis value (a batch, or a piece of a
 * copy chunk) holds at most proto-max-bulk-len bytes, and a larger write makes Redis drop the
 * connection — which, resent after every reconnect, would stop the pipeline for ever.
 */
export async function largestRowBytes(redis: Redis): Promise<number> {
  const reply = (await redis.config('GET', 'proto-max-bulk-len').catch(() => [])) as string[];
  const limit = Number(reply[1] ?? DEFAULT_MAX_BULK_BYTES);
  return (Number.isFinite(limit) && limit > 0 ? limit : DEFAULT_MAX_BULK_BYTES) - ENVELOPE_BYTES;
}

/** A streamed row change too large for Redis, as an error naming the table, its largest column and the fixes. */
export function oversizedChange(relation: Relation, op: RowOp, images: Buffer, start: number, end: number, limit: number): UserError {
  const { row, old } = readRowImages(new ByteReader(images.subarray(start, end)), op);
  const sizes = (row ?? old ?? []).map((value) => (typeof value === 'string' ? Buffer.byteLength(value) : 0));
  return oversized(relation, `An ${op} streamed`, end - start, sizes, limit);
}

/** A copied row too large for Redis (`text`: the row in COPY's text format). */
export function oversizedCopyRow(relation: Relation, text: Buffer, limit: number): UserError {
  const sizes: number[] = [];
  const end = text[text.length - 1] === 0x0a ? text.length - 1 : text.length;
  for (let from = 0, at = 0; at <= end; at++) {
    if (at === end || text[at] === 0x09) {
      sizes.push(at - from);
      from = at + 1;
    }
  }
  return oversized(relation, 'A copied row', text.length, sizes, limit);
}

function oversized(relation: Relation, what: string, bytes: number, columnBytes: number[], limit: number): UserError {
  const largest = columnBytes.reduce((best, size, index) => (size > (columnBytes[best] ?? -1) ? index : best), 0);
  const column = relation.columns[largest]?.name ?? `column ${largest + 1}`;
  return new UserError(
    `${what} from ${qualifiedName(relation)} is ${bytes} bytes (column "${column}" alone ${columnBytes[largest] ?? bytes} bytes), more than Redis takes in one value (proto-max-bulk-len allows about ${limit} bytes). ` +
      `Raise Redis' proto-max-bulk-len (CONFIG SET proto-max-bulk-len ${nextPowerOfTwo(bytes + ENVELOPE_BYTES)}, and in redis.conf), or leave the column out of the publication (ALTER PUBLICATION … SET TABLE ${qualifiedName(relation)} (other columns…)); then start the producer again. The slot still holds the change: nothing is skipped.`,
  );
}

function nextPowerOfTwo(bytes: number): number {
  return 2 ** Math.ceil(Math.log2(bytes));
}
