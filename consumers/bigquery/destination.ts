import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TableField } from '@google-cloud/bigquery';
import { joinPieces } from '../../shared/chunks.js';
import { parseCopyRows } from '../../shared/csv.js';
import { errorMessage, UserError } from '../../shared/errors.js';
import { type Column, qualifiedName, type Relation, type RowChange, UNCHANGED, type Value } from '../../shared/events.js';
import { log } from '../../shared/log.js';
import { collapseByKey, netRowCounts } from '../collapse.js';
import {
  type Destination,
  PermanentError,
  RefusedError,
  type Step,
  type StoredTable,
  type TableListing,
  type TableShape,
  type TableState,
} from '../destination.js';
import { withDistinctColumnNamesIn } from '../names.js';
import { type BigQueryType, bigQueryName, bigQueryTableName, bigQueryType } from './types.js';
import { type BigQueryOptions, Warehouse } from './warehouse.js';

const STATE_TABLE = '_pg_replicate_tables';
const STAGE_PREFIX = '_pg_replicate_stage_';
/** BigQuery loads JSON rows of at most 100 MB. */
const MAX_ROW_BYTES = 100 * 1024 * 1024;
const STATE_COLUMNS =
  'table_oid, source_schema, source_table, table_name, columns, CAST(copy_lsn AS STRING) AS copy_lsn, copy_chunk, copy_done, CAST(applied_lsn AS STRING) AS applied_lsn, applied_ordinal, quarantine';
/** The marker of the stale-state check, which the warehouse turns into a plain retry. */
const STALE = 'pg-replicate: stale table state (another consumer process applied this batch meanwhile)';

/** A BigQuery string literal. */
export const literal = (text: string) => `'${text.replace(/\\/g, '\\\\').replace(/'/g, "\\'").replace(/\n/g, '\\n').replace(/\r/g, '\\r')}'`;
const ident = (name: string) => `\`${name}\``;

/** A table as BigQuery holds it: the source table's shape, and the table's name in BigQuery. */
interface Shape extends TableShape {
  table: string;
  replicaIdentity?: Relation['replicaIdentity'];
}

/** A run of one table's work within a batch: the batch's steps regrouped per table. */
type Segment =
  | { kind: 'truncate'; oid: number }
  | { kind: 'copy'; oid: number; relation: Relation; replace: boolean; merge: boolean; copyText: Buffer[] }
  | { kind: 'changes'; oid: number; relation: Relation; changes: RowChange[] };

/** One staged row: which segment it belongs to, its values, and how to apply it. */
interface StageRow {
  values: Value[];
  deleted?: boolean;
  /** The key the stored row with this row's unchanged TOASTed values is found under. */
  lookup?: Value[];
  /** For keyless tables: how many copies of this image to remove. */
  count?: number;
}

/**
 * The BigQuery destination. Each batch is applied with one load job and one script: the rows go
 * as JSON lines into a staging table of STRING columns; the script then makes the schema
 * changes (idempotent DDL), and in one multi-statement transaction checks that the table states
 * are still those the batch was planned against, applies every table's changes set-wise
 * (delete every key touched, insert the final images, typed by CAST), and writes the new table
 * states. The states live in the dataset beside the tables, so any consumer process with this
 * destination's name can take over a partition, and a re-delivered batch is skipped.
 */
export class BigQueryDestination implements Destination {
  /** The states as last read, by table OID: the basis the runner planned the batch against. */
  private readonly stored = new Map<number, StoredTable<Shape>>();

  private constructor(private readonly warehouse: Warehouse) {}

  /**
   * Opens the dataset and the state table. A refusal a human must fix (credentials, access)
   * ends the consumer (exit 2); a BigQuery that is unavailable or rate-limits is waited for,
   * with backoff, as during a run.
   */
  static async open(options: BigQueryOptions): Promise<BigQueryDestination> {
    const warehouse = new Warehouse(options);
    for (let attempt = 1; ; attempt++) {
      try {
        await warehouse.ensureDataset();
        await warehouse.query(
          `CREATE TABLE IF NOT EXISTS ${ident(`${options.dataset}.${STATE_TABLE}`)} (
             table_oid INT64 NOT NULL, source_schema STRING, source_table STRING, table_name STRING, columns STRING,
             copy_lsn INT64, copy_chunk INT64, copy_done BOOL, applied_lsn INT64, applied_ordinal INT64, updated_at TIMESTAMP,
             PRIMARY KEY (table_oid) NOT ENFORCED)`,
        );
        await warehouse.query(`ALTER TABLE ${ident(`${options.dataset}.${STATE_TABLE}`)} ADD COLUMN IF NOT EXISTS quarantine STRING`);
        const destination = new BigQueryDestination(warehouse);
        // Every table's state, for status (each batch reads its own tables' states afresh).
        destination.remember(await warehouse.query(`SELECT ${STATE_COLUMNS} FROM ${destination.table(STATE_TABLE)}`));
        if (attempt > 1) log.info({ attempts: attempt }, 'BigQuery answers again');
        return destination;
      } catch (error) {
        if (error instanceof PermanentError) throw new UserError(error.message);
        const delay = Math.min(30_000, 500 * 2 ** Math.min(attempt, 6));
        (attempt === 1 ? log.warn : log.debug).call(
          log,
          { err: errorMessage(error), retryInMs: delay },
          'BigQuery is not available yet: retrying with backoff',
        );
        await sleep(delay);
      }
    }
  }

  tables(): TableListing[] {
    return [...this.stored.values()].map(({ shape, state }) => ({ source: qualifiedName(shape), place: shape.table, quarantine: state.quarantine }));
  }

  private get dataset(): string {
    return this.warehouse.options.dataset;
  }

  private table(name: string): string {
    return ident(`${this.dataset}.${name}`);
  }

  async tableStates(relations: Relation[]): Promise<Map<number, TableState>> {
    const oids = [...new Set(relations.map((relation) => relation.oid))];
    const states = new Map<number, TableState>();
    if (oids.length === 0) return states;
    const rows = await this.warehouse.query(`SELECT ${STATE_COLUMNS} FROM ${this.table(STATE_TABLE)} WHERE table_oid IN (${oids.join(', ')})`);
    for (const oid of oids) this.stored.delete(oid);
    this.remember(rows);
    for (const oid of oids) {
      const stored = this.stored.get(oid);
      if (stored) states.set(oid, stored.state);
    }
    return states;
  }

  /** Keeps state rows as read: the basis the next batch of their tables is planned on. */
  private remember(rows: Record<string, unknown>[]): void {
    for (const row of rows) {
      const state: TableState = {
        copyLsn: BigInt(row.copy_lsn as string),
        copyChunk: Number(row.copy_chunk),
        copyDone: Boolean(row.copy_done),
        applied: { lsn: BigInt(row.applied_lsn as string), ordinal: Number(row.applied_ordinal) },
      };
      if (row.quarantine) state.quarantine = JSON.parse(String(row.quarantine));
      this.stored.set(Number(row.table_oid), {
        state,
        shape: { table: String(row.table_name), schema: String(row.source_schema), name: String(row.source_table), columns: JSON.parse(String(row.columns)) },
      });
    }
  }

  async apply(given: Step[], states: Map<number, TableState>): Promise<void> {
    // BigQuery's column names ignore case: "ID" beside "id" are named apart first.
    const steps = withDistinctColumnNamesIn(given);
    const shapes = finalShapes(steps);
    for (const oid of states.keys()) {
      const stored = this.stored.get(oid)?.shape;
      if (!shapes.has(oid) && stored) shapes.set(oid, stored);
    }
    const stage = `${STAGE_PREFIX}${randomUUID().replace(/-/g, '')}`;
    const script = new Script(this.dataset, stage, shapes);
    // A table a fresh copy replaces is created again in its new shape: no type change to make in place.
    const recreated = new Set(steps.flatMap((step) => (step.kind === 'copy' && step.replace && !step.merge ? [step.relation.oid] : [])));
    for (const [oid, shape] of shapes)
      script.schemaChanges(recreated.has(oid) ? undefined : this.stored.get(oid)?.shape, shape, this.stored.get(oid)?.shape.table);
    script.begin(this.staleCheck(states));
    for (const segment of segmentsOf(steps)) script.segment(segment);
    script.writeStates(states, this.table(STATE_TABLE), shapes);
    try {
      if (script.stageRows.length > 0) await this.warehouse.loadStaging(stage, script.stageFields(), script.stageRows);
      await this.warehouse.query(script.text());
    } catch (error) {
      if (script.stageRows.length > 0) await this.warehouse.dropTable(stage);
      for (const oid of states.keys()) this.stored.delete(oid);
      throw error;
    }
    for (const [oid, state] of states) this.stored.set(oid, { state, shape: shapes.get(oid)! });
  }

  /**
   * The states this batch was planned against must still be the stored ones: otherwise another
   * process (one thought dead, whose job BigQuery still ran) applied it meanwhile.
   */
  private staleCheck(states: Map<number, TableState>): string {
    const known: string[] = [];
    const unknown: number[] = [];
    for (const oid of states.keys()) {
      const basis = this.stored.get(oid)?.state;
      if (!basis) unknown.push(oid);
      else {
        known.push(
          `(table_oid = ${oid} AND copy_lsn = ${basis.copyLsn} AND copy_chunk = ${basis.copyChunk} AND copy_done = ${basis.copyDone} AND applied_lsn = ${basis.applied.lsn} AND applied_ordinal = ${basis.applied.ordinal})`,
        );
      }
    }
    const conditions = [
      ...(known.length > 0 ? [`(SELECT COUNT(*) FROM ${this.table(STATE_TABLE)} WHERE ${known.join(' OR ')}) = ${known.length}`] : []),
      ...(unknown.length > 0 ? [`(SELECT COUNT(*) FROM ${this.table(STATE_TABLE)} WHERE table_oid IN (${unknown.join(', ')})) = 0`] : []),
    ];
    return conditions.length > 0 ? `ASSERT ${conditions.join(' AND ')} AS ${literal(STALE)}` : '';
  }

  async close(): Promise<void> {}
}

/** Each table's shape after the batch: the last relation the batch carries for it. */
function finalShapes(steps: Step[]): Map<number, Shape> {
  const shapes = new Map<number, Shape>();
  for (const step of steps) {
    for (const relation of step.kind === 'truncate' ? step.relations : [step.relation]) {
      shapes.set(relation.oid, {
        table: bigQueryTableName(relation),
        schema: relation.schema,
        name: relation.name,
        columns: relation.columns,
        replicaIdentity: relation.replicaIdentity,
      });
    }
  }
  return shapes;
}

/**
 * The batch's steps regrouped per table, in order within each table. Tables are independent,
 * so one table's changes need not wait behind another's: a batch becomes a few statements per
 * table touched, however its changes interleave.
 */
function segmentsOf(steps: Step[]): Segment[] {
  const byTable = new Map<number, Segment[]>();
  const push = (segment: Segment) => {
    const list = byTable.get(segment.oid) ?? [];
    const last = list[list.length - 1];
    if (segment.kind === 'changes' && last?.kind === 'changes' && last.relation === segment.relation) last.changes.push(...segment.changes);
    else list.push(segment);
    byTable.set(segment.oid, list);
  };
  for (const step of steps) {
    if (step.kind === 'truncate') for (const relation of step.relations) push({ kind: 'truncate', oid: relation.oid });
    else if (step.kind === 'copy')
      push({ kind: 'copy', oid: step.relation.oid, relation: step.relation, replace: step.replace, merge: step.merge, copyText: step.copyText });
    else push({ kind: 'changes', oid: step.relation.oid, relation: step.relation, changes: [...step.changes] });
  }
  return [...byTable.values()].flat();
}

/** The one column of the final table a column of an earlier shape feeds (same attnum, else same name). */
function counterpart(column: Column, columns: Column[]): Column | undefined {
  return columns.find((candidate) =>
    column.attnum !== undefined && candidate.attnum !== undefined ? candidate.attnum === column.attnum : candidate.name === column.name,
  );
}

/** BigQuery changes a column's type in place only to a wider numeric type. */
function widens(from: string, to: string): boolean {
  const base = (sql: string) => sql.replace(/\(.*$/, '');
  const order = ['INT64', 'NUMERIC', 'BIGNUMERIC', 'FLOAT64'];
  const [a, b] = [order.indexOf(base(from)), order.indexOf(base(to))];
  return a >= 0 && b >= 0 && (a < b || (a === b && a > 0 && a < 3));
}

/** Builds one batch's staging rows and SQL script. */
class Script {
  readonly stageRows: string[] = [];
  private readonly ddl: string[] = [];
  private readonly body: string[] = [];
  private stageWidth = 0;
  private stageKeys = 0;
  private segments = 0;

  constructor(
    private readonly dataset: string,
    private readonly stage: string,
    private readonly shapes: Map<number, Shape>,
  ) {}

  private table(name: string): string {
    return ident(`${this.dataset}.${name}`);
  }

  /** Idempotent DDL taking the table from its stored shape to its final one (re-run safely after a crash). */
  schemaChanges(known: Shape | undefined, wanted: Shape, storedAs?: string): void {
    const target = this.table(wanted.table);
    const definition = (column: Column) => `${ident(bigQueryName(column.name))} ${bigQueryType(column).sql}`;
    if (!known) {
      if (storedAs && storedAs !== wanted.table) this.ddl.push(`DROP TABLE IF EXISTS ${this.table(storedAs)}`);
      // With REPLICA IDENTITY DEFAULT the key columns are the primary key (FULL marks every column, USING INDEX a unique index).
      const keys =
        wanted.replicaIdentity === 'default' ? wanted.columns.filter((column) => column.isKey).map((column) => ident(bigQueryName(column.name))) : [];
      const primaryKey = keys.length > 0 ? `, PRIMARY KEY (${keys.join(', ')}) NOT ENFORCED` : '';
      this.ddl.push(`CREATE OR REPLACE TABLE ${target} (${wanted.columns.map(definition).join(', ')}${primaryKey})`);
      return;
    }
    if (known.table !== wanted.table) this.ddl.push(`ALTER TABLE IF EXISTS ${this.table(known.table)} RENAME TO ${ident(wanted.table)}`);
    const matched = new Set<Column>();
    for (const column of known.columns) {
      const now = counterpart(column, wanted.columns);
      const name = bigQueryName(column.name);
      if (!now) {
        this.ddl.push(`ALTER TABLE ${target} DROP COLUMN IF EXISTS ${ident(name)}`);
        continue;
      }
      matched.add(now);
      if (bigQueryName(now.name) !== name) this.ddl.push(`ALTER TABLE ${target} RENAME COLUMN IF EXISTS ${ident(name)} TO ${ident(bigQueryName(now.name))}`);
      const [from, to] = [bigQueryType(column).sql, bigQueryType(now).sql];
      if (from === to) continue;
      if (!widens(from, to)) {
        throw new RefusedError(
          `column ${now.name} of ${wanted.table} changed type from ${from} to ${to}, which BigQuery cannot convert in place (a fresh copy creates the table again with the new type)`,
        );
      }
      this.ddl.push(`ALTER TABLE ${target} ALTER COLUMN ${ident(bigQueryName(now.name))} SET DATA TYPE ${to}`);
    }
    for (const column of wanted.columns) {
      if (matched.has(column)) continue;
      this.ddl.push(`ALTER TABLE ${target} ADD COLUMN IF NOT EXISTS ${definition(column)}`);
      // Rows older than a column added with a default hold that default (Postgres did not rewrite them).
      if (column.missingValue !== undefined)
        this.body.push(`UPDATE ${target} SET ${ident(bigQueryName(column.name))} = ${constant(column, column.missingValue)} WHERE TRUE`);
    }
  }

  begin(staleCheck: string): void {
    this.body.unshift('BEGIN TRANSACTION', ...(staleCheck ? [staleCheck] : []));
  }

  segment(segment: Segment): void {
    const shape = this.shapes.get(segment.oid)!;
    const target = this.table(shape.table);
    if (segment.kind === 'truncate') {
      this.body.push(`DELETE FROM ${target} WHERE TRUE`);
      return;
    }
    const step = this.segments++;
    const columns = new Columns(segment.relation, shape);
    const keyColumns = segment.relation.columns.flatMap((column, index) => (column.isKey ? [index] : []));
    if (segment.kind === 'copy') {
      if (segment.replace) this.body.push(`DELETE FROM ${target} WHERE TRUE`);
      const rows = parseCopyRows(joinPieces(segment.copyText).toString());
      if (rows.length === 0) return;
      if (segment.merge) {
        // A resumed copy's rows may be stored already: they replace rows with their key.
        const inserts = rows.map((row): RowChange => ({ op: 'insert', relation: 0, version: { lsn: 0n, ordinal: 0 }, row }));
        this.keyedChanges(step, target, columns, keyColumns, inserts);
        return;
      }
      for (const values of rows) this.addRow(step, columns, { values });
      this.body.push(`INSERT INTO ${target} (${columns.names()}) SELECT ${columns.values()} FROM ${this.table(this.stage)} s WHERE s._step = ${step}`);
      return;
    }
    if (segment.relation.replicaIdentity === 'full' || keyColumns.length === 0) this.keylessChanges(step, target, columns, segment);
    else this.keyedChanges(step, target, columns, keyColumns, segment.changes);
  }

  /** Keyed tables: delete every key the run touched, then insert the final images. */
  private keyedChanges(step: number, target: string, columns: Columns, keyColumns: number[], changes: RowChange[]): void {
    const { rows, deletedKeys, lookups } = collapseByKey(keyColumns, changes);
    for (const values of rows) this.addRow(step, columns, { values, lookup: lookups.get(values) });
    for (const key of deletedKeys) {
      const values: Value[] = new Array(columns.source.length).fill(null);
      for (const [position, column] of keyColumns.entries()) values[column] = key[position];
      this.addRow(step, columns, { values, deleted: true });
    }
    this.stageKeys = Math.max(this.stageKeys, keyColumns.length);
    const stage = this.table(this.stage);
    const keyMatch = (prefix: 'c' | 'k') =>
      keyColumns
        .map((column, position) => `t.${columns.target(column)} = ${columns.cast(column, `s.${prefix}${prefix === 'c' ? column : position}`)}`)
        .join(' AND ');
    const keepsUnchanged = rows.some((row) => lookups.has(row) && row.includes(UNCHANGED));
    const keep = `_keep_${step}`;
    if (keepsUnchanged) {
      this.body.push(
        `CREATE TEMP TABLE ${keep} AS SELECT s._row AS _pgr_row, t.* FROM ${stage} s JOIN ${target} t ON ${keyMatch('k')} WHERE s._step = ${step} AND s._unchanged IS NOT NULL`,
      );
      this.body.push(
        `ASSERT (SELECT COUNT(*) FROM ${keep}) = (SELECT COUNT(*) FROM ${stage} s WHERE s._step = ${step} AND s._unchanged IS NOT NULL) AS ${literal(`an update of ${columns.tableName} kept unchanged TOASTed values, but the destination has no row with that key to take them from`)}`,
      );
    }
    this.body.push(`DELETE FROM ${target} t WHERE EXISTS (SELECT 1 FROM ${stage} s WHERE s._step = ${step} AND ${keyMatch('c')})`);
    const values = keepsUnchanged
      ? columns.values((index, cast) => `IF(STRPOS(IFNULL(s._unchanged, ''), ',${index},') > 0, k.${columns.target(index)}, ${cast})`)
      : columns.values();
    const from = keepsUnchanged ? `${stage} s LEFT JOIN ${keep} k ON k._pgr_row = s._row` : `${stage} s`;
    this.body.push(`INSERT INTO ${target} (${columns.names()}) SELECT ${values} FROM ${from} WHERE s._step = ${step} AND s._deleted IS NOT TRUE`);
  }

  /**
   * Rows without a key (or REPLICA IDENTITY FULL) may repeat: the run is netted to a count per
   * row image; removing n copies deletes every matching row and puts back all but n.
   */
  private keylessChanges(step: number, target: string, columns: Columns, segment: Extract<Segment, { kind: 'changes' }>): void {
    let counts: ReturnType<typeof netRowCounts>;
    try {
      counts = netRowCounts(segment.changes);
    } catch (error) {
      throw new RefusedError(`${qualifiedName(segment.relation)}: ${(error as Error).message}`);
    }
    if (counts.length === 0) return;
    for (const { image, count } of counts) {
      if (count < 0) this.addRow(step, columns, { values: image, deleted: true, count: -count });
      else for (let copy = 0; copy < count; copy++) this.addRow(step, columns, { values: image });
    }
    const stage = this.table(this.stage);
    const match = columns.mapped
      .map(({ index, type }) => {
        const [stored, staged] = [`t.${columns.target(index)}`, type.cast(`s.c${index}`)];
        // JSON has no equality in BigQuery: compare its canonical text.
        return type.sql === 'JSON' ? `TO_JSON_STRING(${stored}) IS NOT DISTINCT FROM TO_JSON_STRING(${staged})` : `${stored} IS NOT DISTINCT FROM ${staged}`;
      })
      .join(' AND ');
    const hits = `_hits_${step}`;
    this.body.push(
      `CREATE TEMP TABLE ${hits} AS SELECT t.*, s._row AS _pgr_row, s._count AS _pgr_count FROM ${target} t JOIN ${stage} s ON s._step = ${step} AND s._deleted AND ${match}`,
    );
    this.body.push(`DELETE FROM ${target} t WHERE EXISTS (SELECT 1 FROM ${stage} s WHERE s._step = ${step} AND s._deleted AND ${match})`);
    const all = columns.allTargets();
    this.body.push(
      `INSERT INTO ${target} (${all}) SELECT ${all} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY _pgr_row) AS _pgr_n FROM ${hits}) WHERE _pgr_n > _pgr_count`,
    );
    this.body.push(`INSERT INTO ${target} (${columns.names()}) SELECT ${columns.values()} FROM ${stage} s WHERE s._step = ${step} AND s._deleted IS NOT TRUE`);
  }

  private addRow(step: number, columns: Columns, row: StageRow): void {
    const line: Record<string, unknown> = { _step: step, _row: this.stageRows.length };
    if (row.deleted) line._deleted = true;
    if (row.count !== undefined) line._count = row.count;
    const unchanged: number[] = [];
    for (const { index, type } of columns.mapped) {
      const value = row.values[index];
      if (value === UNCHANGED) unchanged.push(index);
      else if (value !== null && value !== undefined) line[`c${index}`] = type.stage(value);
    }
    if (row.lookup) {
      const lookup = row.lookup;
      columns.keyIndexes.forEach((index, position) => {
        const value = lookup[position];
        if (typeof value === 'string') line[`k${position}`] = columns.typeOf(index).stage(value);
      });
    }
    if (unchanged.length > 0) line._unchanged = `,${unchanged.join(',')},`;
    this.stageWidth = Math.max(this.stageWidth, columns.source.length);
    const text = JSON.stringify(line);
    if (text.length > MAX_ROW_BYTES / 4 && Buffer.byteLength(text) > MAX_ROW_BYTES) throw rowTooLarge(columns, row.values, Buffer.byteLength(text));
    this.stageRows.push(text);
  }

  stageFields(): TableField[] {
    return [
      { name: '_step', type: 'INT64' },
      { name: '_row', type: 'INT64' },
      { name: '_deleted', type: 'BOOL' },
      { name: '_count', type: 'INT64' },
      { name: '_unchanged', type: 'STRING' },
      ...Array.from({ length: this.stageWidth }, (_, index) => ({ name: `c${index}`, type: 'STRING' })),
      ...Array.from({ length: this.stageKeys }, (_, index) => ({ name: `k${index}`, type: 'STRING' })),
    ];
  }

  writeStates(states: Map<number, TableState>, stateTable: string, shapes: Map<number, Shape>): void {
    if (states.size === 0) return;
    const oids = [...states.keys()];
    this.body.push(`DELETE FROM ${stateTable} WHERE table_oid IN (${oids.join(', ')})`);
    const rows = [...states].map(([oid, state]) => {
      const shape = shapes.get(oid)!;
      const quarantine = state.quarantine ? literal(JSON.stringify(state.quarantine)) : 'NULL';
      return `(${oid}, ${literal(shape.schema)}, ${literal(shape.name)}, ${literal(shape.table)}, ${literal(JSON.stringify(shape.columns))}, ${state.copyLsn}, ${state.copyChunk}, ${state.copyDone}, ${state.applied.lsn}, ${state.applied.ordinal}, ${quarantine}, CURRENT_TIMESTAMP())`;
    });
    this.body.push(
      `INSERT INTO ${stateTable} (table_oid, source_schema, source_table, table_name, columns, copy_lsn, copy_chunk, copy_done, applied_lsn, applied_ordinal, quarantine, updated_at) VALUES ${rows.join(', ')}`,
    );
  }

  text(): string {
    const cleanup = this.stageRows.length > 0 ? [`DROP TABLE IF EXISTS ${this.table(this.stage)}`] : [];
    return [...this.ddl, ...this.body, 'COMMIT TRANSACTION', ...cleanup].map((statement) => `${statement};`).join('\n');
  }
}

function rowTooLarge(columns: Columns, values: Value[], bytes: number): RefusedError {
  const megabytes = (count: number) => `${(count / 1024 / 1024).toFixed(1)} MB`;
  const sizes = columns.source.map((column, index) => ({
    column: column.name,
    bytes: typeof values[index] === 'string' ? Buffer.byteLength(values[index] as string) : 0,
  }));
  const largest = sizes.reduce((a, b) => (b.bytes > a.bytes ? b : a));
  return new RefusedError(
    `a row of ${columns.tableName} is ${megabytes(bytes)} as JSON (its column ${largest.column} holds ${megabytes(largest.bytes)}), and BigQuery loads rows of at most 100 MB`,
  );
}

/** A value given as Postgres text, as a typed BigQuery constant. */
function constant(column: Column, text: string): string {
  const type = bigQueryType(column);
  const staged = type.stage(text);
  return staged === null ? 'NULL' : type.cast(literal(staged));
}

/** How a step's columns (of the shape its relation had) map onto the final table. */
class Columns {
  readonly source: Column[];
  readonly tableName: string;
  /** The step's columns that still exist in the final table, by their index in the step. */
  readonly mapped: { index: number; column: Column; type: BigQueryType }[] = [];
  /** The step's key columns, by index in the step: computed once, used for every staged row. */
  readonly keyIndexes: number[];
  /** Final columns the step does not know, which had a default when they were added. */
  private readonly filled: Column[];
  private readonly byIndex = new Map<number, { column: Column; type: BigQueryType }>();

  constructor(
    relation: Relation,
    private readonly shape: Shape,
  ) {
    this.source = relation.columns;
    this.tableName = qualifiedName(relation);
    relation.columns.forEach((column, index) => {
      const final = counterpart(column, shape.columns);
      if (!final) return;
      const entry = { index, column: final, type: bigQueryType(final) };
      this.mapped.push(entry);
      this.byIndex.set(index, entry);
    });
    this.keyIndexes = relation.columns.flatMap((column, index) => (column.isKey ? [index] : []));
    const known = new Set(this.mapped.map(({ column }) => column));
    this.filled = shape.columns.filter((column) => !known.has(column) && column.missingValue !== undefined);
  }

  target(index: number): string {
    return ident(bigQueryName(this.byIndex.get(index)!.column.name));
  }

  typeOf(index: number): BigQueryType {
    return this.byIndex.get(index)!.type;
  }

  cast(index: number, value: string): string {
    return this.typeOf(index).cast(value);
  }

  names(): string {
    return [...this.mapped.map(({ column }) => column), ...this.filled].map((column) => ident(bigQueryName(column.name))).join(', ');
  }

  values(wrap: (index: number, cast: string) => string = (_, cast) => cast): string {
    return [
      ...this.mapped.map(({ index, type }) => wrap(index, type.cast(`s.c${index}`))),
      ...this.filled.map((column) => constant(column, column.missingValue!)),
    ].join(', ');
  }

  allTargets(): string {
    return this.shape.columns.map((column) => ident(bigQueryName(column.name))).join(', ');
  }
}
