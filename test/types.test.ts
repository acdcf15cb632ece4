import { DuckDBInstance } from '@duckdb/node-api';
import test from 'ava';
import { duckdbRows, TestPipeline } from './support/pipeline.js';
import { useServices } from './support/services.js';
import { changeZoo, TABLES, zooTables } from './support/zoo.js';

const env = useServices(test);

test('every built-in type (and enums, domains, composites, arrays, hstore) arrives faithfully, copied and streamed', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'types', ['main']);
  await env.pg.query(zooTables(pipeline.publication));
  const { producer } = await pipeline.runWithDuckdb(env.redis.client, async () => {
    await changeZoo(env.pg);
    await pipeline.waitForCatchUp();
  });
  t.notRegex(producer.stderr, /session ended/, 'the producer ran without a failure');

  const mismatches: string[] = [];
  for (const [table, columns] of TABLES) {
    const pgRows = (
      await env.pg.query(
        `SELECT id, ${columns.map((column) => `${column.compare.pg.replaceAll('$', column.name)} AS ${column.name}`).join(', ')} FROM ${table} ORDER BY id`,
      )
    ).rows;
    const instance = await DuckDBInstance.create(pipeline.duckdbPath('main'), { access_mode: 'READ_ONLY' });
    const connection = await instance.connect();
    const duckRows = (
      await connection.runAndReadAll(
        `SELECT id, ${columns.map((column) => `${column.compare.duck.replaceAll('$', column.name)} AS ${column.name}`).join(', ')} FROM public.${table} ORDER BY id`,
      )
    ).getRowObjectsJS();
    connection.closeSync();
    instance.closeSync();
    t.deepEqual(
      duckRows.map((row) => row.id),
      pgRows.map((row) => row.id),
      table,
    );
    pgRows.forEach((pgRow, index) => {
      for (const column of columns) {
        // numeric(p,s) NaN is the one value DuckDB's DECIMAL cannot hold: it arrives as NULL (documented).
        const nan = column.name === 'c_numeric_ps' && pgRow[column.name] === 'NaN';
        const expected = nan ? null : canonical(pgRow[column.name], column.compare.parse);
        const actual = canonical(duckRows[index]?.[column.name], column.compare.parse);
        if (JSON.stringify(actual) !== JSON.stringify(expected))
          mismatches.push(`${table} id ${pgRow.id} ${column.name} (${column.type}): Postgres ${JSON.stringify(expected)}, DuckDB ${JSON.stringify(actual)}`);
      }
    });
  }
  t.deepEqual(mismatches, []);
  const types = Object.fromEntries((await duckColumnTypes(pipeline.duckdbPath('main'))).map(({ name, type }) => [name, type]));
  t.like(types, {
    c_int8: 'BIGINT',
    c_numeric_ps: 'DECIMAL(12,2)',
    c_numeric: 'VARCHAR',
    c_bytea: 'BLOB',
    c_timestamptz: 'TIMESTAMP WITH TIME ZONE',
    c_jsonb: 'JSON',
    c_uuid: 'UUID',
    c_int_array: 'INTEGER[]',
    c_matrix: 'INTEGER[][]',
    c_domain: 'INTEGER',
    c_domain_numeric: 'DECIMAL(10,2)',
    c_enum: 'VARCHAR',
    c_money: 'DECIMAL(19,2)',
    c_interval: 'INTERVAL',
  });
});

function canonical(value: unknown, parse?: 'float' | 'json'): unknown {
  if (value === null || value === undefined) return null;
  const text = String(value);
  if (parse === 'float') {
    const normalised = text.replace(/^(-?)inf(inity)?$/i, '$1Infinity').replace(/^nan$/i, 'NaN');
    const number = Number(normalised);
    return Object.is(number, -0) ? '-0' : Number.isNaN(number) ? 'NaN' : number;
  }
  if (parse === 'json') return JSON.parse(text);
  return text;
}

async function duckColumnTypes(path: string, table = 'zoo'): Promise<{ name: string; type: string }[]> {
  const instance = await DuckDBInstance.create(path, { access_mode: 'READ_ONLY' });
  const connection = await instance.connect();
  const rows = (
    await connection.runAndReadAll(`SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '${table}'`)
  ).getRows();
  connection.closeSync();
  instance.closeSync();
  return rows.map(([name, type]) => ({ name: String(name), type: String(type) }));
}

test('values a DuckDB type cannot hold as declared follow the documented rules, copied and streamed: timestamps past 294247 are infinity, numeric with a scale above its precision or below zero is exact', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'extremes', ['main']);
  const rows = (id: number) => `(${id}, '294276-12-31 23:59:59', '294270-06-01 12:00:00+00', '2024-01-01', 0.00012, 1234500, 0.00123)`;
  await env.pg.query(`
    CREATE TABLE extremes (id int PRIMARY KEY, far timestamp, far_tz timestamptz, near timestamp, tiny numeric(2,5), rounded numeric(5,-2), small numeric(3,5));
    INSERT INTO extremes VALUES ${rows(1)}, (2, NULL, NULL, NULL, NULL, NULL, NULL);
    CREATE TABLE beside (id int PRIMARY KEY);
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE extremes, beside;`);
  await pipeline.runWithDuckdb(env.redis.client, async () => {
    await env.pg.query(`INSERT INTO extremes VALUES ${rows(3)}; INSERT INTO beside VALUES (1)`);
    await env.pg.query("UPDATE extremes SET far = '294250-01-01', tiny = -0.00099, rounded = -9999900 WHERE id = 1");
    await pipeline.waitForCatchUp();
  });
  const columns = ['id', 'far', 'far_tz', 'near', 'tiny', 'rounded', 'small'];
  const duck = await duckdbRows(pipeline.duckdbPath('main'), 'public.extremes', columns);
  // DuckDB writes a DECIMAL(5,5) without the leading zero.
  t.deepEqual(duck, [
    JSON.stringify(['1', 'infinity', 'infinity', '2024-01-01 00:00:00', '-.00099', '-9999900', '.00123']),
    JSON.stringify(['2', null, null, null, null, null, null]),
    JSON.stringify(['3', 'infinity', 'infinity', '2024-01-01 00:00:00', '.00012', '1234500', '.00123']),
  ]);
  const types = Object.fromEntries((await duckColumnTypes(pipeline.duckdbPath('main'), 'extremes')).map(({ name, type }) => [name, type]));
  t.like(types, { tiny: 'DECIMAL(5,5)', rounded: 'DECIMAL(7,0)', small: 'DECIMAL(5,5)' });
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.beside', ['id']), [JSON.stringify(['1'])]);
});
