import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { duckdbRows, LOAD_SCHEMA, loadTablesIn, TestPipeline, writeLoad } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

test('kill -9 of the producer and of the consumer mid-stream loses and doubles nothing', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'crash', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication));
  let producer = pipeline.producer();
  let consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    const load = writeLoad(env.pg, 1500, 2);
    await sleep(800);
    await producer.kill9();
    await sleep(300);
    producer = pipeline.producer();
    await sleep(1200);
    await consumer.kill9();
    consumer = pipeline.duckdb('main');
    await sleep(1000);
    await Promise.all([producer.kill9(), consumer.kill9()]);
    [producer, consumer] = [pipeline.producer(), pipeline.duckdb('main')];
    await load;
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'));
  t.deepEqual(duckdb, postgres);
});

test('a transaction committed right after the acknowledged one survives a producer kill -9 (the ack is the commit end, not +1)', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'backtoback', ['main']);
  await env.pg.query(`CREATE TABLE pairs (id int PRIMARY KEY, label text); CREATE PUBLICATION ${pipeline.publication} FOR TABLE pairs;`);
  let producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  const { default: pgModule } = await import('pg');
  const open = new pgModule.Client({ connectionString: env.pg.url });
  await open.connect();
  try {
    await pipeline.waitForCopy(env.redis.client);
    // B writes its row first but commits second, so its commit record directly follows A's.
    await open.query("BEGIN; INSERT INTO pairs VALUES (2, 'B')");
    await env.pg.query("INSERT INTO pairs VALUES (1, 'A')");
    await pipeline.waitForCatchUp();
    await producer.kill9();
    await open.query('COMMIT');
    producer = pipeline.producer();
    await pipeline.waitForCatchUp();
    const confirmed = (
      await env.pg.query('SELECT confirmed_flush_lsn <= pg_current_wal_insert_lsn() AS ok FROM pg_replication_slots WHERE slot_name = $1', [pipeline.slot])
    ).rows[0];
    t.true(confirmed.ok, 'the slot never confirms past the end of the WAL');
  } finally {
    await open.end();
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.pairs', ['id', 'label']), ['["1","A"]', '["2","B"]']);
});
