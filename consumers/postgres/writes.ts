import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { joinPieces } from '../../shared/chunks.js';
import { parseCopyRows } from '../../shared/csv.js';
import { qualifiedName, type Relation, type RowChange, UNCHANGED, type Value } from '../../shared/events.js';
import { collapseByKey, netRowCounts } from '../collapse.js';
import { RefusedError } from '../destination.js';
import { keyColumnsOf } from '../schema.js';
import { copyField, ident } from './types.js';

/**
 * A run of changes to one table, set-wise: the final images (keyed tables) or net counts per
 * image (keyless ones) go by COPY into a staging table of the target's own column types, then
 * one statement each applies them. Column names at the target are never used for staging
 * columns (c0, c1, …): no source name can collide with them.
 */
/** A table at the target as a write sees it: where it is, the relation its rows follow, and its columns' types there. */
export interface TargetTable {
  sql: string;
  relation: Relation;
  types: string[];
}

export async function writeChanges(client: pg.PoolClient, table: TargetTable, changes: RowChange[]): Promise<void> {
  const { sql: target, relation } = table;
  const keys = keyColumnsOf(relation);
  if (relation.replicaIdentity === 'full' || keys.length === 0) {
    let counts: ReturnType<typeof netRowCounts>;
    try {
      counts = netRowCounts(changes);
    } catch (error) {
      throw new RefusedError(`${qualifiedName(relation)}: ${(error as Error).message}`);
    }
    await writeCounts(client, table, counts);
    return;
  }
  const { rows, deletedKeys, lookups } = collapseByKey(keys, changes);
  const staged: Value[][] = [];
  for (const row of rows) staged.push([...row, 'f', ...(lookups.get(row) ?? keys.map((index) => row[index])), unchangedOf(row)]);
  for (const key of deletedKeys) {
    const values: Value[] = new Array(relation.columns.length).fill(null);
    for (const [position, column] of keys.entries()) values[column] = key[position];
    staged.push([...values, 't', ...key, null]);
  }
  const stage = await stageRows(client, table, staged, ['d boolean', ...keys.map((_, position) => `k${position} text`), 'u int[]']);
  const columns = relation.columns.map((column) => ident(column.name));
  // Unchanged TOASTed values come from the stored row (under its old key when the key changed).
  const unchanged = new Set(rows.flatMap((row) => row.flatMap((value, index) => (value === UNCHANGED ? [index] : []))));
  if (unchanged.size > 0) {
    const lookupMatch = keys.map((column, position) => `t.${columns[column]}::text = s.k${position}`).join(' AND ');
    const sets = [...unchanged].map((index) => `c${index} = CASE WHEN ${index + 1} = ANY(s.u) THEN t.${columns[index]} ELSE s.c${index} END`);
    const filled = await client.query(`UPDATE ${stage} s SET ${sets.join(', ')}, u = NULL FROM ${target} t WHERE s.u IS NOT NULL AND ${lookupMatch}`);
    const missing = (await client.query(`SELECT count(*)::int AS n FROM ${stage} WHERE u IS NOT NULL`)).rows[0].n;
    if (missing > 0) {
      throw new RefusedError(
        `an update of ${qualifiedName(relation)} kept unchanged TOASTed values, but the target has no row with that key to take them from (${filled.rowCount} found)`,
      );
    }
  }
  await client.query(`DELETE FROM ${target} t USING ${stage} s WHERE ${keys.map((column) => `t.${columns[column]} = s.c${column}`).join(' AND ')}`);
  await client.query(
    `INSERT INTO ${target} (${columns.join(', ')}) SELECT ${relation.columns.map((_, index) => `c${index}`).join(', ')} FROM ${stage} WHERE NOT d`,
  );
  await client.query(`DROP TABLE ${stage}`);
}

/** A resumed copy's chunk: its rows replace stored rows with their key. */
export async function writeMergedCopy(client: pg.PoolClient, table: TargetTable, copyText: Buffer[]): Promise<void> {
  const inserts = parseCopyRows(joinPieces(copyText).toString()).map(
    (row): RowChange => ({ op: 'insert', relation: 0, version: { lsn: 0n, ordinal: 0 }, row }),
  );
  await writeChanges(client, table, inserts);
}

/** Keyless runs: n copies of an image added, or n of the stored rows equal to it removed. */
async function writeCounts(client: pg.PoolClient, table: TargetTable, counts: { image: Value[]; count: number }[]): Promise<void> {
  if (counts.length === 0) return;
  const { sql: target, relation } = table;
  const stage = await stageRows(
    client,
    table,
    counts.map(({ image, count }, row) => [...image, String(count), String(row)]),
    ['n int', 'r int'],
  );
  const columns = relation.columns.map((column) => ident(column.name));
  // Compared as text: some types (json, point) have no equality, and both sides passed through the same type.
  const match = columns.map((column, index) => `t.${column}::text IS NOT DISTINCT FROM s.c${index}::text`).join(' AND ');
  await client.query(
    `DELETE FROM ${target} WHERE ctid IN (
       SELECT ctid FROM (SELECT t.ctid, s.n, row_number() OVER (PARTITION BY s.r) AS k FROM ${target} t JOIN ${stage} s ON ${match} WHERE s.n < 0) hits
       WHERE k <= -n)`,
  );
  await client.query(
    `INSERT INTO ${target} (${columns.join(', ')}) SELECT ${columns.map((_, index) => `c${index}`).join(', ')} FROM ${stage}, generate_series(1, n) WHERE n > 0`,
  );
  await client.query(`DROP TABLE ${stage}`);
}

/** A temporary table c0… of the table's column types at the target plus `extra`, filled by COPY with `rows` (values, then the extras). */
async function stageRows(client: pg.PoolClient, table: TargetTable, rows: Value[][], extra: string[]): Promise<string> {
  const stage = `pgr_stage_${table.relation.oid}`;
  const columns = [...table.types.map((type, index) => `c${index} ${type}`), ...extra];
  await client.query(`CREATE TEMP TABLE ${stage} (${columns.join(', ')}) ON COMMIT DROP`);
  const text = rows.map((row) => `${row.map(copyField).join('\t')}\n`).join('');
  await pipeline(Readable.from([Buffer.from(text)]), client.query(copyFrom(`COPY ${stage} FROM STDIN`)));
  return stage;
}

/** The 1-based positions of a row's UNCHANGED values, as a Postgres int[] literal (NULL: none). */
function unchangedOf(row: Value[]): Value {
  const positions = row.flatMap((value, index) => (value === UNCHANGED ? [index + 1] : []));
  return positions.length > 0 ? `{${positions.join(',')}}` : null;
}
