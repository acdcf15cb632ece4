import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import { joinPieces, piecesLength } from '../../shared/chunks.js';
import { COPY_TEXT, PLAIN_CSV, parseCopyRows } from '../../shared/csv.js';
import { errorMessage, UserError } from '../../shared/errors.js';
import { type Column, qualifiedName, type Relation, type RowChange, UNCHANGED, type Value } from '../../shared/events.js';
import { collapseByKey, netRowCounts } from '../collapse.js';
import {
  type Destination,
  RefusedError,
  type TableShape as SourceShape,
  type Step,
  type StoredTable,
  type TableListing,
  type TableState,
} from '../destination.js';
import { type CollapsedCsv, collapseImagesToCsv, collapseImagesToCsvAside, recycleCsvLines } from '../imagescsv.js';
import { withDistinctColumnNamesIn } from '../names.js';
import { placeTable, type TargetName } from './places.js';
import { csvSource, rewriteFile, unescapedCopyText } from './staging.js';
import { ident, literal, type Shape, StateTable } from './statetable.js';
import { type DuckDbType, duckDbColumnSql, duckDbType } from './types.js';

const STAGE_DELETED = '_pg_deleted';
/**
 * DuckDB's errors about the data or a table's definition, which the same batch meets again on
 * every retry (as opposed to I/O, memory or an interrupted connection, which pass).
 */
const REFUSALS = /^(Conversion|Invalid Input|Out of Range|Constraint|Mismatch Type|Binder|Catalog|Dependency|Not implemented) Error/;
/** A staged count (of a keyless row image), beside the row's values. */
const COUNT: DuckDbType = { sql: 'BIGINT', cast: (value) => `CAST(${value} AS BIGINT)` };

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
  private stageCounter = 0;
  /** Runs of changes being collapsed or collapsed by prepare(), by their changes (undefined: they need the other path). */
  private readonly preparedLines = new WeakMap<RowChange[], Promise<CollapsedCsv | undefined>>();
  /** DuckDB's own thread count (one per core), and the count set now. */
  private allThreads = 1;
  private threads = 1;
  /** Set when a fatal error invalidated the open database (see reopen): the error. */
  private invalidated: string | undefined;

  private constructor(
    private readonly path: string,
    private readonly settings: Record<string, string>,
    private instance: DuckDBInstance,
    private connection: DuckDBConnection,
    /** This process's own directory for copy chunks on their way into DuckDB. */
    private readonly scratch: string,
  ) {}

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
    const states = new Map<number, TableState>();
    for (const { oid } of relations) {
      const stored = this.stored.get(oid);
      if (stored) states.set(oid, stored.state);
    }
    return states;
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
      this.preparedLines.set(step.changes, lines);
    }
  }

  apply(steps: Step[], states: Map<number, TableState>): Promise<void> {
    const named = withDistinctColumnNamesIn(steps);
    const run = this.queue.then(() => this.applyNow(named, states).catch((error) => this.afterFailure(error)));
    this.queue = run.catch(() => {});
    return run;
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
            await this.writeRows(step.relation, keyColumnsOf(step.relation), parseCopyRows(joinPieces(step.copyText).toString()));
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
          await this.copyRows(step.relation, chunks);
        } else {
          await this.applyChanges(step.relation, step.changes);
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
    if (/FATAL Error|database has been invalidated/.test(message)) {
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
    const matched = new Set<Column>();
    const counterpart = (column: Column) =>
      relation.columns.find((candidate) =>
        column.attnum !== undefined && candidate.attnum !== undefined ? candidate.attnum === column.attnum : candidate.name === column.name,
      );
    for (const column of known.columns) {
      const now = counterpart(column);
      if (!now) {
        await this.connection.run(`ALTER TABLE ${target} DROP COLUMN ${ident(column.name)}`);
        continue;
      }
      matched.add(now);
      if (now.name !== column.name) await this.connection.run(`ALTER TABLE ${target} RENAME COLUMN ${ident(column.name)} TO ${ident(now.name)}`);
      const type = duckDbType(now);
      if (duckDbType(column).sql !== type.sql) {
        // TRY_CAST: DuckDB also converts deleted rows it has not vacuumed yet, whose values may
        // not fit; every live value fits, since Postgres converted it already.
        await this.connection.run(`ALTER TABLE ${target} ALTER COLUMN ${ident(now.name)} TYPE ${type.sql} USING TRY_CAST(${ident(now.name)} AS ${type.sql})`);
      }
    }
    for (const column of relation.columns) {
      if (matched.has(column)) continue;
      const type = duckDbType(column);
      // Rows older than a column added with a default hold that default (Postgres did not rewrite them).
      const fill = column.missingValue !== undefined ? ` DEFAULT ${type.cast(literal(column.missingValue))}` : '';
      await this.connection.run(`ALTER TABLE ${target} ADD COLUMN ${ident(column.name)} ${type.sql}${fill}`);
      if (fill) await this.connection.run(`ALTER TABLE ${target} ALTER COLUMN ${ident(column.name)} DROP DEFAULT`);
    }
    shapes.set(relation.oid, wanted);
  }

  /**
   * Copy chunks arrive in Postgres' text COPY format: DuckDB reads them itself (read_csv over
   * private temp files, one per chunk, in one statement: its threads each take their own files),
   * unescapes the values that need it and casts in one INSERT … SELECT, with no per-value work
   * in JS. Tables with array columns, whose text needs a rewrite first, take the appender path
   * instead.
   */
  private async copyRows(relation: Relation, chunks: { copyText: Buffer[]; longestRow?: number }[]): Promise<void> {
    const filled = chunks.map((chunk) => ({ ...chunk, bytes: piecesLength(chunk.copyText) })).filter((chunk) => chunk.bytes > 0);
    if (filled.length === 0) return;
    const types = relation.columns.map(duckDbType);
    if (types.some((type) => type.stage)) {
      for (const { copyText } of filled) await this.writeRows(relation, [], parseCopyRows(joinPieces(copyText).toString()));
      return;
    }
    const longestRow = Math.max(...filled.map((chunk) => chunk.longestRow ?? chunk.bytes));
    await this.withFiles(
      filled.map((chunk) => chunk.copyText),
      async (files) => {
        const names = relation.columns.map((column) => ident(column.name)).join(', ');
        const values = types.map((type, index) => type.cast(type.backslashFree ? `s.c${index}` : unescapedCopyText(`s.c${index}`))).join(', ');
        await this.connection.run(
          `INSERT INTO ${this.tableSql(relation)} (${names}) SELECT ${values} FROM ${csvSource(files, types.length, longestRow, { dialect: COPY_TEXT, wholeFilesOf: Math.max(...filled.map((chunk) => chunk.bytes)) })} s`,
        );
      },
    );
  }

  /**
   * Each of `contents` as a file of this process's scratch directory while `use` runs. The
   * files keep their names from one call to the next and are rewritten in place: the kernel
   * then reuses their page-cache pages instead of taking fresh ones for every chunk (on a VM
   * whose memory is first touched, writing fresh files took up to a tenth of the consumer's CPU
   * in a copy, by `perf`). They go with the directory on close.
   */
  private async withFiles(contents: Buffer[][], use: (files: string[]) => Promise<unknown>): Promise<void> {
    const files = contents.map((_, index) => join(this.scratch, `stage-${index}.csv`));
    await Promise.all(contents.map((bytes, index) => rewriteFile(files[index], bytes)));
    await use(files);
  }

  /**
   * Applies a run of row changes to one table. For tables with a key, the run collapses to the
   * final image of each key touched (or its deletion), which is then written in bulk. With
   * REPLICA IDENTITY FULL rows need not be unique, so each change is applied on its own.
   */
  private async applyChanges(relation: Relation, changes: RowChange[]): Promise<void> {
    const keyColumns = keyColumnsOf(relation);
    if (relation.replicaIdentity === 'full' || keyColumns.length === 0) {
      await this.applyNetCounts(relation, changes);
      return;
    }
    const types = relation.columns.map(duckDbType);
    const lines = await (this.preparedLines.get(changes) ?? collapsedLines(relation, changes, collapseImagesToCsv));
    this.preparedLines.delete(changes);
    if (lines) {
      await this.writeLines(relation, types, keyColumns, lines.csv, lines.longestLine);
      recycleCsvLines(lines.csv);
      return;
    }
    const { rows, deletedKeys, lookups } = collapseByKey(keyColumns, changes);
    await this.writeRows(relation, keyColumns, rows, deletedKeys, lookups);
  }

  /**
   * The bulk path for a run collapsed straight from its images (consumers/imagescsv): DuckDB
   * reads the CSV lines into a staging table, then one DELETE of every key touched and one
   * INSERT … SELECT of the rows left present, with the casts. No value passes through JS.
   */
  private async writeLines(relation: Relation, types: DuckDbType[], keyColumns: number[], lines: Buffer, longestLine: number): Promise<void> {
    const stage = `_pg_stage_l${this.stageCounter++ % 4}`;
    await this.withFiles([[lines]], (files) =>
      this.connection.run(
        `CREATE OR REPLACE TEMP TABLE ${stage} AS SELECT * FROM ${csvSource(files, types.length, longestLine, { dialect: PLAIN_CSV, flag: STAGE_DELETED })}`,
      ),
    );
    const target = this.tableSql(relation);
    const match = keyColumns.map((column) => `${target}.${ident(relation.columns[column].name)} = ${types[column].cast(`s.c${column}`)}`).join(' AND ');
    await this.connection.run(`DELETE FROM ${target} USING ${stage} s WHERE ${match}`);
    const names = relation.columns.map((column) => ident(column.name)).join(', ');
    await this.connection.run(
      `INSERT INTO ${target} (${names}) SELECT ${types.map((type, index) => type.cast(`s.c${index}`)).join(', ')} FROM ${stage} s WHERE NOT s.${STAGE_DELETED}`,
    );
  }

  /**
   * Bulk path: rows go through the appender into a VARCHAR staging table (after the JS rewrite
   * some types need), then one DELETE of every key touched and one INSERT … SELECT with the
   * casts. Values an update left unchanged (TOAST) are first copied, typed, from the stored row
   * under the row's old key, and put back in the INSERT: they never go through text again.
   */
  private async writeRows(
    relation: Relation,
    keyColumns: number[],
    rows: Value[][],
    deletedKeys: Value[][] = [],
    lookups = new Map<Value[], Value[]>(),
  ): Promise<void> {
    if (rows.length === 0 && deletedKeys.length === 0) return;
    const types = relation.columns.map(duckDbType);
    if (rows.some((row) => lookups.has(row) && row.includes(UNCHANGED))) {
      await this.writeRowsKeepingUnchanged(relation, types, keyColumns, rows, deletedKeys, lookups);
      return;
    }
    // The common case: the rows' values, and the keys deleted, each staged as nothing but text.
    const target = this.tableSql(relation);
    const rowStage = rows.length > 0 ? await this.stageText('c', rows, types) : undefined;
    const keyTypes = keyColumns.map((column) => types[column]);
    const keyStage = deletedKeys.length > 0 ? await this.stageText('k', deletedKeys, keyTypes) : undefined;
    if (keyColumns.length > 0) {
      // One DELETE of every key touched (one scan of the table): rows rewritten and rows deleted.
      const touched = [
        ...(rowStage ? [`SELECT ${keyColumns.map((column, position) => `c${column} AS k${position}`).join(', ')} FROM ${rowStage}`] : []),
        ...(keyStage ? [`SELECT * FROM ${keyStage}`] : []),
      ].join(' UNION ALL ');
      const match = keyColumns
        .map((column, position) => `${target}.${ident(relation.columns[column].name)} = ${keyTypes[position].cast(`s.k${position}`)}`)
        .join(' AND ');
      await this.connection.run(`DELETE FROM ${target} USING (${touched}) s WHERE ${match}`);
    }
    if (!rowStage) return;
    const names = relation.columns.map((column) => ident(column.name)).join(', ');
    await this.connection.run(`INSERT INTO ${target} (${names}) SELECT ${types.map((type, index) => type.cast(`s.c${index}`)).join(', ')} FROM ${rowStage} s`);
  }

  /** A fresh temporary table of text columns prefix0, prefix1, … holding the rows (after the rewrite some types need). */
  private async stageText(prefix: 'c' | 'k', rows: Value[][], types: DuckDbType[]): Promise<string> {
    const stage = `_pg_stage_${prefix}${this.stageCounter++ % 4}`;
    await this.connection.run(`CREATE OR REPLACE TEMP TABLE ${stage} (${types.map((_, index) => `${prefix}${index} VARCHAR`).join(', ')})`);
    const appender = await this.connection.createAppender(stage, 'main', 'temp');
    const width = types.length;
    for (const row of rows) {
      for (let index = 0; index < width; index++) {
        const value = row[index];
        const rewrite = types[index].stage;
        const text = typeof value === 'string' && rewrite ? rewrite(value) : value;
        if (typeof text === 'string') appender.appendVarchar(text);
        else appender.appendNull();
      }
      appender.endRow();
    }
    appender.closeSync();
    return stage;
  }

  /**
   * Rows that keep unchanged TOASTed values from the stored row under their old key: staged
   * with that key, a row number and which values to keep.
   */
  private async writeRowsKeepingUnchanged(
    relation: Relation,
    types: DuckDbType[],
    keyColumns: number[],
    rows: Value[][],
    deletedKeys: Value[][],
    lookups: Map<Value[], Value[]>,
  ): Promise<void> {
    const stage = `_pg_stage_${this.stageCounter++ % 4}`;
    const stageColumns = [
      ...relation.columns.map((_, index) => `c${index} VARCHAR`),
      ...keyColumns.map((_, position) => `k${position} VARCHAR`),
      `${STAGE_DELETED} BOOLEAN, _pg_row INTEGER, _pg_unchanged VARCHAR`,
    ].join(', ');
    await this.connection.run(`CREATE OR REPLACE TEMP TABLE ${stage} (${stageColumns})`);
    const appender = await this.connection.createAppender(stage, 'main', 'temp');
    const appendText = (value: Value | undefined, type: DuckDbType | undefined) => {
      const staged = typeof value === 'string' && type?.stage ? type.stage(value) : value;
      if (typeof staged === 'string') appender.appendVarchar(staged);
      else appender.appendNull();
    };
    let rowNumber = 0;
    const append = (values: Value[], deleted: boolean, lookup?: Value[]) => {
      for (let index = 0; index < types.length; index++) appendText(values[index], types[index]);
      for (const [position, column] of keyColumns.entries()) appendText(lookup?.[position], types[column]);
      appender.appendBoolean(deleted);
      appender.appendInteger(rowNumber++);
      const unchanged = lookup ? values.flatMap((value, index) => (value === UNCHANGED ? [index] : [])) : [];
      if (unchanged.length > 0) appender.appendVarchar(`,${unchanged.join(',')},`);
      else appender.appendNull();
      appender.endRow();
    };
    for (const row of rows) append(row, false, lookups.get(row));
    for (const key of deletedKeys) {
      const values: Value[] = new Array(relation.columns.length).fill(null);
      for (const [position, column] of keyColumns.entries()) values[column] = key[position];
      append(values, true);
    }
    appender.closeSync();
    const target = this.tableSql(relation);
    const keyMatch = (table: string, prefix: 'c' | 'k') =>
      keyColumns
        .map(
          (column, position) => `${table}.${ident(relation.columns[column].name)} = ${types[column].cast(`s.${prefix}${prefix === 'c' ? column : position}`)}`,
        )
        .join(' AND ');
    const keep = `${stage}_keep`;
    await this.connection.run(
      `CREATE OR REPLACE TEMP TABLE ${keep} AS SELECT s._pg_row, t.* FROM ${stage} s JOIN ${target} t ON ${keyMatch('t', 'k')} WHERE s._pg_unchanged IS NOT NULL`,
    );
    const missing = (
      await this.connection.runAndReadAll(
        `SELECT count(*) FROM ${stage} s WHERE s._pg_unchanged IS NOT NULL AND s._pg_row NOT IN (SELECT _pg_row FROM ${keep})`,
      )
    ).getRows()[0][0];
    if (Number(missing) > 0)
      throw new RefusedError(
        `an update of ${qualifiedName(relation)} kept unchanged TOASTed values, but the destination has no row with that key to take them from`,
      );
    if (keyColumns.length > 0) await this.connection.run(`DELETE FROM ${target} USING ${stage} s WHERE ${keyMatch(target, 'c')}`);
    const names = relation.columns.map((column) => ident(column.name)).join(', ');
    const values = relation.columns
      .map((column, index) => `CASE WHEN contains(s._pg_unchanged, ',${index},') THEN k.${ident(column.name)} ELSE ${types[index].cast(`s.c${index}`)} END`)
      .join(', ');
    await this.connection.run(
      `INSERT INTO ${target} (${names}) SELECT ${values} FROM ${stage} s LEFT JOIN ${keep} k ON k._pg_row = s._pg_row WHERE NOT s.${STAGE_DELETED}`,
    );
  }

  /**
   * REPLICA IDENTITY FULL (or no key): rows may repeat, so the run is netted to a count per row
   * image (consumers/collapse) and applied in bulk: for an image removed n times, n of its
   * matching rows are deleted (by rowid); an image added n times is inserted n times. Applied
   * change by change, a keyless table took a statement or two per row (about 100 rows/s), and a
   * partition behind it fell behind any steady write load.
   */
  private async applyNetCounts(relation: Relation, changes: RowChange[]): Promise<void> {
    let counts: ReturnType<typeof netRowCounts>;
    try {
      counts = netRowCounts(changes);
    } catch (error) {
      throw new RefusedError(`${qualifiedName(relation)}: ${errorMessage(error)}`);
    }
    const types = relation.columns.map(duckDbType);
    const target = this.tableSql(relation);
    const removed = counts.filter(({ count }) => count < 0);
    if (removed.length > 0) {
      const stage = await this.stageText(
        'c',
        removed.map(({ image, count }) => [...image, String(-count)]),
        [...types, COUNT],
      );
      const count = COUNT.cast(`s.c${types.length}`);
      const match = relation.columns.map((column, index) => `t.${ident(column.name)} IS NOT DISTINCT FROM ${types[index].cast(`s.c${index}`)}`).join(' AND ');
      // Each image's first n matches (by rowid) go: a row matches one image only, as images differ.
      await this.connection.run(
        `DELETE FROM ${target} WHERE rowid IN (SELECT id FROM (SELECT t.rowid AS id, ${count} AS wanted, row_number() OVER (PARTITION BY s.rowid ORDER BY t.rowid) AS n FROM ${target} t JOIN ${stage} s ON ${match}) WHERE n <= wanted)`,
      );
    }
    const added = counts.flatMap(({ image, count }) => (count > 0 ? Array.from({ length: count }, () => image) : []));
    if (added.length > 0) await this.writeRows(relation, [], added);
  }

  async close(): Promise<void> {
    await this.queue;
    this.connection.closeSync();
    this.instance.closeSync();
    await rm(this.scratch, { recursive: true, force: true });
  }
}

/** A keyed run's changes as CSV lines of final images by `collapse` (undefined: the run needs decoded values, or has no key). */
async function collapsedLines(
  relation: Relation,
  changes: RowChange[],
  collapse: typeof collapseImagesToCsvAside | typeof collapseImagesToCsv,
): Promise<CollapsedCsv | undefined> {
  const keyColumns = keyColumnsOf(relation);
  const types = relation.columns.map(duckDbType);
  if (relation.replicaIdentity === 'full' || keyColumns.length === 0 || types.some((type) => type.stage)) return undefined;
  return collapse(keyColumns, types.length, changes);
}

/** Per-thread allocation peak above which DuckDB returns a thread's memory as soon as it idles (see load). */
const ALLOCATOR_FLUSH_THRESHOLD = '16GB';

function keyColumnsOf(relation: Relation): number[] {
  return relation.columns.flatMap((column, index) => (column.isKey ? [index] : []));
}

function sameShape(a: SourceShape, b: SourceShape): boolean {
  return (
    a.schema === b.schema &&
    a.name === b.name &&
    a.columns.length === b.columns.length &&
    a.columns.every((column, index) => column.name === b.columns[index].name && duckDbType(column).sql === duckDbType(b.columns[index]).sql)
  );
}
