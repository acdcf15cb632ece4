import { DuckDBInstance } from '@duckdb/node-api';
import test from 'ava';
import { duckdbRows, postgresRows, runCli, TestPipeline, waitFor } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

/**
 * Names that collide in DuckDB (identifiers match case-insensitively there, even quoted),
 * schemas DuckDB also uses as catalog names, and a schema named like pg-replicate's own: each
 * source table gets a table of its own, row for row, and the mapping is in _pg_replicate.tables.
 */
test('tables whose names collide in DuckDB get distinct, recorded places, each equal to its source', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'names', ['dest']);
  // Source table (as SQL) → its schema and name in DuckDB (the name, or name__<oid> when taken).
  const tables: [string, string, string][] = [
    ['public.orders', 'public', 'orders'],
    ['public."Orders"', 'public', 'Orders'],
    ['public."ORDERS"', 'public', 'ORDERS'],
    ['"Public".items', 'Public', 'items'],
    ['public.items', 'public', 'items'],
    ['"temp".notes', 'temp', 'notes'],
    ['"system".notes', 'system', 'notes'],
    ['"_pg_replicate".tables', '_pg_replicate__source', 'tables'],
  ];
  await env.pg.query(`
    CREATE SCHEMA "Public"; CREATE SCHEMA "temp"; CREATE SCHEMA "system"; CREATE SCHEMA "_pg_replicate";
    ${tables.map(([table], index) => `CREATE TABLE ${table} (id int PRIMARY KEY, label text); INSERT INTO ${table} SELECT g, '${index}:' || g FROM generate_series(1, 50) g;`).join('\n')}
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${tables.map(([table]) => table).join(', ')};`);
  const oid = async (table: string) => (await env.pg.query(`SELECT '${table.replace(/'/g, "''")}'::regclass::oid::int AS oid`)).rows[0].oid as number;
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('dest');
  try {
    await pipeline.waitForCopy(env.redis.client);
    for (const [table] of tables)
      await env.pg.query(
        `UPDATE ${table} SET label = label || ' changed' WHERE id <= 10; DELETE FROM ${table} WHERE id > 45; INSERT INTO ${table} VALUES (100, 'new')`,
      );
    // Dropped and created again under the same name: the new table takes the old one's place.
    await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} DROP TABLE public.orders; DROP TABLE public.orders;
      CREATE TABLE public.orders (id int PRIMARY KEY, label text); INSERT INTO public.orders VALUES (1, 'recreated');
      ALTER PUBLICATION ${pipeline.publication} ADD TABLE public.orders`);
    await waitFor(
      'the re-created table to be copied',
      async () => producer.stderr.includes('"table":"public.orders"') && producer.stderr.includes('table sync: copy enqueued'),
    );
    await env.pg.query("INSERT INTO public.orders VALUES (2, 'after')");
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  const path = pipeline.duckdbPath('dest');
  const instance = await DuckDBInstance.create(path, { access_mode: 'READ_ONLY' });
  const connection = await instance.connect();
  let mapping: unknown[][];
  try {
    mapping = (await connection.runAndReadAll('SELECT table_oid, target_schema, target_name FROM _pg_replicate.tables')).getRows();
  } finally {
    connection.closeSync();
    instance.closeSync();
  }
  t.is(mapping.length, tables.length, 'one record per source table (the dropped one replaced)');
  const places = new Set<string>();
  for (const [table, schema, name] of tables) {
    const tableOid = await oid(table);
    const [, targetSchema, targetName] = mapping.find(([recorded]) => Number(recorded) === tableOid)!;
    // Which of the colliding tables keeps the plain name depends on which came first (and the
    // re-created table has the place, and so the name, of the one it replaced).
    t.is(targetSchema, schema, table);
    t.regex(String(targetName), new RegExp(`^${name}(__\\d+)?$`), table);
    places.add(`${String(targetSchema)}.${String(targetName)}`.toLowerCase());
    t.deepEqual(
      await duckdbRows(path, `dest."${String(targetSchema)}"."${String(targetName)}"`, ['id', 'label']),
      await postgresRows(env.pg, table, ['id', 'label']),
      `${table} → ${String(targetSchema)}.${String(targetName)}`,
    );
  }
  t.is(places.size, tables.length, 'every table has a place of its own, case ignored');
  // status shows the placement: all of it in --json, the tables placed under another name in text.
  const json = JSON.parse((await runCli(['status', '--json', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout);
  const reported = json.destinations[0].places as Record<string, string>;
  for (const [table, schema, name] of tables) {
    const source = `${await env.pg.query(`SELECT n.nspname || '.' || c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = '${table.replace(/'/g, "''")}'::regclass`).then((result) => result.rows[0].name)}`;
    t.regex(reported[source] ?? '', new RegExp(`^${schema}\\.${name}(__\\d+)?$`), source);
  }
  const text = (await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout;
  // Two of orders/Orders/ORDERS, and one of public.items/"Public".items.
  t.is(text.match(/^ {2}table \S+ is \S+__\d+ there$/gm)?.length, 3, text);
});

test('columns whose names differ only in case get distinct names in DuckDB (<name>__<attnum>), copied, streamed and through schema changes', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'columns', ['main']);
  await env.pg.query(`
    CREATE TABLE cases ("ID" int PRIMARY KEY, id text, "Id" int);
    INSERT INTO cases SELECT g, 'text ' || g, -g FROM generate_series(1, 20) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE cases;`);
  await pipeline.runWithDuckdb(env.redis.client, async () => {
    await env.pg.query(
      `UPDATE cases SET id = 'changed', "Id" = 0 WHERE "ID" <= 5; DELETE FROM cases WHERE "ID" > 18; INSERT INTO cases VALUES (100, 'new', 100)`,
    );
    await pipeline.waitForCatchUp();
    // The column named like another goes; one added later collides again.
    await env.pg.query(`ALTER TABLE cases DROP COLUMN id; ALTER TABLE cases ADD COLUMN "iD" text; UPDATE cases SET "iD" = 'late ' || "ID" WHERE "ID" % 2 = 0`);
    await pipeline.waitForCatchUp();
  });
  t.deepEqual(
    await duckdbRows(pipeline.duckdbPath('main'), 'public.cases', ['"ID"', '"Id__3"', '"iD__4"']),
    await postgresRows(env.pg, 'cases', ['"ID"', '"Id"', '"iD"']),
  );
});
