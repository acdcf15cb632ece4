import { DuckDBInstance } from '@duckdb/node-api';
import test from 'ava';
import { useBigQueryEmulator } from './support/bigquery-emulator.js';
import {
  currentWalLsn,
  duckdbRows,
  LOAD_SCHEMA,
  loadTablesIn,
  postgresRows,
  runCli,
  scrape,
  TestPipeline,
  waitFor,
  waitForSlotAt,
  writeLoad,
} from './support/pipeline.js';
import { freePort, useServices } from './support/services.js';

const env = useServices(test);
const bq = useBigQueryEmulator(test);

/** Runs one statement on a DuckDB file no consumer has open: what an operator does to their copy of a table. */
async function alterDuckdb(path: string, sql: string): Promise<void> {
  const instance = await DuckDBInstance.create(path);
  const connection = await instance.connect();
  try {
    await connection.run(sql);
  } finally {
    connection.closeSync();
    instance.closeSync();
  }
}

test('a table whose rows the destination refuses is quarantined; the other tables of its partition go on, the slot advances, and resync --table releases it with every row', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'quarantine', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication));
  await env.pg.query('CREATE TABLE picky (id int PRIMARY KEY, note text)');
  await env.pg.query("INSERT INTO picky SELECT g, 'n' || g FROM generate_series(1, 50) g");
  await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} ADD TABLE picky`);
  const path = pipeline.duckdbPath('main');
  const status = async () => (await pipeline.status()).destinations[0];
  const metricsPort = await freePort();
  // One partition: every table's batches queue behind one another.
  const producer = pipeline.producer(['--partitions', '1']);
  let consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    await pipeline.waitForCatchUp();
    await consumer.stop();
    // An operator makes their copy of picky refuse NULL notes: DuckDB now refuses rows Postgres holds.
    await alterDuckdb(path, 'ALTER TABLE public.picky ALTER COLUMN note SET NOT NULL');
    consumer = pipeline.duckdb('main', {}, [], ['--metrics-port', String(metricsPort)]);
    // The refused row shares a transaction with rows of the other tables, and more follow.
    await env.pg.query(
      "BEGIN; INSERT INTO picky VALUES (51, NULL); UPDATE accounts SET note = 'with picky' WHERE id = 1; INSERT INTO picky VALUES (52, 'fine'); COMMIT",
    );
    await writeLoad(env.pg, 40, 0);
    await env.pg.query("UPDATE picky SET note = 'changed while quarantined' WHERE id <= 10");
    await env.pg.query('DELETE FROM picky WHERE id BETWEEN 20 AND 25');
    const end = await currentWalLsn(env.pg);
    const quarantined = await waitFor('picky to be quarantined', async () => (await status()).quarantined['public.picky']);
    t.regex(quarantined.error, /NOT NULL constraint failed/);
    t.regex(quarantined.fix, /pg-replicate resync --table public\.picky --destination main/);
    // Nothing holds the slot: it passes every change, picky's included.
    await waitForSlotAt(env.pg, pipeline.slot, end);
    const shown = await status();
    t.is(shown.state, 'ok', 'the partition is not parked');
    t.is((await scrape(metricsPort)).get('pg_replicate_tables_quarantined{destination="main"}'), 1);
    const text = (await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout;
    t.regex(text, /table public\.picky: quarantined since .*NOT NULL constraint failed.*pg-replicate resync --table public\.picky --destination main/);
    await consumer.stop();
    const { duckdb, postgres } = await loadTablesIn(env.pg, path);
    t.deepEqual(duckdb, postgres, 'the other tables of the partition are exact');
    // picky holds what it held before its refused batch, and nothing of the changes after it.
    t.is((await duckdbRows(path, 'public.picky', ['count(*)']))[0], '["50"]');

    // The operator undoes the change and asks for a fresh copy: picky is released, exact again.
    await alterDuckdb(path, 'ALTER TABLE public.picky ALTER COLUMN note DROP NOT NULL');
    consumer = pipeline.duckdb('main', {}, [], ['--metrics-port', String(metricsPort)]);
    await waitFor('the consumer to report the quarantine again after its restart', async () => (await status()).quarantined['public.picky']);
    const resync = await pipeline.resync('public.picky', 'main');
    t.is(resync.code, 0, resync.stderr);
    await waitFor('picky to be released', async () => Object.keys((await status()).quarantined).length === 0);
    await env.pg.query("UPDATE picky SET note = 'after release' WHERE id = 52");
    await pipeline.waitForCatchUp();
    t.is((await scrape(metricsPort)).get('pg_replicate_tables_quarantined{destination="main"}'), 0);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  t.deepEqual(await duckdbRows(path, 'public.picky', ['id', 'note']), await postgresRows(env.pg, 'picky', ['id', 'note']));
  const { duckdb, postgres } = await loadTablesIn(env.pg, path);
  t.deepEqual(duckdb, postgres);
});

test('a row BigQuery cannot load (over 100 MB as JSON) quarantines its table there with the column and size named, while DuckDB takes the value exactly', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'quarantinebq', ['warehouse', 'main']);
  await env.pg.query(`
    CREATE TABLE huge (id int PRIMARY KEY, body text);
    CREATE TABLE small (id int PRIMARY KEY, n int);
    INSERT INTO huge VALUES (1, 'short');
    INSERT INTO small SELECT g, g FROM generate_series(1, 10) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE huge, small;`);
  const dataset = 'quarantine_test';
  const status = async () => (await pipeline.status()).destinations.find((each) => each.name === 'warehouse')!;
  const producer = pipeline.producer(['--partitions', '1']);
  const warehouse = pipeline.bigquery('warehouse', bq.emulator.url, dataset);
  const duckdb = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    // 101 MB of text that does not compress away in JSON, then changes to both tables.
    await env.pg.query(`INSERT INTO huge SELECT 2, string_agg(md5(g::text), '') FROM generate_series(1, ${(101 * 1024 * 1024) / 32}) g`);
    await env.pg.query("UPDATE small SET n = n * 10; INSERT INTO huge VALUES (3, 'after')");
    const quarantined = await waitFor('huge to be quarantined in BigQuery', async () => (await status())?.quarantined['public.huge'], { stallMs: 240_000 });
    t.regex(quarantined.error, /a row of public\.huge is 101\.\d MB as JSON \(its column body holds 101\.0 MB\), and BigQuery loads rows of at most 100 MB/);
    await pipeline.waitForCatchUp({ stallMs: 240_000 });
    t.deepEqual(await bq.emulator.tableRows(dataset, 'small', ['id', 'n']), await postgresRows(env.pg, 'small', ['id', 'n']));
    // The fix: the row goes, and a fresh copy releases the table.
    await env.pg.query('DELETE FROM huge WHERE id = 2');
    const resync = await pipeline.resync('public.huge', 'warehouse');
    t.is(resync.code, 0, resync.stderr);
    await waitFor('huge to be released', async () => Object.keys((await status()).quarantined).length === 0);
    await pipeline.waitForCatchUp();
    t.deepEqual(await bq.emulator.tableRows(dataset, 'huge', ['id', 'body']), await postgresRows(env.pg, 'huge', ['id', 'body']));
  } finally {
    await Promise.all([producer.stop(), warehouse.stop(), duckdb.stop()]);
  }
  // DuckDB took the 101 MB value as it was, and its removal.
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.huge', ['id', 'md5(body)']), await postgresRows(env.pg, 'huge', ['id', 'md5(body)']));
});

test('an array with more dimensions than its column declares quarantines its table with the fix, while a table in the same partition goes on', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'quarantinedims', ['main']);
  await env.pg.query(`
    CREATE TABLE grids (id int PRIMARY KEY, cells int[]);
    CREATE TABLE notes (id int PRIMARY KEY, body text);
    INSERT INTO grids VALUES (1, '{1,2}');
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE grids, notes;`);
  const status = async () => (await pipeline.status()).destinations[0];
  const producer = pipeline.producer(['--partitions', '1']);
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    // Postgres does not enforce an array column's declared dimensions; DuckDB's INTEGER[] holds one.
    await env.pg.query("BEGIN; INSERT INTO grids VALUES (2, '{{1,2},{3,4}}'); INSERT INTO notes VALUES (1, 'same transaction'); COMMIT");
    await env.pg.query("INSERT INTO notes VALUES (2, 'after')");
    const quarantined = await waitFor('grids to be quarantined', async () => (await status()).quarantined['public.grids']);
    t.regex(quarantined.error, /an array with more dimensions than the column declares \(1\): declare the column with its dimensions/);
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.notes', ['id', 'body']), await postgresRows(env.pg, 'notes', ['id', 'body']));
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.grids', ['id']), ['["1"]']);
});

test('a column retyped in a way BigQuery cannot convert in place quarantines its table there; resync --table creates it again in the new shape', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'quarantineretype', ['warehouse']);
  await env.pg.query(`
    CREATE TABLE prices (id int PRIMARY KEY, amount numeric(10,2));
    CREATE TABLE other (id int PRIMARY KEY, n int);
    INSERT INTO prices SELECT g, g * 1.5 FROM generate_series(1, 5) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE prices, other;`);
  const dataset = 'retype_test';
  const status = async () => (await pipeline.status()).destinations[0];
  const producer = pipeline.producer(['--partitions', '1']);
  const warehouse = pipeline.bigquery('warehouse', bq.emulator.url, dataset);
  try {
    await pipeline.waitForCopy(env.redis.client);
    await env.pg.query("ALTER TABLE prices ALTER COLUMN amount TYPE text USING amount::text || ' EUR'");
    await env.pg.query("BEGIN; INSERT INTO prices VALUES (6, 'six'); INSERT INTO other VALUES (1, 1); COMMIT");
    const quarantined = await waitFor('prices to be quarantined', async () => (await status()).quarantined['public.prices']);
    t.regex(quarantined.error, /column amount of prices changed type from NUMERIC\(10, ?2\) to STRING, which BigQuery cannot convert in place/);
    await env.pg.query('INSERT INTO other VALUES (2, 2)');
    await pipeline.waitForCatchUp();
    t.deepEqual(await bq.emulator.tableRows(dataset, 'other', ['id', 'n']), await postgresRows(env.pg, 'other', ['id', 'n']));
    const resync = await pipeline.resync('public.prices', 'warehouse');
    t.is(resync.code, 0, resync.stderr);
    await waitFor('prices to be released', async () => Object.keys((await status()).quarantined).length === 0);
    await env.pg.query("UPDATE prices SET amount = 'seven' WHERE id = 1");
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), warehouse.stop()]);
  }
  t.deepEqual(await bq.emulator.tableRows(dataset, 'prices', ['id', 'amount']), await postgresRows(env.pg, 'prices', ['id', 'amount']));
});
