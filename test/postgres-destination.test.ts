import test from 'ava';
import pg from 'pg';
import { LOAD_SCHEMA, LOAD_TABLES, loadRound, loadUntilStopped, postgresRows, TestPipeline, waitFor } from './support/pipeline.js';
import { type PostgresServer, useServices } from './support/services.js';
import { changeZoo, TABLES, zooTables } from './support/zoo.js';

const env = useServices(test);

/** A database of its own on the test server, as a replication target. */
async function targetDatabase(name: string): Promise<PostgresServer> {
  await env.pg.query(`CREATE DATABASE ${name}`);
  const url = new URL(env.pg.url);
  url.pathname = `/${name}`;
  const pool = new pg.Pool({ connectionString: url.toString(), max: 2 });
  pool.on('error', () => {});
  return { url: url.toString(), query: (sql, params) => pool.query(sql, params as unknown[]), stop: () => pool.end() };
}

test('every type of the zoo arrives in Postgres with its own type and value, copied and streamed', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'pgzoo', ['mirror']);
  const target = await targetDatabase('pgzoo_target');
  await env.pg.query(zooTables(pipeline.publication));
  const producer = pipeline.producer();
  const consumer = pipeline.postgres('mirror', target.url);
  try {
    await pipeline.waitForCopy(env.redis.client);
    await changeZoo(env.pg);
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  for (const [table, columns] of TABLES) {
    const text = ['id', ...columns.map((column) => `${column.name}::text`)];
    t.deepEqual(await postgresRows(target, `public.${table}`, text), await postgresRows(env.pg, table, text), table);
  }
  const types = Object.fromEntries(
    (
      await target.query("SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute WHERE attrelid = 'public.zoo'::regclass AND attnum > 0")
    ).rows.map((row) => [row.attname, row.type]),
  );
  t.like(types, {
    c_int8: 'bigint',
    c_numeric_ps: 'numeric(12,2)',
    c_timestamptz: 'timestamp with time zone',
    c_jsonb: 'jsonb',
    c_int_array: 'integer[]',
    c_domain: 'integer',
    c_domain_numeric: 'numeric(10,2)',
    c_enum: 'text',
    c_enum_array: 'text[]',
    c_composite: 'text',
  });
  await target.stop();
});

test('backfill and CDC under a write load, with kill -9 of the consumer, a TOASTed value left unchanged, a column added, a truncate: Postgres equals Postgres', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'pgmirror', ['mirror']);
  const target = await targetDatabase('pgmirror_target');
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'mirror'));
  await env.pg.query(`
    CREATE TABLE mirror.docs (id int PRIMARY KEY, body text, version int);
    INSERT INTO mirror.docs SELECT g, (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 400) i), 0 FROM generate_series(1, 5) g;
    CREATE TABLE mirror.scratch (id int PRIMARY KEY);
    INSERT INTO mirror.scratch SELECT generate_series(1, 10);
    ALTER PUBLICATION ${pipeline.publication} ADD TABLE mirror.docs, mirror.scratch;`);
  const producer = pipeline.producer();
  let consumer = pipeline.postgres('mirror', target.url, ['--schema-prefix', 'replica_']);
  const load = loadUntilStopped(env.pg, (n) => loadRound('mirror', n));
  try {
    await pipeline.waitForCopy(env.redis.client);
    await env.pg.query('UPDATE mirror.docs SET version = version + 1');
    await consumer.kill9();
    await env.pg.query("ALTER TABLE mirror.accounts ADD COLUMN tier text DEFAULT 'basic'; TRUNCATE mirror.scratch; INSERT INTO mirror.scratch VALUES (42)");
    consumer = pipeline.postgres('mirror', target.url, ['--schema-prefix', 'replica_']);
    await waitFor('the load to go on a while', async () => (await env.pg.query('SELECT count(*)::int AS n FROM mirror.events')).rows[0].n > 150);
    await load.stop();
    await pipeline.waitForCatchUp();
  } finally {
    await load.stop();
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  for (const [table, columns] of [...LOAD_TABLES, ['docs', ['id', 'md5(body)', 'version']], ['scratch', ['id']]] as [string, string[]][]) {
    const all = table === 'accounts' ? [...columns, 'tier'] : columns;
    t.deepEqual(await postgresRows(target, `replica_mirror.${table}`, all), await postgresRows(env.pg, `mirror.${table}`, all), table);
  }
  await target.stop();
});

/** A target role's statement timeout is off for the destination's sessions: a batch cut short would be retried for ever. */
test('a target role with a 1 ms statement_timeout: the copy and the changes are written all the same', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'pgtimeout', ['mirror']);
  await env.pg.query(`
    CREATE TABLE hasty (id int PRIMARY KEY, note text);
    INSERT INTO hasty SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE hasty;
    DROP ROLE IF EXISTS hasty_writer;
    CREATE ROLE hasty_writer LOGIN;
    ALTER ROLE hasty_writer SET statement_timeout = '1ms';`);
  const target = await targetDatabase('pgtimeout_target');
  await target.query('GRANT CREATE ON DATABASE pgtimeout_target TO hasty_writer; GRANT CREATE ON SCHEMA public TO hasty_writer');
  const producer = pipeline.producer();
  const consumer = pipeline.postgres('mirror', target.url.replace('postgres@', 'hasty_writer@'));
  try {
    await pipeline.waitForCopy(env.redis.client);
    await env.pg.query(`UPDATE hasty SET note = 'changed' WHERE id % 3 = 0; DELETE FROM hasty WHERE id % 7 = 0`);
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  t.notRegex(consumer.stderr, /canceling statement/);
  t.deepEqual(await postgresRows(target, 'public.hasty', ['id', 'note']), await postgresRows(env.pg, 'hasty', ['id', 'note']));
  await target.stop();
});
