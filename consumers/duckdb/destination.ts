import { type DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import { type Column, type Relation, type RowChange, UNCHANGED, type Value, qualifiedName } from '../../shared/events.js';
import { UserError, errorMessage } from '../../shared/errors.js';
import type { Destination, Step, TableState } from '../destination.js';
import { duckDbType } from './types.js';

const STATE_TABLE = '_pg_replicate.tables';
const STAGE_DELETED = '_pg_deleted';

const ident = (name: string) => `"${name.replace(/"/g, '""')}"`;
const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;
const tableSql = (relation: Pick<Relation, 'schema' | 'name'>) => `${ident(relation.schema)}.${ident(relation.name)}`;

interface StoredTable {
  state: TableState;
  columns: Column[];
}

/**
 * The DuckDB destination: each source table mirrored as "schema"."table", and its state
 * (copy progress, highest applied version, column shapes) in _pg_replicate.tables, written in
 * the same transaction as the rows. A DuckDB file has one writer process, so the state is read
 * once at start and kept in memory; apply() calls are serialised on one connection.
 */
export class DuckDbDestination implements Destination {
  private readonly tables = new Map<string, StoredTable>();
  private queue: Promise<unknown> = Promise.resolve();
  private stageCounter = 0;

  private constructor(
    private readonly instance: DuckDBInstance,
    private readonly connection: DuckDBConnection,
  ) {}

  static async open(path: string): Promise<DuckDbDestination> {
    let instance: DuckDBInstance;
    try {
      instance = await DuckDBInstance.create(path);
    } catch (error) {
      throw new UserError(`Cannot open DuckDB database ${path} (${errorMessage(error)}). Check --path: the directory must exist and no other process may have the file open for writing.`);
    }
    const connection = await instance.connect();
    const destination = new DuckDbDestination(instance, connection);
    await destination.load();
    return destination;
  }

  private async load(): Promise<void> {
    await this.connection.run('CREATE SCHEMA IF NOT EXISTS _pg_replicate');
    await this.connection.run(
      `CREATE TABLE IF NOT EXISTS ${STATE_TABLE} (
         table_name VARCHAR PRIMARY KEY, copy_lsn UBIGINT, copy_chunk INTEGER, copy_done BOOLEAN,
         applied_lsn UBIGINT, applied_ordinal INTEGER, columns JSON)`,
    );
    this.tables.clear();
    const reader = await this.connection.runAndReadAll(`SELECT table_name, copy_lsn, copy_chunk, copy_done, applied_lsn, applied_ordinal, CAST(columns AS VARCHAR) FROM ${STATE_TABLE}`);
    for (const [name, copyLsn, copyChunk, copyDone, appliedLsn, appliedOrdinal, columns] of reader.getRows()) {
      this.tables.set(String(name), {
        state: {
          copyLsn: BigInt(copyLsn as bigint),
          copyChunk: Number(copyChunk),
          copyDone: Boolean(copyDone),
          applied: { lsn: BigInt(appliedLsn as bigint), ordinal: Number(appliedOrdinal) },
        },
        columns: JSON.parse(String(columns)),
      });
    }
  }

  async tableStates(tables: string[]): Promise<Map<string, TableState>> {
    const states = new Map<string, TableState>();
    for (const name of tables) {
      const stored = this.tables.get(name);
      if (stored) states.set(name, stored.state);
    }
    return states;
  }

  apply(steps: Step[], states: Map<string, TableState>): Promise<void> {
    const run = this.queue.then(() => this.applyNow(steps, states));
    this.queue = run.catch(() => {});
    return run;
  }

  private async applyNow(steps: Step[], states: Map<string, TableState>): Promise<void> {
    const shapes = new Map<string, Column[]>();
    await this.connection.run('BEGIN TRANSACTION');
    try {
      for (const step of steps) {
        const relations = step.kind === 'truncate' ? step.relations : [step.relation];
        for (const relation of relations) await this.ensureTable(relation, shapes);
        if (step.kind === 'truncate') {
          for (const relation of step.relations) await this.connection.run(`DELETE FROM ${tableSql(relation)}`);
        } else if (step.kind === 'copy') {
          if (step.replace) await this.connection.run(`DELETE FROM ${tableSql(step.relation)}`);
          await this.writeRows(step.relation, [], step.rows as Value[][]);
        } else {
          await this.applyChanges(step.relation, step.changes);
        }
      }
      for (const [name, state] of states) {
        const columns = shapes.get(name) ?? this.tables.get(name)?.columns ?? [];
        await this.connection.run(
          `INSERT OR REPLACE INTO ${STATE_TABLE} VALUES (${literal(name)}, ${state.copyLsn}, ${state.copyChunk}, ${state.copyDone}, ${state.applied.lsn}, ${state.applied.ordinal}, ${literal(JSON.stringify(columns))})`,
        );
      }
      await this.connection.run('COMMIT');
    } catch (error) {
      await this.connection.run('ROLLBACK').catch(() => {});
      throw error;
    }
    for (const [name, state] of states) {
      this.tables.set(name, { state, columns: shapes.get(name) ?? this.tables.get(name)?.columns ?? [] });
    }
  }

  /** Creates the table on first sight and follows column additions, removals and type changes. */
  private async ensureTable(relation: Relation, shapes: Map<string, Column[]>): Promise<void> {
    const name = qualifiedName(relation);
    const known = shapes.get(name) ?? this.tables.get(name)?.columns;
    if (known && sameShape(known, relation.columns)) return;
    if (!known) {
      await this.connection.run(`CREATE SCHEMA IF NOT EXISTS ${ident(relation.schema)}`);
      const columns = relation.columns.map((column) => `${ident(column.name)} ${duckDbType(column).sql}`).join(', ');
      await this.connection.run(`CREATE TABLE IF NOT EXISTS ${tableSql(relation)} (${columns})`);
    } else {
      const wanted = new Map(relation.columns.map((column) => [column.name, column]));
      for (const column of known) {
        if (!wanted.has(column.name)) await this.connection.run(`ALTER TABLE ${tableSql(relation)} DROP COLUMN ${ident(column.name)}`);
      }
      const existing = new Map(known.map((column) => [column.name, column]));
      for (const column of relation.columns) {
        const before = existing.get(column.name);
        const type = duckDbType(column).sql;
        if (!before) await this.connection.run(`ALTER TABLE ${tableSql(relation)} ADD COLUMN ${ident(column.name)} ${type}`);
        else if (duckDbType(before).sql !== type) {
          await this.connection.run(`ALTER TABLE ${tableSql(relation)} ALTER COLUMN ${ident(column.name)} TYPE ${type}`);
        }
      }
    }
    shapes.set(name, relation.columns);
  }

  /**
   * Applies a run of row changes to one table. For tables with a key, the run collapses to the
   * final image of each key touched (or its deletion), which is then written in bulk. With
   * REPLICA IDENTITY FULL rows need not be unique, so each change is applied on its own.
   */
  private async applyChanges(relation: Relation, changes: RowChange[]): Promise<void> {
    const keyColumns = relation.columns.flatMap((column, index) => (column.isKey ? [index] : []));
    if (relation.replicaIdentity === 'full' || keyColumns.length === 0) {
      for (const change of changes) await this.applyOneByOne(relation, change);
      return;
    }
    const keyOf = (values: Value[]) => JSON.stringify(keyColumns.map((index) => values[index]));
    const finalImages = new Map<string, Value[] | null>();
    for (const change of changes) {
      if (change.op === 'delete') {
        finalImages.set(keyOf(change.old!), null);
        continue;
      }
      const row = [...change.row!];
      const key = keyOf(row);
      if (change.op === 'update' && change.old) {
        const oldKey = keyOf(change.old);
        if (oldKey !== key) finalImages.set(oldKey, null);
      }
      const previous = finalImages.get(key);
      if (previous) row.forEach((value, index) => value === UNCHANGED && (row[index] = previous[index]));
      finalImages.set(key, row);
    }
    const rows = [...finalImages.values()].filter((row): row is Value[] => row !== null);
    await this.fillUnchanged(relation, keyColumns, rows);
    const deleted = [...finalImages].filter(([, row]) => row === null).map(([key]) => JSON.parse(key) as Value[]);
    await this.writeRows(relation, keyColumns, rows, deleted);
  }

  /** An update that left a TOASTed value out: take the value the destination already holds. */
  private async fillUnchanged(relation: Relation, keyColumns: number[], rows: Value[][]): Promise<void> {
    for (const row of rows) {
      const missing = row.flatMap((value, index) => (value === UNCHANGED ? [index] : []));
      if (missing.length === 0) continue;
      const where = keyColumns.map((index) => `${ident(relation.columns[index].name)} = ${duckDbType(relation.columns[index]).cast(literal(row[index] as string))}`).join(' AND ');
      const select = missing.map((index) => `CAST(${ident(relation.columns[index].name)} AS VARCHAR)`).join(', ');
      const found = (await this.connection.runAndReadAll(`SELECT ${select} FROM ${tableSql(relation)} WHERE ${where}`)).getRows()[0];
      if (!found) throw new Error(`an update of ${qualifiedName(relation)} kept unchanged TOASTed values, but the destination has no row with that key to take them from`);
      missing.forEach((index, position) => (row[index] = found[position] === null ? null : String(found[position])));
    }
  }

  /**
   * Bulk path: rows go through the appender into a VARCHAR staging table, then one DELETE of
   * every key touched and one INSERT … SELECT with the casts to the column types.
   */
  private async writeRows(relation: Relation, keyColumns: number[], rows: Value[][], deletedKeys: Value[][] = []): Promise<void> {
    if (rows.length === 0 && deletedKeys.length === 0) return;
    const stage = `_pg_stage_${this.stageCounter++ % 4}`;
    const stageColumns = relation.columns.map((_, index) => `c${index} VARCHAR`).join(', ');
    await this.connection.run(`CREATE OR REPLACE TEMP TABLE ${stage} (${stageColumns}, ${STAGE_DELETED} BOOLEAN)`);
    const appender = await this.connection.createAppender(stage, 'main', 'temp');
    const append = (values: Value[], deleted: boolean) => {
      for (let index = 0; index < relation.columns.length; index++) {
        const value = values[index];
        if (value === null || value === undefined || value === UNCHANGED) appender.appendNull();
        else appender.appendVarchar(value);
      }
      appender.appendBoolean(deleted);
      appender.endRow();
    };
    for (const row of rows) append(row, false);
    for (const key of deletedKeys) {
      const values: Value[] = new Array(relation.columns.length).fill(null);
      keyColumns.forEach((column, position) => (values[column] = key[position]));
      append(values, true);
    }
    appender.closeSync();
    const target = tableSql(relation);
    if (keyColumns.length > 0) {
      const match = keyColumns.map((index) => `${target}.${ident(relation.columns[index].name)} = ${duckDbType(relation.columns[index]).cast(`s.c${index}`)}`).join(' AND ');
      await this.connection.run(`DELETE FROM ${target} USING ${stage} s WHERE ${match}`);
    }
    const names = relation.columns.map((column) => ident(column.name)).join(', ');
    const values = relation.columns.map((column, index) => duckDbType(column).cast(`s.c${index}`)).join(', ');
    await this.connection.run(`INSERT INTO ${target} (${names}) SELECT ${values} FROM ${stage} s WHERE NOT s.${STAGE_DELETED}`);
  }

  /** REPLICA IDENTITY FULL: rows may repeat, so a delete or update touches exactly one matching row. */
  private async applyOneByOne(relation: Relation, change: RowChange): Promise<void> {
    const target = tableSql(relation);
    if (change.op !== 'insert') {
      if (!change.old) throw new Error(`${qualifiedName(relation)} has no replica identity: its ${change.op}s cannot be applied (ALTER TABLE … REPLICA IDENTITY FULL on the source)`);
      const old = change.old;
      const match = relation.columns
        .map((column, index) => `${ident(column.name)} IS NOT DISTINCT FROM ${old[index] === null ? 'NULL' : duckDbType(column).cast(literal(old[index] as string))}`)
        .join(' AND ');
      await this.connection.run(`DELETE FROM ${target} WHERE rowid = (SELECT rowid FROM ${target} WHERE ${match} LIMIT 1)`);
    }
    if (change.op !== 'delete') {
      const row = change.row!.map((value, index) => (value === UNCHANGED ? change.old?.[index] ?? null : value));
      await this.writeRows(relation, [], [row]);
    }
  }

  async close(): Promise<void> {
    await this.queue;
    this.connection.closeSync();
    this.instance.closeSync();
  }
}

function sameShape(a: Column[], b: Column[]): boolean {
  return a.length === b.length && a.every((column, index) => column.name === b[index].name && duckDbType(column).sql === duckDbType(b[index]).sql);
}
