import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import { joinPieces } from '../../shared/chunks.js';
import { parseCopyRows } from '../../shared/csv.js';
import { errorMessage, UserError } from '../../shared/errors.js';
import { qualifiedName, type Relation } from '../../shared/events.js';
import { log } from '../../shared/log.js';
import {
  type Destination,
  RefusedError,
  type TableShape as SourceShape,
  type Step,
  type StoredTable,
  statesOf,
  type TableListing,
  type TableState,
} from '../destination.js';
import { collapseImagesToCsvAside } from '../imagescsv.js';
import { withDistinctColumnNamesIn } from '../names.js';
import { columnChanges, keyColumnsOf } from '../schema.js';
import { IdleCheckpoint } from './idle.js';
import { MemoryLimit, OUT_OF_MEMORY } from './memory.js';
import { placeTable, type TargetName } from './places.js';
import { collapsedLines, RowWriter } from './rows.js';
import { ident, literal, type Shape, StateTable } from './statetable.js';
import { duckDbColumnSql, duckDbType } from './types.js';

/**
 * DuckDB's errors about the data or a table's definition, which the same batch meets again on
 * every retry (as opposed to I/O, memory or an interrupted connection, which pass).
 */
const REFUSALS = /^(Conversion|Invalid Input|Out of Range|Constraint|Mismatch Type|Binder|Catalog|Dependency|Not implemented) Error/;

/**
 * The DuckDB destination: each source table mirrored as "schema"."table", and its state
 * (copy progress, highest applied version, shape) in _pg_replicate.tables keyed by the source
 * table's OID, written in the same transaction as the rows. A DuckDB file has one writer
 * process, so the state is read once at start and kept in memory; apply() calls are
 * serialised on one connection.
 */
export class DuckDbDestination implements Destination {
  private stored = new Map<number, StoredTable<Shape>>();
  private stateTable = new StateTable('');
  /** Shapes (and places) of tables changed by the apply in progress: the stored ones once it commits. */
  private applying = new Map<number, Shape>();
  /** The database's catalog name: every table is addressed with it (schemas named temp or system are catalogs too). */
  private database = '';
  private queue: Promise<unknown> = Promise.resolve();
  private readonly rows: RowWriter;
  /** DuckDB's own thread count (one per core), and the count set now. */
  private allThreads = 1;
  private threads = 1;
  /** DuckDB's memory_limit, where the user set none. */
  private memory?: MemoryLimit;
  /** Set when a fatal error invalidated the open database (see reopen): the error. */
  private invalidated: string | undefined;
  private readonly idle: IdleCheckpoint;

  private constructor(
    private readonly path: string,
    private readonly settings: Record<string, string>,
    private instance: DuckDBInstance,
    private connection: DuckDBConnection,
    /** This process's own directory for copy chunks on their way into DuckDB. */
    private readonly scratch: string,
  ) {
    this.idle = new IdleCheckpoint(`${path}.wal`, () => this.inTurn(() => this.checkpoint()));
    this.rows = new RowWriter(
      () => this.connection,
      (relation) => this.tableSql(relation),
      scratch,
      // Each thread reads a buffer (DuckDB takes a buffer's whole size, however short the file), and the rows it inserts need room beside them.
      async (bufferBytes, copy) => {
        const needed = this.threads * bufferBytes + STATEMENT_ROOM_BYTES;
        await (copy ? this.memory?.forCopy(this.connection, needed) : this.memory?.atLeast(this.connection, needed));
      },
    );
  }

  /** `settings`: DuckDB's own (memory_limit, threads, checkpoint_threshold, …), for every time the database is opened. */
  static async open(path: string, settings: Record<string, string> = {}): Promise<DuckDbDestination> {
    let instance: DuckDBInstance;
    try {
      instance = await DuckDBInstance.create(path, settings);
    } catch (error) {
      const check = Object.keys(settings).length > 0 ? 'Check --path and the --setting values' : 'Check --path';
      throw new UserError(
        `Cannot open DuckDB database ${path} (${errorMessage(error)}). ${check}: the directory must exist and no other process may have the file open for writing.`,
      );
    }
    const connection = await instance.connect();
    const destination = new DuckDbDestination(path, settings, instance, connection, await mkdtemp(join(tmpdir(), 'pg-replicate-duckdb-')));
    await destination.load();
    return destination;
  }

  /**
   * Opens the database again after a fatal error. DuckDB invalidates an open database when a
   * checkpoint fails (a full disk, an I/O error) and refuses every statement after it, even
   * once the cause is gone: without this, the retries would fail for ever. What was committed
   * is in the file and its WAL; the table states are read from there again.
   */
  private async reopen(): Promise<void> {
    try {
      this.connection.closeSync();
      this.instance.closeSync();
    } catch {
      // Closed already (an earlier attempt to open it again failed).
    }
    this.instance = await DuckDBInstance.create(this.path, this.settings);
    this.connection = await this.instance.connect();
    await this.load();
    this.invalidated = undefined;
  }

  private async load(): Promise<void> {
    this.allThreads = this.threads = Number((await this.connection.runAndReadAll("SELECT current_setting('threads')")).getRows()[0][0]);
    if (this.memory) await this.memory.set(this.connection);
    else this.memory = await MemoryLimit.start(this.connection, this.settings, this.path);
    // Staging files are rewritten in place under the same names (withFiles): never read them from a cache.
    await this.connection.run('SET enable_external_file_cache = false');
    // DuckDB hands a worker thread's freed memory back to the OS once the thread has idled for
    // half a second with a peak above this threshold (128 MiB by default). A consumer idles
    // between transactions, and the next copy then faults every page in again: in a backfill,
    // page faults were a fifth of the consumer's CPU (perf, on a VM). A peak counts what a
    // thread allocated less what it freed itself, so threads that hand buffers to each other
    // pass any small threshold: 1 GB changed nothing, this one does. Idle memory still goes back
    // after DuckDB's allocator decay (seconds).
    await this.connection.run(`SET allocator_flush_threshold = '${ALLOCATOR_FLUSH_THRESHOLD}'`);
    this.database = String((await this.connection.runAndReadAll('SELECT current_database()')).getRows()[0][0]);
    this.stateTable = new StateTable(this.database);
    await this.stateTable.ensure(this.connection);
    this.stored = await this.stateTable.read(this.connection);
  }

  async tableStates(relations: Relation[]): Promise<Map<number, TableState>> {
    return statesOf(
      this.stored,
      relations.map((relation) => relation.oid),
    );
  }

  /**
   * A run's changes collapsed to CSV lines ahead of its apply, in slices while DuckDB applies
   * the batch before (in a large transaction the two took about as long each, one after the
   * other). Its apply waits for the lines if they are not done yet.
   */
  prepare(steps: Step[]): void {
    for (const step of steps) {
      if (step.kind !== 'changes') continue;
      const lines = collapsedLines(step.relation, step.changes, collapseImagesToCsvAside);
      // A failure surfaces in the apply that waits for these lines; a run never applied (its
      // plan was made again) must not leave it unhandled.
      lines.catch(() => {});
      this.rows.preparedLines.set(step.changes, lines);
    }
  }

  apply(steps: Step[], states: Map<number, TableState>): Promise<void> {
    const named = withDistinctColumnNamesIn(steps);
    this.idle.begin();
    const run = this.inTurn(() => this.applyWithinMemory(named, states).catch((error) => this.afterFailure(error)));
    run.finally(() => this.idle.end()).catch(() => {});
    return run;
  }

  /** Runs `work` on the connection after everything queued before it. */
  private inTurn<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work);
    this.queue = run.catch(() => {});
    return run;
  }

  /** Writes the WAL into the database file (see IdleCheckpoint); a failure that invalidated the database has the next apply open it again. */
  private async checkpoint(): Promise<void> {
    try {
      await this.connection.run('CHECKPOINT');
    } catch (error) {
      if (INVALIDATED.test(errorMessage(error))) this.invalidated = errorMessage(error);
      throw error;
    }
  }

  /** Applies the steps, again under a higher memory_limit each time DuckDB runs out of memory (see MemoryLimit). */
  private async applyWithinMemory(steps: Step[], states: Map<number, TableState>): Promise<void> {
    let raised = false;
    try {
      for (;;) {
        try {
          return await this.applyNow(steps, states);
        } catch (error) {
          if (!OUT_OF_MEMORY.test(errorMessage(error)) || !(await this.memory?.raise(this.connection))) throw error;
          raised = true;
          log.info({ memoryLimitMb: this.memory!.megabytes }, 'DuckDB ran out of memory for a batch: applying it again under a higher memory_limit');
        }
      }
    } finally {
      await this.memory?.settle(this.connection).catch(() => {});
      if (raised && !this.memory?.raised) log.info({ memoryLimitMb: this.memory!.baseMegabytes }, 'DuckDB memory_limit set back after the batch');
    }
  }

  private async applyNow(steps: Step[], states: Map<number, TableState>): Promise<void> {
    if (this.invalidated) {
      const invalidated = this.invalidated;
      await this.reopen().catch((error) => {
        throw new Error(`the database was invalidated by "${invalidated}", and opening it again failed: ${errorMessage(error)}`);
      });
    }
    const shapes = (this.applying = new Map<number, Shape>());
    /** Stored tables whose place a table of the same source name took (they were dropped at the source). */
    const replaced = new Set<number>();
    // Copy chunks (up to hundreds of thousands of rows) are read and compressed in parallel;
    // batches of changes are small statements, for which DuckDB's threads cost more in
    // coordination than they save (measured: large transactions stream 10–15 % faster on one).
    await this.useThreads(steps.some((step) => step.kind === 'copy') ? this.allThreads : 1);
    await this.connection.run('BEGIN TRANSACTION');
    try {
      for (let index = 0; index < steps.length; index++) {
        const step = steps[index];
        const relations = step.kind === 'truncate' ? step.relations : [step.relation];
        for (const relation of relations) await this.ensureTable(relation, shapes, replaced);
        if (step.kind === 'truncate') {
          for (const relation of step.relations) await this.connection.run(`DELETE FROM ${this.tableSql(relation)}`);
        } else if (step.kind === 'copy') {
          if (step.replace) await this.connection.run(`DELETE FROM ${this.tableSql(step.relation)}`);
          if (step.merge) {
            await this.rows.writeRows(step.relation, keyColumnsOf(step.relation), parseCopyRows(joinPieces(step.copyText).toString()));
            continue;
          }
          // The chunks that follow for the same table are read by the same statement.
          const chunks = [step];
          for (
            let next = steps[index + 1];
            next?.kind === 'copy' && next.relation.oid === step.relation.oid && !next.replace && !next.merge;
            next = steps[index + 1]
          ) {
            await this.ensureTable(next.relation, shapes, replaced);
            chunks.push(next);
            index++;
          }
          await this.rows.copyRows(step.relation, chunks);
        } else {
          await this.rows.applyChanges(step.relation, step.changes);
        }
      }
      for (const oid of replaced) await this.stateTable.delete(this.connection, oid);
      for (const [oid, state] of states) await this.stateTable.write(this.connection, oid, shapes.get(oid) ?? this.stored.get(oid)!.shape, state);
      await this.connection.run('COMMIT');
    } catch (error) {
      await this.connection.run('ROLLBACK').catch(() => {});
      throw error;
    } finally {
      this.applying = new Map();
    }
    for (const oid of replaced) this.stored.delete(oid);
    for (const [oid, state] of states) this.stored.set(oid, { state, shape: shapes.get(oid) ?? this.stored.get(oid)!.shape });
  }

  tables(): TableListing[] {
    return [...this.stored.values()].map(({ shape, state }) => ({
      source: qualifiedName(shape),
      place: `${shape.target.schema}.${shape.target.name}`,
      quarantine: state.quarantine,
    }));
  }

  /**
   * Rethrows an apply's error, once the database is usable again if the error invalidated it;
   * an error about what the batch holds (a value, a constraint) as a refusal.
   */
  private async afterFailure(error: unknown): Promise<never> {
    const message = errorMessage(error);
    if (INVALIDATED.test(message)) {
      this.invalidated = message;
      await this.reopen().catch(() => {});
    }
    if (REFUSALS.test(message)) throw new RefusedError(`DuckDB refuses the rows: ${message}`);
    throw error;
  }

  /** The table as addressed in DuckDB: database, schema and name, each quoted. */
  private qualified(target: TargetName): string {
    return `${ident(this.database)}.${ident(target.schema)}.${ident(target.name)}`;
  }

  /** Where a table the apply in progress has ensured is in DuckDB. */
  private tableSql(relation: Relation): string {
    return this.qualified((this.applying.get(relation.oid) ?? this.stored.get(relation.oid)!.shape).target);
  }

  private async useThreads(threads: number): Promise<void> {
    if (threads === this.threads) return;
    await this.connection.run(`SET threads = ${threads}`);
    this.threads = threads;
  }

  /**
   * Creates the table on first sight of its OID (replacing a table of the same name left by a
   * dropped source table) and follows the source's changes of shape in stream order: table
   * renames, column renames (same attnum, new name), drops, additions and type changes.
   */
  private async ensureTable(relation: Relation, shapes: Map<number, Shape>, replaced: Set<number>): Promise<void> {
    const known = shapes.get(relation.oid) ?? this.stored.get(relation.oid)?.shape;
    const source = { schema: relation.schema, name: relation.name, columns: relation.columns };
    if (known && sameShape(known, source)) return;
    const moved = !known || known.schema !== relation.schema || known.name !== relation.name;
    const placed = new Map([
      ...[...this.stored].map(([oid, { shape }]) => [oid, { source: shape, target: shape.target }] as const),
      ...[...shapes].map(([oid, shape]) => [oid, { source: shape, target: shape.target }] as const),
    ]);
    for (const oid of replaced) placed.delete(oid);
    const place = moved ? placeTable(relation.oid, relation, placed) : { target: known!.target };
    if (place.replaces !== undefined) replaced.add(place.replaces);
    const wanted: Shape = { ...source, target: place.target };
    const target = this.qualified(place.target);
    if (!known) {
      await this.connection.run(`CREATE SCHEMA IF NOT EXISTS ${ident(this.database)}.${ident(place.target.schema)}`);
      const columns = relation.columns.map((column) => duckDbColumnSql(column, ident(column.name))).join(', ');
      await this.connection.run(`CREATE OR REPLACE TABLE ${target} (${columns})`);
      shapes.set(relation.oid, wanted);
      return;
    }
    if (known.target.schema !== place.target.schema) {
      await this.connection.run(`CREATE SCHEMA IF NOT EXISTS ${ident(this.database)}.${ident(place.target.schema)}`);
      await this.connection.run(`CREATE TABLE ${target} AS SELECT * FROM ${this.qualified(known.target)}`);
      await this.connection.run(`DROP TABLE ${this.qualified(known.target)}`);
    } else if (known.target.name !== place.target.name) {
      await this.connection.run(`ALTER TABLE ${this.qualified(known.target)} RENAME TO ${ident(place.target.name)}`);
    }
    for (const change of columnChanges(known.columns, relation.columns, (a, b) => duckDbType(a).sql === duckDbType(b).sql)) {
      if (change.kind === 'drop') await this.connection.run(`ALTER TABLE ${target} DROP COLUMN ${ident(change.column.name)}`);
      else if (change.kind === 'rename')
        await this.connection.run(`ALTER TABLE ${target} RENAME COLUMN ${ident(change.from.name)} TO ${ident(change.to.name)}`);
      else if (change.kind === 'retype') {
        const type = duckDbType(change.to).sql;
        // TRY_CAST: DuckDB also converts deleted rows it has not vacuumed yet, whose values may
        // not fit; every live value fits, since Postgres converted it already.
        await this.connection.run(
          `ALTER TABLE ${target} ALTER COLUMN ${ident(change.to.name)} TYPE ${type} USING TRY_CAST(${ident(change.to.name)} AS ${type})`,
        );
      } else {
        const { column } = change;
        const type = duckDbType(column);
        // Rows older than a column added with a default hold that default (Postgres did not rewrite them).
        const fill = column.missingValue !== undefined ? ` DEFAULT ${type.cast(literal(column.missingValue))}` : '';
        await this.connection.run(`ALTER TABLE ${target} ADD COLUMN ${ident(column.name)} ${type.sql}${fill}`);
        if (fill) await this.connection.run(`ALTER TABLE ${target} ALTER COLUMN ${ident(column.name)} DROP DEFAULT`);
      }
    }
    shapes.set(relation.oid, wanted);
  }

  async close(): Promise<void> {
    this.idle.close();
    await this.queue;
    this.connection.closeSync();
    this.instance.closeSync();
    await rm(this.scratch, { recursive: true, force: true });
  }
}

/** DuckDB's errors after which the open database refuses every statement until opened again. */
const INVALIDATED = /FATAL Error|database has been invalidated/;

/** Room a statement reading CSV buffers needs beside them (row groups being built and compressed). */
const STATEMENT_ROOM_BYTES = 64 * 2 ** 20;

/** Per-thread allocation peak above which DuckDB returns a thread's memory as soon as it idles (see load). */
const ALLOCATOR_FLUSH_THRESHOLD = '16GB';

function sameShape(a: SourceShape, b: SourceShape): boolean {
  return (
    a.schema === b.schema &&
    a.name === b.name &&
    a.columns.length === b.columns.length &&
    a.columns.every((column, index) => column.name === b.columns[index].name && duckDbType(column).sql === duckDbType(b.columns[index]).sql)
  );
}
