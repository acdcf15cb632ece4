import type { TableField } from '@google-cloud/bigquery';
import { joinPieces } from '../../shared/chunks.js';
import { parseCopyRows } from '../../shared/csv.js';
import { type Column, qualifiedName, type Relation, type RowChange, UNCHANGED, type Value } from '../../shared/events.js';
import { collapseByKey, netRowCounts } from '../collapse.js';
import { RefusedError, type Step, type TableShape, type TableState } from '../destination.js';
import { columnChanges, counterpart, keyColumnsOf } from '../schema.js';
import { type BigQueryType, bigQueryName, bigQueryType } from './types.js';

/** BigQuery loads JSON rows of at most 100 MB. */
const MAX_ROW_BYTES = 100 * 1024 * 1024;
/** A BigQuery string literal. */
export const literal = (text: string) => `'${text.replace(/\\/g, '\\\\').replace(/'/g, "\\'").replace(/\n/g, '\\n').replace(/\r/g, '\\r')}'`;
export const ident = (name: string) => `\`${name}\``;

/** A table as BigQuery holds it: the source table's shape, and the table's name in BigQuery. */
export interface Shape extends TableShape {
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
 * The batch's steps regrouped per table, in order within each table. Tables are independent,
 * so one table's changes need not wait behind another's: a batch becomes a few statements per
 * table touched, however its changes interleave.
 */
export function segmentsOf(steps: Step[]): Segment[] {
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

/** BigQuery changes a column's type in place only to a wider numeric type. */
function widens(from: string, to: string): boolean {
  const base = (sql: string) => sql.replace(/\(.*$/, '');
  const order = ['INT64', 'NUMERIC', 'BIGNUMERIC', 'FLOAT64'];
  const [a, b] = [order.indexOf(base(from)), order.indexOf(base(to))];
  return a >= 0 && b >= 0 && (a < b || (a === b && a > 0 && a < 3));
}

/** Builds one batch's staging rows and SQL script. */
export class Script {
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
    for (const change of columnChanges(known.columns, wanted.columns, (a, b) => bigQueryType(a).sql === bigQueryType(b).sql)) {
      if (change.kind === 'drop') this.ddl.push(`ALTER TABLE ${target} DROP COLUMN IF EXISTS ${ident(bigQueryName(change.column.name))}`);
      else if (change.kind === 'rename') {
        const [from, to] = [bigQueryName(change.from.name), bigQueryName(change.to.name)];
        if (from !== to) this.ddl.push(`ALTER TABLE ${target} RENAME COLUMN IF EXISTS ${ident(from)} TO ${ident(to)}`);
      } else if (change.kind === 'retype') {
        const [from, to] = [bigQueryType(change.from).sql, bigQueryType(change.to).sql];
        if (!widens(from, to)) {
          throw new RefusedError(
            `column ${change.to.name} of ${wanted.table} changed type from ${from} to ${to}, which BigQuery cannot convert in place (a fresh copy creates the table again with the new type)`,
          );
        }
        this.ddl.push(`ALTER TABLE ${target} ALTER COLUMN ${ident(bigQueryName(change.to.name))} SET DATA TYPE ${to}`);
      } else {
        const { column } = change;
        this.ddl.push(`ALTER TABLE ${target} ADD COLUMN IF NOT EXISTS ${definition(column)}`);
        // Rows older than a column added with a default hold that default (Postgres did not rewrite them).
        if (column.missingValue !== undefined) {
          this.body.push(`UPDATE ${target} SET ${ident(bigQueryName(column.name))} = ${constant(column, column.missingValue)} WHERE TRUE`);
        }
      }
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
    const keyColumns = keyColumnsOf(segment.relation);
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
    this.keyIndexes = keyColumnsOf(relation);
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
