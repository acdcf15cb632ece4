import type { Lsn, Version } from './lsn.js';

/**
 * The event model both sides speak. Values stay in Postgres' own text form (what pgoutput and
 * COPY produce) from the slot to the consumer; each destination converts them with the shared
 * type mapping. That keeps the producer free of per-value work and loses nothing on the way.
 */

/** A column value: Postgres text, SQL NULL, or UNCHANGED for a TOASTed value an UPDATE did not touch. */
export type Value = string | null | typeof UNCHANGED;
export const UNCHANGED = false as const;

export interface Column {
  name: string;
  typeOid: number;
  typeModifier: number;
  /** Part of the replica identity (the primary key, the chosen index, or every column for FULL). */
  isKey: boolean;
  /** Column number in the source table: kept by a rename, so a rename is told from a drop and an add. */
  attnum?: number;
  /** The built-in type the values have when typeOid is not one: a domain's base, text for an enum. */
  baseTypeOid?: number;
  /** For arrays: the elements' built-in type and the declared number of dimensions. */
  elementTypeOid?: number;
  dimensions?: number;
  /** The value rows older than the column have (ADD COLUMN … DEFAULT stores it without a rewrite). */
  missingValue?: string;
  /**
   * Distinct values in this column per row of the table (0–1; 1: every value is unique), by
   * Postgres' statistics (ANALYZE), as a copy found them: destinations may pick a storage by it.
   */
  distinctShare?: number;
}

export type ReplicaIdentity = 'default' | 'nothing' | 'full' | 'index';

export interface Relation {
  oid: number;
  schema: string;
  name: string;
  replicaIdentity: ReplicaIdentity;
  columns: Column[];
}

export type Operation = 'insert' | 'update' | 'delete' | 'truncate';

export interface RowChange {
  op: 'insert' | 'update' | 'delete';
  /** Index into the batch's relations. */
  relation: number;
  version: Version;
  /** New row for insert/update. */
  row?: Value[];
  /** Old key (or whole old row with REPLICA IDENTITY FULL) for update/delete, when Postgres sent one. */
  old?: Value[];
  /**
   * On the producer side, instead of row and old: the images as the walsender sent them
   * (shared/tupledata), passed on undecoded; the consumer's codec decodes them into row and old.
   */
  images?: Buffer;
}

export interface TruncateChange {
  op: 'truncate';
  relations: number[];
  version: Version;
  cascade: boolean;
  restartIdentity: boolean;
}

export type Change = RowChange | TruncateChange;

/** Set on batches that carry a slice of a table copy rather than streamed changes. */
export interface CopyChunk {
  /** Index into the batch's relations. */
  relation: number;
  /**
   * Where its rows wait in Redis (shared/chunks): absent for a chunk without rows. The rows are
   * Postgres' text COPY format (UTF-8; parse with shared/csv), straight from COPY: no per-value
   * work on the way.
   */
  id?: string;
  rows: number;
  bytes: number;
  /** The snapshot LSN the copy was read at: its rows have version (snapshotLsn, 0). */
  snapshotLsn: Lsn;
  /**
   * Increasing in queue order within one copy (gaps allowed: a resumed copy numbers its chunks
   * above every earlier run's). The first chunk of a copy a destination sees replaces whatever
   * the table held; a chunk at or below the last one applied is a re-delivery.
   */
  chunk: number;
  /** True on the table's last chunk: after it the copy is complete. */
  last: boolean;
  /**
   * The rows replace stored rows with the same key rather than being added: set on the chunks
   * of a resumed copy, whose rows may already have arrived in a chunk of the interrupted run.
   */
  merge?: boolean;
  /**
   * The bytes of its longest row, or more: CSV readers refuse rows beyond a limit (DuckDB's is
   * 2 MB) unless told to expect them.
   */
  longestRow?: number;
}

/** What a batch says of itself, on either side of the queue. */
export interface BatchHeader {
  pipeline: string;
  partition: number;
  /** Producer run that made the batch, and the batch's number within its partition in that run. */
  epoch: number;
  seq: number;
  relations: Relation[];
  /** When the oldest transaction in the batch committed (ms since the Unix epoch): for replication lag. */
  committedAt?: number;
}

/** A batch as the producer sends it: its streamed changes already written as codec records (shared/codec), or a copy chunk. */
export interface OutgoingBatch extends BatchHeader {
  /** The change records; empty on copy batches. */
  records: Buffer;
  copy?: CopyChunk;
}

/** A batch as a consumer applies it: its changes decoded, and a copy chunk's rows once read from Redis. */
export interface Batch extends BatchHeader {
  /** Streamed changes, in commit order; empty on copy batches. */
  changes: Change[];
  copy?: ReceivedCopyChunk;
}

/** A copy chunk on the consumer's side: its rows, once read from Redis for applying. */
export interface ReceivedCopyChunk extends CopyChunk {
  /** The rows in the pieces they were stored in. */
  copyText?: Buffer[];
}

export function qualifiedName(relation: { schema: string; name: string }): string {
  return `${relation.schema}.${relation.name}`;
}
