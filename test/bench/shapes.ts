/**
 * The row shapes the backfill is measured on, and the path a user would script instead:
 * `COPY … TO STDOUT (FORMAT csv)` into a file with psql, then DuckDB's read_csv into a typed
 * table. Each shape is made by SQL alone, so anyone can load it again.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { DuckDBInstance } from '@duckdb/node-api';
import { pgArrayListSql } from '../../consumers/duckdb/arrays.js';

export interface Shape {
  /** What the report calls it. */
  name: string;
  /** The table's columns, as in CREATE TABLE. */
  columns: string;
  /** The SELECT list making row `g` (of generate_series). */
  row: string;
  /**
   * The manual path's columns: the type read_csv reads each as, and the SQL turning the value
   * read (`$`) into the column (arrays: read as text, then parsed as this project does).
   */
  manual: { name: string; csvType: string; type?: string; convert?: string }[];
}

const md5 = (expression: string) => `md5((${expression})::text)`;

export const NARROW: Shape = {
  name: 'narrow, mixed types',
  columns: 'id bigint PRIMARY KEY, name text, amount numeric(12,2), created timestamptz, payload jsonb',
  row: "g, 'name ' || g, (g % 100000) / 100.0, '2024-01-01'::timestamptz + g * interval '1 second', jsonb_build_object('g', g, 'tag', 'x' || (g % 10))",
  manual: [
    { name: 'id', csvType: 'BIGINT' },
    { name: 'name', csvType: 'VARCHAR' },
    { name: 'amount', csvType: 'DECIMAL(12,2)' },
    { name: 'created', csvType: 'TIMESTAMPTZ' },
    { name: 'payload', csvType: 'JSON' },
  ],
};

/** Several text columns, about 290 bytes a row, nearly every value distinct. */
export const WIDE_TEXT: Shape = {
  name: 'wide text',
  columns: 'id bigint PRIMARY KEY, title text, body text, author text, url text, summary text',
  row: `g, 'Title ' || ${md5('g')}, ${md5('g * 3')} || ' ' || ${md5('g * 5')} || ' ' || ${md5('g * 7')}, 'author-' || (g % 50000), 'https://example.com/' || ${md5('g * 11')} || '/' || g, ${md5('g * 13')} || ${md5('g * 17')}`,
  manual: ['id', 'title', 'body', 'author', 'url', 'summary'].map((name) => ({ name, csvType: name === 'id' ? 'BIGINT' : 'VARCHAR' })),
};

const item = (sku: number, tags: string) =>
  `jsonb_build_object('sku', 'SKU-' || (g % ${sku}), 'qty', 1 + g % 5, 'price', (g % ${sku}) / 100.0, 'tags', jsonb_build_array(${tags}))`;

/** One jsonb document of about 1 kB a row: nested objects, arrays of objects, numbers, strings, booleans. */
export const JSON_DOCUMENTS: Shape = {
  name: 'JSON documents',
  columns: 'id bigint PRIMARY KEY, doc jsonb',
  row: `g, jsonb_build_object(
    'id', g, 'kind', 'order', 'status', (ARRAY['new', 'paid', 'shipped', 'returned'])[1 + g % 4],
    'customer', jsonb_build_object('id', g % 100000, 'name', 'Customer ' || ${md5('g')}, 'email', substr(${md5('g * 3')}, 1, 12) || '@example.com',
      'address', jsonb_build_object('street', (g % 999) || ' Main Street', 'city', 'City ' || (g % 500), 'zip', lpad((g % 99999)::text, 5, '0'), 'country', 'DE')),
    'items', jsonb_build_array(${item(5000, "'a', 'b' || g % 9")}, ${item(7000, "'c'")}, ${item(3000, '')}, ${item(900, "'d', 'e'")}),
    'notes', ${md5('g * 7')} || ' ' || ${md5('g * 11')} || ' ' || ${md5('g * 13')},
    'meta', jsonb_build_object('created', '2024-01-01'::timestamptz + g * interval '1 second', 'source', 'web',
      'flags', jsonb_build_object('gift', g % 2 = 0, 'express', g % 5 = 0, 'score', g % 100), 'trace', ${md5('g * 17')} || ${md5('g * 19')} || ${md5('g * 23')}))`,
  manual: [
    { name: 'id', csvType: 'BIGINT' },
    { name: 'doc', csvType: 'JSON' },
  ],
};

/** int[], text[] (some elements quoted: spaces, quotes) and timestamptz[] columns. */
export const ARRAYS: Shape = {
  name: 'array columns',
  columns: 'id bigint PRIMARY KEY, scores integer[], tags text[], seen timestamptz[]',
  row: `g, ARRAY[${Array.from({ length: 10 }, (_, index) => `(g * ${index + 1}) % 100000`).join(', ')}],
    ARRAY['tag ' || (g % 100), 'x' || (g % 7), ${md5('g')}, 'say "' || (g % 13) || '"', 'plain'],
    ARRAY['2024-01-01'::timestamptz + g * interval '1 second', '2024-06-01'::timestamptz + g * interval '1 minute', '2025-01-01'::timestamptz + g * interval '1 hour']`,
  manual: [
    { name: 'id', csvType: 'BIGINT' },
    { name: 'scores', csvType: 'VARCHAR', type: 'INTEGER[]', convert: `list_transform(${pgArrayListSql('$', 1, false)}, e -> CAST(e AS INTEGER))` },
    { name: 'tags', csvType: 'VARCHAR', type: 'VARCHAR[]', convert: pgArrayListSql('$', 1, true) },
    { name: 'seen', csvType: 'VARCHAR', type: 'TIMESTAMPTZ[]', convert: `list_transform(${pgArrayListSql('$', 1, false)}, e -> CAST(e AS TIMESTAMPTZ))` },
  ],
};

export const SHAPES = [NARROW, WIDE_TEXT, JSON_DOCUMENTS, ARRAYS];

/** Creates `table` in `shape` with `rows` rows (autovacuum off: a vacuum landing in one run and not another would be measured). */
export const loadShapeSql = (shape: Shape, table: string, rows: number) => `
  CREATE TABLE ${table} (${shape.columns}) WITH (autovacuum_enabled = false);
  INSERT INTO ${table} SELECT ${shape.row} FROM generate_series(1, ${rows}) g;`;

/**
 * The manual path, from psql's launch to DuckDB's file closed: psql writes the table's CSV
 * to a file, then DuckDB reads it into a typed table (its columns cast by read_csv itself
 * where DuckDB can, the arrays parsed after). Nothing of it overlaps.
 */
export async function timeManualPath(url: string, table: string, shape: Shape): Promise<number> {
  const directory = mkdtempSync(join(tmpdir(), 'pgr-bench-manual-'));
  const csv = join(directory, `${table}.csv`);
  try {
    const started = performance.now();
    const output = openSync(csv, 'w');
    const psql = spawn('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', url, '-c', `COPY ${table} TO STDOUT (FORMAT csv)`], {
      stdio: ['ignore', output, 'inherit'],
    });
    const code = await new Promise<number | null>((resolve) => psql.on('exit', resolve));
    if (code !== 0) throw new Error(`psql exited with ${code}`);
    const instance = await DuckDBInstance.create(join(directory, 'manual.duckdb'));
    const connection = await instance.connect();
    const definitions = shape.manual.map((column) => `${column.name} ${column.type ?? column.csvType}`).join(', ');
    await connection.run(`CREATE TABLE ${table} (${definitions})`);
    const read = shape.manual.map((column) => `'${column.name}': '${column.csvType}'`).join(', ');
    const values = shape.manual.map((column) => (column.convert ? column.convert.replaceAll('$', column.name) : column.name)).join(', ');
    await connection.run(
      `INSERT INTO ${table} SELECT ${values} FROM read_csv('${csv}', header = false, auto_detect = false, max_line_size = 10000000, columns = {${read}})`,
    );
    connection.closeSync();
    instance.closeSync();
    return (performance.now() - started) / 1000;
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}
