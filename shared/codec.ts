import type { Batch, Change, OutgoingBatch, Relation, RowChange, Value } from './events.js';
import { compareVersions, formatLsn, type Lsn, parseLsn, type Version } from './lsn.js';
import { ByteReader, type RowOp, readRowImages, rowImages } from './tupledata.js';

/**
 * The batch codec: a Batch as a compact, JSON-safe object (BullMQ stores job data as JSON).
 * Relations travel once per batch as JSON; the changes as one base64 string of binary records
 * whose row images are pgoutput's own TupleData (shared/tupledata), copied from the walsender's
 * messages without decoding: no JSON per value on either side, and the producer allocates no
 * strings per value. A copy chunk's rows travel beside the job (shared/chunks).
 * `v` lets a consumer refuse a batch made by a producer it does not understand (4: chunks are
 * Redis lists of pieces, no longer strings; 5: copy chunks hold Postgres' text COPY format, not CSV).
 *
 * Change record: op byte (I, U, D, T); LSN (two uint32); ordinal (uint32); then for I/U/D the
 * relation index (uint16), the images' length (uint32) and the images; for T the relation
 * count (uint16), the relation indexes (uint16 each) and the option flags (byte).
 */
export const CODEC_VERSION = 5;

type EncodedColumn = [string, number, number, 0 | 1, EncodedColumnDetails?];
type EncodedColumnDetails = { a?: number; b?: number; e?: number; d?: number; m?: string; u?: number };
type EncodedRelation = [number, string, string, string, EncodedColumn[]];

export interface EncodedBatch {
  v: number;
  p: string;
  n: number;
  e: number;
  s: number;
  r: EncodedRelation[];
  /** Change records, base64; empty when they are in Redis as chunk `b`. */
  c: string;
  b?: string;
  k?: [number, string, number, 0 | 1, number, number, string, (0 | 1)?, number?];
  t?: number;
  /** The batch sent before this one to the same destination and partition in this run (0: none): a consumer that applied another finds a gap. */
  q?: number;
}

const OP_CODES = { insert: 0x49, update: 0x55, delete: 0x44, truncate: 0x54 } as const;
const OPS: Record<number, RowOp> = { 73: 'insert', 85: 'update', 68: 'delete' };
const TRUNCATE_CASCADE = 1;
const TRUNCATE_RESTART_IDENTITY = 2;

/** `recordsChunk`: the batch's change records are stored as this chunk (shared/chunks) rather than inline. */
export function encodeBatch(batch: OutgoingBatch, recordsChunk?: string): EncodedBatch {
  const encoded: EncodedBatch = {
    v: CODEC_VERSION,
    p: batch.pipeline,
    n: batch.partition,
    e: batch.epoch,
    s: batch.seq,
    r: batch.relations.map(encodeRelation),
    c: recordsChunk ? '' : batch.records.toString('base64'),
  };
  if (recordsChunk) encoded.b = recordsChunk;
  if (batch.committedAt !== undefined) encoded.t = batch.committedAt;
  if (batch.copy) {
    // The rows themselves travel beside the job (shared/chunks), never through its JSON.
    const { relation, snapshotLsn, chunk, last, rows, bytes, id, merge, longestRow } = batch.copy;
    encoded.k = [relation, formatLsn(snapshotLsn), chunk, last ? 1 : 0, rows, bytes, id ?? ''];
    if (merge || longestRow !== undefined) encoded.k.push(merge ? 1 : 0);
    if (longestRow !== undefined) encoded.k.push(longestRow);
  }
  return encoded;
}

/** A consumer-side batch (decoded changes) as the producer would send it: for tests and tools. */
export function outgoing({ changes, copy, ...header }: Batch): OutgoingBatch {
  const batch: OutgoingBatch = { ...header, records: encodeChanges(changes) };
  if (copy) {
    const { copyText: _, ...chunk } = copy;
    batch.copy = chunk;
  }
  return batch;
}

/** Refuses a batch of another codec version: before anything of it (its chunk, say) is read. */
export function assertCodecVersion(encoded: EncodedBatch): void {
  if (encoded.v !== CODEC_VERSION) {
    throw new Error(
      `batch codec version ${encoded.v} is not supported (this consumer reads version ${CODEC_VERSION}); run the same pg-replicate version for producer and consumers`,
    );
  }
}

/** `records`: the change records of a batch that keeps them in Redis (chunk `encoded.b`). */
export function decodeBatch(encoded: EncodedBatch, records?: Buffer): Batch {
  assertCodecVersion(encoded);
  const batch: Batch = {
    pipeline: encoded.p,
    partition: encoded.n,
    epoch: encoded.e,
    seq: encoded.s,
    relations: encoded.r.map(decodeRelation),
    changes: decodeChanges(encoded.b ? recordsOf(encoded.b, records) : Buffer.from(encoded.c, 'base64')),
  };
  if (encoded.t !== undefined) batch.committedAt = encoded.t;
  if (encoded.k) {
    const [relation, snapshotLsn, chunk, last, rows, bytes, id, merge, longestRow] = encoded.k;
    batch.copy = {
      relation,
      snapshotLsn: parseLsn(snapshotLsn),
      chunk,
      last: last === 1,
      rows,
      bytes,
      ...(id ? { id } : {}),
      ...(merge === 1 ? { merge: true } : {}),
      ...(longestRow !== undefined ? { longestRow } : {}),
    };
  }
  return batch;
}

function encodeRelation(relation: Relation): EncodedRelation {
  return [
    relation.oid,
    relation.schema,
    relation.name,
    relation.replicaIdentity,
    relation.columns.map((column): EncodedColumn => {
      const details: EncodedColumnDetails = {};
      if (column.attnum !== undefined) details.a = column.attnum;
      if (column.baseTypeOid !== undefined) details.b = column.baseTypeOid;
      if (column.elementTypeOid !== undefined) details.e = column.elementTypeOid;
      if (column.dimensions !== undefined) details.d = column.dimensions;
      if (column.missingValue !== undefined) details.m = column.missingValue;
      if (column.distinctShare !== undefined) details.u = column.distinctShare;
      const encoded: EncodedColumn = [column.name, column.typeOid, column.typeModifier, column.isKey ? 1 : 0];
      if (Object.keys(details).length > 0) encoded.push(details);
      return encoded;
    }),
  ];
}

function decodeRelation([oid, schema, name, replicaIdentity, columns]: EncodedRelation): Relation {
  return {
    oid,
    schema,
    name,
    replicaIdentity: replicaIdentity as Relation['replicaIdentity'],
    columns: columns.map(([columnName, typeOid, typeModifier, isKey, details]) => ({
      name: columnName,
      typeOid,
      typeModifier,
      isKey: isKey === 1,
      ...(details?.a !== undefined ? { attnum: details.a } : {}),
      ...(details?.b !== undefined ? { baseTypeOid: details.b } : {}),
      ...(details?.e !== undefined ? { elementTypeOid: details.e } : {}),
      ...(details?.d !== undefined ? { dimensions: details.d } : {}),
      ...(details?.m !== undefined ? { missingValue: details.m } : {}),
      ...(details?.u !== undefined ? { distinctShare: details.u } : {}),
    })),
  };
}

function recordsOf(chunk: string, records: Buffer | undefined): Buffer {
  if (!records) throw new Error(`the change records of this batch are in chunk ${chunk}: read them first`);
  return records;
}

function encodeChanges(changes: Change[]): Buffer {
  const records = new ChangeRecords();
  for (const change of changes) {
    if (change.op === 'truncate') records.truncate(change.relations, change.version, change.cascade, change.restartIdentity);
    else records.row(change.op, change.relation, change.version.lsn, change.version.ordinal, change.images ?? rowImages(change.op, change.row, change.old));
  }
  return records.bytes();
}

/**
 * Change records written one by one into a growing buffer: the producer's batcher writes each
 * streamed change here as it arrives, copying its row images straight from the walsender's
 * message, so a batch holds no object per change.
 */
export class ChangeRecords {
  count = 0;
  private buffer: Buffer;
  private length = 0;
  // A transaction's changes share their commit LSN: split it once, not per change.
  private lsn = -1n;
  private high = 0;
  private low = 0;

  /** `capacity`: the bytes expected, so that a large batch is not grown (copied) step by step. */
  constructor(capacity = 64 * 1024) {
    this.buffer = Buffer.allocUnsafe(capacity);
  }

  /** A row change whose images are `images` from `start` to `end`. */
  row(op: RowOp, relation: number, lsn: Lsn, ordinal: number, images: Buffer, start = 0, end = images.length): void {
    const length = end - start;
    const offset = this.header(OP_CODES[op], lsn, ordinal, 6 + length);
    const buffer = this.buffer;
    buffer.writeUInt16BE(relation, offset);
    buffer.writeUInt32BE(length, offset + 2);
    images.copy(buffer, offset + 6, start, end);
  }

  truncate(relations: number[], version: Version, cascade: boolean, restartIdentity: boolean): void {
    let offset = this.header(OP_CODES.truncate, version.lsn, version.ordinal, 3 + 2 * relations.length);
    const buffer = this.buffer;
    offset = buffer.writeUInt16BE(relations.length, offset);
    for (const relation of relations) offset = buffer.writeUInt16BE(relation, offset);
    buffer[offset] = (cascade ? TRUNCATE_CASCADE : 0) | (restartIdentity ? TRUNCATE_RESTART_IDENTITY : 0);
  }

  bytes(): Buffer {
    return this.buffer.subarray(0, this.length);
  }

  /** Reserves a record of `body` bytes after its 13-byte header; returns where the body goes. */
  private header(code: number, lsn: Lsn, ordinal: number, body: number): number {
    const needed = this.length + 13 + body;
    if (needed > this.buffer.length) {
      const grown = Buffer.allocUnsafe(Math.max(needed, this.buffer.length * 2));
      this.buffer.copy(grown, 0, 0, this.length);
      this.buffer = grown;
    }
    if (lsn !== this.lsn) {
      this.lsn = lsn;
      this.high = Number(lsn >> 32n);
      this.low = Number(lsn & 0xffffffffn);
    }
    const buffer = this.buffer;
    const offset = this.length;
    buffer[offset] = code;
    buffer.writeUInt32BE(this.high, offset + 1);
    buffer.writeUInt32BE(this.low, offset + 5);
    buffer.writeUInt32BE(ordinal, offset + 9);
    this.length = needed;
    this.count++;
    return offset + 13;
  }
}

function decodeChanges(buffer: Buffer): Change[] {
  const changes: Change[] = [];
  const reader = new ByteReader(buffer);
  let high = -1;
  let low = -1;
  let lsn = 0n;
  while (reader.offset < buffer.length) {
    const code = reader.byte();
    const nextHigh = reader.uint32();
    const nextLow = reader.uint32();
    if (nextHigh !== high || nextLow !== low) {
      high = nextHigh;
      low = nextLow;
      lsn = (BigInt(high) << 32n) | BigInt(low);
    }
    const ordinal = reader.uint32();
    if (code === OP_CODES.truncate) {
      const version = { lsn, ordinal };
      const relations: number[] = new Array(reader.uint16());
      for (let i = 0; i < relations.length; i++) relations[i] = reader.uint16();
      const flags = reader.byte();
      changes.push({
        op: 'truncate',
        relations,
        version,
        cascade: (flags & TRUNCATE_CASCADE) !== 0,
        restartIdentity: (flags & TRUNCATE_RESTART_IDENTITY) !== 0,
      });
      continue;
    }
    const op = OPS[code];
    if (!op) throw new Error(`batch codec: unknown change record ${code}`);
    const relation = reader.uint16();
    const length = reader.uint32();
    changes.push(new RecordedRowChange(op, relation, lsn, ordinal, buffer, reader.offset, reader.offset + length));
    reader.offset += length;
  }
  if (reader.offset !== buffer.length) throw new Error('batch codec: the last change record is cut short');
  return changes;
}

/**
 * A row change as the consumer reads it: its images lie in the batch's records (from
 * `imagesStart` to `imagesEnd`), decoded into values only when first asked for; a destination
 * may instead move the bytes on as they are, reading them in place. Its version is made each
 * time it is asked for: an object per change kept as long as its batch reached V8's old
 * generation, where one made and dropped at once is collected young, at next to no cost.
 */
export class RecordedRowChange implements RowChange {
  private decoded?: { row?: Value[]; old?: Value[] };

  constructor(
    readonly op: RowOp,
    readonly relation: number,
    readonly lsn: Lsn,
    readonly ordinal: number,
    readonly records: Buffer,
    readonly imagesStart: number,
    readonly imagesEnd: number,
  ) {}

  /** Made when asked for (see above). */
  get version(): Version {
    return { lsn: this.lsn, ordinal: this.ordinal };
  }

  /** compareVersions(this.version, other's), without making either. */
  compareVersion(other: Version | RecordedRowChange): number {
    if (this.lsn !== other.lsn) return this.lsn < other.lsn ? -1 : 1;
    return this.ordinal - other.ordinal;
  }

  /** The images as a buffer of their own (a view: nothing is copied). */
  get images(): Buffer {
    return this.records.subarray(this.imagesStart, this.imagesEnd);
  }

  get row(): Value[] | undefined {
    return this.values().row;
  }

  get old(): Value[] | undefined {
    return this.values().old;
  }

  private values(): { row?: Value[]; old?: Value[] } {
    if (!this.decoded) {
      const reader = new ByteReader(this.records, this.imagesStart);
      this.decoded = readRowImages(reader, this.op);
      if (reader.offset !== this.imagesEnd) throw new Error("batch codec: a change record's images do not match their length");
    }
    return this.decoded;
  }
}

/**
 * compareVersions of a change's version and another's (a change's, or a version): for changes
 * read from a batch, without making their versions (see RecordedRowChange).
 */
export function compareChangeVersion(change: Change, other: Change | Version): number {
  if (change instanceof RecordedRowChange && (other instanceof RecordedRowChange || !('op' in other))) return change.compareVersion(other);
  return compareVersions(change.version, 'op' in other ? other.version : other);
}
