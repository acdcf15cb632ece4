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

/**
 * One step of a batch, after the runner removed everything the destination already has. A copy
 * step's rows are Postgres' text COPY format (parseCopyRows reads them); a change's values are
 * Postgres text, NULL, or UNCHANGED (a TOASTed value an update did not touch: keep the stored one).
 */
export type Step =
  /** replace: the table's old rows go first; merge: rows replace stored rows with their key (a resumed copy). */
  | { kind: 'copy'; relation: Relation; replace: boolean; merge: boolean; copyText: Buffer[]; rows: number; longestRow?: number }
  | { kind: 'changes'; relation: Relation; changes: RowChange[] }
  | { kind: 'truncate'; relations: Relation[]; version: Version };

/**
 * A destination: the small interface a new one implements (consumers/duckdb is the reference;
 * examples/jsonl-destination.ts is one in 50 lines). The runner does ordering, retries,
 * de-duplication and watermarks; the destination reads its table states and applies steps
 * together with new states.
 *
 * The contract:
 * - **Concurrency.** The runner works on several partitions at once, so tableStates() and
 *   apply() may be called while another apply() runs — but never for the same table: a table's
 *   batches come one at a time, in order. A destination that cannot take concurrent applies
 *   serialises them itself (DuckDB queues them on its one connection).
 * - **Atomicity.** apply() stores the steps' rows and the new states all or nothing, states in
 *   the same transaction as the rows: that is what makes delivery exactly once (a batch applied
 *   again after a crash finds its states and is skipped). A destination without transactions
 *   writes the rows first and the states after, and is at least once: say so in its docs
 *   (stdout does), or make the pair atomic another way (examples/jsonl-destination.ts cuts
 *   what was written after the last saved state).
 * - **Caching.** A destination with one writer may keep the states in memory after reading them
 *   once (DuckDB does). One that several processes write (BigQuery) reads them afresh in
 *   tableStates() and makes apply() fail if they changed meanwhile (another process applied the
 *   batch): the runner then retries it, and it is skipped.
 * - **Errors.** Any error is retried in place with backoff, the partition shown as retrying, then
 *   parked. Throw PermanentError for what a human must fix (credentials, permissions): the
 *   partition is parked at once, still retried slowly. Throw RefusedError when what the batch
 *   holds is refused (a value, a constraint): its table is quarantined, and the rest goes on.
 */
export interface Destination {
  /** The stored state of these tables, by table OID; absent for a table never written. */
  tableStates(relations: Relation[]): Promise<Map<number, TableState>>;
  /**
   * Applies the steps in order and stores the new table states (by OID), all or nothing. A
   * table in `states` may have no step (a state to store alone, e.g. a quarantine); a table the
   * destination has never held then comes with an empty `changes` step, to be created empty.
   */
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
  /** Called once, after the last apply. */
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

/**
 * A table state from a row of a destination's state table, whose columns are named alike in
 * every destination: copy_lsn, copy_chunk, copy_done, applied_lsn, applied_ordinal (LSNs as
 * text or numbers) and quarantine (JSON, as text or parsed).
 */
export function stateFromRow(row: Record<string, unknown>): TableState {
  const state: TableState = {
    copyLsn: BigInt(row.copy_lsn as string),
    copyChunk: Number(row.copy_chunk),
    copyDone: Boolean(row.copy_done),
    applied: { lsn: BigInt(row.applied_lsn as string), ordinal: Number(row.applied_ordinal) },
  };
  if (row.quarantine) state.quarantine = typeof row.quarantine === 'string' ? JSON.parse(row.quarantine) : (row.quarantine as TableState['quarantine']);
  return state;
}

/** The states of these tables among those a destination keeps (tables it never held are absent). */
export function statesOf(stored: Map<number, StoredTable<TableShape>>, oids: Iterable<number>): Map<number, TableState> {
  const states = new Map<number, TableState>();
  for (const oid of oids) {
    const table = stored.get(oid);
    if (table) states.set(oid, table.state);
  }
  return states;
}
