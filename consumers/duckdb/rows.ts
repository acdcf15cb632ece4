import { join } from 'node:path';
import type { DuckDBConnection } from '@duckdb/node-api';
import { piecesLength } from '../../shared/chunks.js';
import { COPY_TEXT, PLAIN_CSV } from '../../shared/csv.js';
import { errorMessage } from '../../shared/errors.js';
import { qualifiedName, type Relation, type RowChange, UNCHANGED, type Value } from '../../shared/events.js';
import { collapseByKey, netRowCounts } from '../collapse.js';
import { RefusedError } from '../destination.js';
import { type CollapsedCsv, collapseImagesToCsv, type collapseImagesToCsvAside, recycleCsvLines } from '../imagescsv.js';
import { keyColumnsOf } from '../schema.js';
import { csvBufferBytes, csvSource, rewriteFile, unescapedCopyText } from './staging.js';
import { ident } from './statetable.js';
import { type DuckDbType, duckDbType } from './types.js';

const STAGE_DELETED = '_pg_deleted';
/** A staged count (of a keyless row image), beside the row's values. */
const COUNT: DuckDbType = { sql: 'BIGINT', cast: (value) => `CAST(${value} AS BIGINT)` };

/**
 * Writes rows into the DuckDB tables, set-wise, inside the destination's open transaction: copy
 * chunks through read_csv over staging files, runs of changes as staged final images (keyed
 * tables: delete every key touched, insert the images) or net counts per image (keyless ones).
 */
export class RowWriter {
  private stageCounter = 0;
  /** Runs of changes being collapsed or collapsed by prepare(), by their changes (undefined: they need the other path). */
  readonly preparedLines = new WeakMap<RowChange[], Promise<CollapsedCsv | undefined>>();

  constructor(
    /** The connection now (a database invalidated by a fatal error is opened again). */
    private readonly connectionNow: () => DuckDBConnection,
    /** Where a table is, in the apply in progress. */
    private readonly place: (relation: Relation) => string,
    /** This process's own directory for staging files. */
    private readonly scratch: string,
    /** Called before DuckDB reads CSV buffers of `bufferBytes` each: for a copy's rows, or for changes. */
    private readonly makeRoom: (bufferBytes: number, copy: boolean) => Promise<void>,
  ) {}

  private get connection(): DuckDBConnection {
    return this.connectionNow();
  }

  /**
   * Copy chunks arrive in Postgres' text COPY format: DuckDB reads them itself (read_csv over
   * private temp files, one per chunk, in one statement: its threads each take their own files),
   * unescapes the values that need it and casts in one INSERT … SELECT, with no per-value work
   * in JS, arrays included.
   */
  async copyRows(relation: Relation, chunks: { copyText: Buffer[]; longestRow?: number }[]): Promise<void> {
    const filled = chunks.map((chunk) => ({ ...chunk, bytes: piecesLength(chunk.copyText) })).filter((chunk) => chunk.bytes > 0);
    if (filled.length === 0) return;
    const types = relation.columns.map(duckDbType);
    const longestRow = Math.max(...filled.map((chunk) => chunk.longestRow ?? chunk.bytes));
    const largest = Math.max(...filled.map((chunk) => chunk.bytes));
    await this.makeRoom(csvBufferBytes(filled.length, longestRow, largest), true);
    await this.withFiles(
      filled.map((chunk) => chunk.copyText),
      async (files) => {
        const names = relation.columns.map((column) => ident(column.name)).join(', ');
        const values = types.map((type, index) => type.cast(type.backslashFree ? `s.c${index}` : unescapedCopyText(`s.c${index}`))).join(', ');
        await this.connection.run(
          `INSERT INTO ${this.place(relation)} (${names}) SELECT ${values} FROM ${csvSource(files, types.length, longestRow, { dialect: COPY_TEXT, wholeFilesOf: largest })} s`,
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
  async applyChanges(relation: Relation, changes: RowChange[]): Promise<void> {
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
    await this.makeRoom(csvBufferBytes(1, longestLine), false);
    await this.withFiles([[lines]], (files) =>
      this.connection.run(
        `CREATE OR REPLACE TEMP TABLE ${stage} AS SELECT * FROM ${csvSource(files, types.length, longestLine, { dialect: PLAIN_CSV, flag: STAGE_DELETED })}`,
      ),
    );
    const target = this.place(relation);
    const match = keyColumns.map((column) => `${target}.${ident(relation.columns[column].name)} = ${types[column].cast(`s.c${column}`)}`).join(' AND ');
    await this.connection.run(`DELETE FROM ${target} USING ${stage} s WHERE ${match}`);
    const names = relation.columns.map((column) => ident(column.name)).join(', ');
    await this.connection.run(
      `INSERT INTO ${target} (${names}) SELECT ${types.map((type, index) => type.cast(`s.c${index}`)).join(', ')} FROM ${stage} s WHERE NOT s.${STAGE_DELETED}`,
    );
  }

  /**
   * Bulk path: rows go through the appender into a VARCHAR staging table, then one DELETE of
   * every key touched and one INSERT … SELECT with the casts. Values an update left unchanged (TOAST) are first copied, typed, from the stored row
   * under the row's old key, and put back in the INSERT: they never go through text again.
   */
  async writeRows(
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
    const target = this.place(relation);
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

  /** A fresh temporary table of text columns prefix0, prefix1, … holding the rows. */
  private async stageText(prefix: 'c' | 'k', rows: Value[][], types: DuckDbType[]): Promise<string> {
    const stage = `_pg_stage_${prefix}${this.stageCounter++ % 4}`;
    await this.connection.run(`CREATE OR REPLACE TEMP TABLE ${stage} (${types.map((_, index) => `${prefix}${index} VARCHAR`).join(', ')})`);
    const appender = await this.connection.createAppender(stage, 'main', 'temp');
    const width = types.length;
    for (const row of rows) {
      for (let index = 0; index < width; index++) {
        const text = row[index];
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
    const appendText = (value: Value | undefined) => {
      if (typeof value === 'string') appender.appendVarchar(value);
      else appender.appendNull();
    };
    let rowNumber = 0;
    const append = (values: Value[], deleted: boolean, lookup?: Value[]) => {
      for (let index = 0; index < types.length; index++) appendText(values[index]);
      for (let position = 0; position < keyColumns.length; position++) appendText(lookup?.[position]);
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
    const target = this.place(relation);
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
    const target = this.place(relation);
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
}

/** A keyed run's changes as CSV lines of final images by `collapse` (undefined: the run needs decoded values, or has no key). */
export async function collapsedLines(
  relation: Relation,
  changes: RowChange[],
  collapse: typeof collapseImagesToCsvAside | typeof collapseImagesToCsv,
): Promise<CollapsedCsv | undefined> {
  const keyColumns = keyColumnsOf(relation);
  const types = relation.columns.map(duckDbType);
  if (relation.replicaIdentity === 'full' || keyColumns.length === 0) return undefined;
  return collapse(keyColumns, types.length, changes);
}
