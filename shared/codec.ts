import type { Batch, Change, Relation, Value } from './events.js';
import { type Lsn, formatLsn, parseLsn } from './lsn.js';

/**
 * The batch codec: a Batch as a compact, JSON-safe object (BullMQ stores job data as JSON).
 * Relations travel once per batch, rows as positional arrays, LSNs as Postgres-style strings.
 * `v` lets a consumer refuse a batch made by a producer it does not understand.
 */
export const CODEC_VERSION = 2;

type EncodedColumn = [string, number, number, 0 | 1, EncodedColumnDetails?];
type EncodedColumnDetails = { a?: number; b?: number; e?: number; d?: number; m?: string };
type EncodedRelation = [number, string, string, string, EncodedColumn[]];
type EncodedChange =
  | ['I' | 'U' | 'D', number, string, number, Value[] | null, Value[] | null]
  | ['T', number[], string, number, number];

export interface EncodedBatch {
  v: number;
  p: string;
  n: number;
  e: number;
  s: number;
  r: EncodedRelation[];
  c: EncodedChange[];
  k?: [number, string, number, 0 | 1, number, number, string, 1?];
  t?: number;
}

const OP_CODES = { insert: 'I', update: 'U', delete: 'D' } as const;
const OPS = { I: 'insert', U: 'update', D: 'delete' } as const;
const TRUNCATE_CASCADE = 1;
const TRUNCATE_RESTART_IDENTITY = 2;

export function encodeBatch(batch: Batch): EncodedBatch {
  // A transaction's changes share their commit LSN: convert it once per batch, not per change.
  const lsnTexts = memo(formatLsn);
  const encoded: EncodedBatch = {
    v: CODEC_VERSION,
    p: batch.pipeline,
    n: batch.partition,
    e: batch.epoch,
    s: batch.seq,
    r: batch.relations.map(encodeRelation),
    c: batch.changes.map((change) => encodeChange(change, lsnTexts)),
  };
  if (batch.committedAt !== undefined) encoded.t = batch.committedAt;
  if (batch.copy) {
    // The rows themselves travel beside the job (shared/chunks), never through its JSON.
    const { relation, snapshotLsn, chunk, last, rows, bytes, id, merge } = batch.copy;
    encoded.k = [relation, formatLsn(snapshotLsn), chunk, last ? 1 : 0, rows, bytes, id ?? ''];
    if (merge) encoded.k.push(1);
  }
  return encoded;
}

export function decodeBatch(encoded: EncodedBatch): Batch {
  const lsns = memo(parseLsn);
  if (encoded.v !== CODEC_VERSION) {
    throw new Error(`batch codec version ${encoded.v} is not supported (this consumer reads version ${CODEC_VERSION}); run the same pg-replicate version for producer and consumers`);
  }
  const batch: Batch = {
    pipeline: encoded.p,
    partition: encoded.n,
    epoch: encoded.e,
    seq: encoded.s,
    relations: encoded.r.map(decodeRelation),
    changes: encoded.c.map((change) => decodeChange(change, lsns)),
  };
  if (encoded.t !== undefined) batch.committedAt = encoded.t;
  if (encoded.k) {
    const [relation, snapshotLsn, chunk, last, rows, bytes, id, merge] = encoded.k;
    batch.copy = { relation, snapshotLsn: parseLsn(snapshotLsn), chunk, last: last === 1, rows, bytes, ...(id ? { id } : {}), ...(merge === 1 ? { merge: true } : {}) };
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
    })),
  };
}

function memo<From, To>(convert: (value: From) => To): (value: From) => To {
  const known = new Map<From, To>();
  return (value) => {
    let converted = known.get(value);
    if (converted === undefined) known.set(value, (converted = convert(value)));
    return converted;
  };
}

function encodeChange(change: Change, formatLsn: (lsn: Lsn) => string): EncodedChange {
  const lsn = formatLsn(change.version.lsn);
  if (change.op === 'truncate') {
    const flags = (change.cascade ? TRUNCATE_CASCADE : 0) | (change.restartIdentity ? TRUNCATE_RESTART_IDENTITY : 0);
    return ['T', change.relations, lsn, change.version.ordinal, flags];
  }
  return [OP_CODES[change.op], change.relation, lsn, change.version.ordinal, change.row ?? null, change.old ?? null];
}

function decodeChange(encoded: EncodedChange, parseLsn: (text: string) => Lsn): Change {
  const version = { lsn: parseLsn(encoded[2]), ordinal: encoded[3] };
  if (encoded[0] === 'T') {
    const flags = encoded[4];
    return {
      op: 'truncate',
      relations: encoded[1],
      version,
      cascade: (flags & TRUNCATE_CASCADE) !== 0,
      restartIdentity: (flags & TRUNCATE_RESTART_IDENTITY) !== 0,
    };
  }
  const [code, relation, , , row, old] = encoded;
  return { op: OPS[code], relation, version, ...(row ? { row } : {}), ...(old ? { old } : {}) };
}
