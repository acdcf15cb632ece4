import type { Column, Relation, RowChange } from '../shared/events.js';
import type { Lsn, Version } from '../shared/lsn.js';

/** What a destination stores durably about each table, in the same transaction as the table's data. */
export interface TableState {
  /** Snapshot LSN of the table's latest copy, the last chunk of it applied, and whether it finished. */
  copyLsn: Lsn;
  copyChunk: number;
  copyDone: boolean;
  /** The highest version applied to this table: every change at or below it is skipped. */
  applied: Version;
  /**
   * Set when the destination refused the table's data: its changes are skipped until a fresh
   * copy of it (`pg-replicate resync --table`) replaces what it holds.
   */
  quarantine?: Quarantine;
}

/** Why and since when a table is quarantined at a destination. */
export interface Quarantine {
  error: string;
  /** ISO time. */
  since: string;
}

/** A source table as a destination holds it: where, and whether it is quarantined. */
export interface TableListing {
  /** "schema.name" at the source. */
  source: string;
  /** Its name at the destination. */
  place: string;
  quarantine?: Quarantine;
}

/** The source table a destination's table was shaped from: its schema, name and columns then. */
export interface TableShape {
  schema: string;
  name: string;
  columns: Column[];
}

/** A destination's record of one table: its state and the shape of the rows it holds. */
export interface StoredTable<Shape extends TableShape = TableShape> {
  state: TableState;
  shape: Shape;
}

/** One step of a batch, after the runner removed everything the destination already has. */
export type Step =
  /** replace: the table's old rows go first; merge: rows replace stored rows with their key (a resumed copy). */
  | { kind: 'copy'; relation: Relation; replace: boolean; merge: boolean; csv: Buffer[]; rows: number; longestRow?: number }
  | { kind: 'changes'; relation: Relation; changes: RowChange[] }
  | { kind: 'truncate'; relations: Relation[]; version: Version };

/**
 * A destination: the small interface a new one implements (see consumers/duckdb for the
 * reference). The runner does ordering, retries, de-duplication and watermarks; the
 * destination only reads its table states and applies steps atomically with new states.
 */
export interface Destination {
  /** The stored state of these tables, by table OID; absent for a table never written. */
  tableStates(relations: Relation[]): Promise<Map<number, TableState>>;
  /** Applies the steps in order and stores the new table states (by OID), all or nothing. */
  apply(steps: Step[], states: Map<number, TableState>): Promise<void>;
  /**
   * Optional: does ahead the part of applying `steps` that needs nothing of the destination's
   * state (encoding rows), while an earlier apply runs; apply of the same steps then finds it
   * done. It may run between an apply's start and its end, and must not throw.
   */
  prepare?(steps: Step[]): void;
  /**
   * Optional: every source table it holds, where, and whether quarantined, for `status`: names
   * are placed apart where the destination would make them collide.
   */
  tables?(): TableListing[];
  close(): Promise<void>;
}

/**
 * A failure retrying will not fix by itself (bad credentials, missing permissions, a schema the
 * destination refuses): the runner reports the partition parked at once, with this message,
 * and keeps retrying slowly so that it resumes when the cause is fixed.
 */
export class PermanentError extends Error {
  override name = 'PermanentError';
}

/**
 * The destination refuses what a batch holds for a table (a value it cannot store, a constraint
 * someone added to its copy of the table): the same batch fails the same way every time. The
 * runner then applies the batch table by table and quarantines the tables refused, so that the
 * partition's other tables go on.
 */
export class RefusedError extends PermanentError {
  override name = 'RefusedError';
}
