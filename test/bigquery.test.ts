import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { BigQueryEmulator, useBigQueryEmulator } from './support/bigquery-emulator.js';
import { type CliProcess, LOAD_SCHEMA, LOAD_TABLES, postgresRows, TestPipeline, waitFor, writeLoad } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);
const bq = useBigQueryEmulator(test);

async function loadTablesInBigQuery(dataset: string) {
  const bigquery: Record<string, string[]> = {};
  const postgres: Record<string, string[]> = {};
  for (const [table, columns] of LOAD_TABLES) {
    bigquery[table] = await bq.emulator.tableRows(dataset, table, columns);
    postgres[table] = await postgresRows(env.pg, `public.${table}`, columns);
  }
  return { bigquery, postgres };
}

test('backfill and CDC into BigQuery by two consumer processes, exact after kill -9 of producer and consumers', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'bq', ['warehouse']);
  const dataset = 'crash_test';
  await env.pg.query(LOAD_SCHEMA(pipeline.publication));
  let producer = pipeline.producer();
  // Two processes with one name share the partitions: either may take any batch (debug logs say which applied what).
  const consumer = () => pipeline.bigquery('warehouse', bq.emulator.url, dataset, { LOG_LEVEL: 'debug' });
  const consumers: CliProcess[] = [consumer(), consumer()];
  const started = [...consumers];
  try {
    await pipeline.waitForCopy(env.redis.client);
    const load = writeLoad(env.pg, 3000, 2);
    // Both processes take part before anything is killed (which one takes a batch is up to them).
    await waitFor('both consumer processes to apply batches', async () => started.every((process) => process.stderr.includes('"msg":"batch applied"')));
    await producer.kill9();
    producer = pipeline.producer();
    await sleep(1500);
    await consumers[0].kill9();
    consumers[0] = consumer();
    await sleep(1500);
    await Promise.all([producer.kill9(), consumers[1].kill9()]);
    producer = pipeline.producer();
    consumers[1] = consumer();
    await load;
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), ...consumers.map((consumer) => consumer.stop())]);
  }
  const { bigquery, postgres } = await loadTablesInBigQuery(dataset);
  t.deepEqual(bigquery, postgres);
  t.deepEqual(bq.emulator.primaryKeys.get(`${dataset}.accounts`), ['id']);
  t.false(bq.emulator.primaryKeys.has(`${dataset}.events`), 'a table without a primary key declares none');
  // A consumer killed between a load and its script leaves that staging table (at most one per
  // partition it was working on: 8 partitions, 2 consumer kills); each expires by itself.
  const staging = await bq.emulator.query(
    `SELECT table_name FROM information_schema.tables WHERE table_schema = '${dataset}' AND table_name LIKE '_pg_replicate_stage_%'`,
  );
  t.true(staging.length <= 2 * 8, `staging tables are dropped after use (${staging.length} left by killed consumers)`);
  for (const [table] of staging) t.true((bq.emulator.expirations.get(`${dataset}.${table}`) ?? Infinity) < Date.now() + 25 * 3600_000, `${table} expires`);
});

test('consumers with --concurrency 1 apply one batch at a time each, so two processes apply two at once, and the rows are exact', async (t) => {
  // Jobs answered 100 ms late: the batches of the 8 partitions overlap unless something holds them back.
  const emulator = await BigQueryEmulator.start({ jobDelayMs: 100 });
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'bqslots', ['warehouse']);
  const dataset = 'slots_test';
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'slots'));
  const producer = pipeline.producer();
  const consumer = () => pipeline.bigquery('warehouse', emulator.url, dataset, { CONSUMER_CONCURRENCY: '1', LOG_LEVEL: 'debug' });
  const consumers = [consumer()];
  try {
    await pipeline.waitForCopy(env.redis.client);
    await writeLoad(env.pg, 400, 0, 'slots');
    await pipeline.waitForCatchUp();
    t.is(emulator.mostJobsInFlight, 1, 'one process with --concurrency 1 has one job in flight at a time');
    consumers.push(consumer());
    await waitFor('the second process to start', async () => consumers[1].stderr.includes('"msg":"consumer running"'));
    emulator.mostJobsInFlight = 0;
    await writeLoad(env.pg, 1500, 0, 'slots');
    await pipeline.waitForCatchUp();
    t.true(
      consumers.every((process) => process.stderr.includes('"msg":"batch applied"')),
      'both processes applied batches',
    );
    t.is(emulator.mostJobsInFlight, 2, 'two processes with --concurrency 1 have two jobs in flight at most, and do reach two');
    for (const [table, columns] of LOAD_TABLES) {
      t.deepEqual(await emulator.tableRows(dataset, `slots__${table}`, columns), await postgresRows(env.pg, `slots.${table}`, columns), table);
    }
  } finally {
    await Promise.all([producer.stop(), ...consumers.map((process) => process.stop())]);
    await emulator.close();
  }
});
