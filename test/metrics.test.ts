import { createServer } from 'node:net';
import test from 'ava';
import { parseLsn } from '../shared/lsn.js';
import { duckdbRows, postgresRows, runCli, scrape, slotConfirmed, TestPipeline, waitFor } from './support/pipeline.js';
import { freePort, useServices } from './support/services.js';

const env = useServices(test);

test('the producer and a consumer serve Prometheus metrics that agree with Postgres and DuckDB', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'metrics', ['main']);
  await env.pg.query(`
    CREATE TABLE items (id int PRIMARY KEY, name text);
    CREATE TABLE scratch (id int PRIMARY KEY);
    INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;
    INSERT INTO scratch SELECT generate_series(1, 10);
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE items, scratch;`);
  const [producerPort, consumerPort] = [await freePort(), await freePort()];
  const producer = pipeline.producer(['--metrics-port', String(producerPort)]);
  const main = pipeline.duckdb('main', { METRICS_PORT: String(consumerPort) });
  try {
    await pipeline.waitForCopy(env.redis.client);
    // 33 transactions: 300 inserts, 100 updates, 50 deletes, one truncate.
    for (let round = 0; round < 30; round++) {
      await env.pg.query(`INSERT INTO items SELECT g, 'new ' || g FROM generate_series(${2000 + round * 10}, ${2009 + round * 10}) g`);
    }
    await env.pg.query("UPDATE items SET name = name || '!' WHERE id <= 100");
    await env.pg.query('DELETE FROM items WHERE id > 950 AND id <= 1000');
    await env.pg.query('TRUNCATE scratch');

    // Once every destination has applied it all, the slot, the producer and the consumer agree.
    const settled = await waitFor('the metrics to show every change applied', async () => {
      const consumed = await scrape(consumerPort);
      if (consumed.get('pg_replicate_changes_applied_total{destination="main"}') !== 451) return undefined;
      const produced = await scrape(producerPort);
      const confirmed = await slotConfirmed(env.pg, pipeline.slot);
      const acknowledged = produced.get('pg_replicate_slot_acknowledged_lsn');
      return confirmed && acknowledged === Number(parseLsn(confirmed)) && produced.get('pg_replicate_transactions_in_flight') === 0
        ? { produced, consumed, confirmed }
        : undefined;
    });
    const { produced, consumed, confirmed } = settled;
    t.is(produced.get('pg_replicate_changes_total{operation="insert"}'), 300);
    t.is(produced.get('pg_replicate_changes_total{operation="update"}'), 100);
    t.is(produced.get('pg_replicate_changes_total{operation="delete"}'), 50);
    t.is(produced.get('pg_replicate_changes_total{operation="truncate"}'), 1);
    t.true(produced.get('pg_replicate_transactions_total')! >= 33, 'every transaction counted');
    t.is(produced.get('pg_replicate_copied_rows_total{table="public.items"}'), 1000);
    t.is(produced.get('pg_replicate_copied_rows_total{table="public.scratch"}'), 10);
    t.is(produced.get('pg_replicate_destination_applied_lsn{destination="main"}'), Number(parseLsn(confirmed)));
    t.is(produced.get('pg_replicate_slot_read_paused{reason="backlog"}'), 0);
    t.is(produced.get('pg_replicate_producer_restarts_total'), 0);
    t.true(produced.get('pg_replicate_batches_enqueued_total')! >= 4, 'the copy chunks and the change batches');
    t.true(produced.has('process_resident_memory_bytes'), "Node's process metrics are served too");

    t.is(consumed.get('pg_replicate_copy_rows_applied_total{destination="main"}'), 1010);
    t.is(consumed.get('pg_replicate_batch_failures_total{destination="main"}'), 0);
    t.is(consumed.get('pg_replicate_partitions_failing{destination="main",state="parked"}'), 0);
    t.is(consumed.get('pg_replicate_apply_duration_seconds_count{destination="main"}'), consumed.get('pg_replicate_batches_applied_total{destination="main"}'));
    const lagged = consumed.get('pg_replicate_replication_lag_seconds_count{destination="main"}')!;
    t.true(lagged >= 1, "the streamed batches' lag is observed");
    t.true(consumed.get('pg_replicate_replication_lag_seconds_sum{destination="main"}')! / lagged < 30, 'and is plausible');
    t.is((await fetch(`http://127.0.0.1:${consumerPort}/`)).status, 404);
  } finally {
    await Promise.all([producer.stop(), main.stop()]);
  }
  for (const [table, columns] of [
    ['items', ['id', 'name']],
    ['scratch', ['id']],
  ] as const) {
    t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), `public.${table}`, [...columns]), await postgresRows(env.pg, table, [...columns]), table);
  }
});

test('a metrics port that is taken or not a port is refused with exit code 2, before anything is written', async (t) => {
  const taken = createServer();
  await new Promise<void>((resolve) => taken.listen(0, resolve));
  const port = (taken.address() as { port: number }).port;
  try {
    const pipeline = new TestPipeline(env.pg, env.redis.url, 'metrics-port', ['main']);
    const consumer = await runCli([
      'consumer',
      'duckdb',
      '--name',
      'main',
      '--path',
      pipeline.duckdbPath('main'),
      '--pipeline',
      pipeline.pipeline,
      '--redis-url',
      env.redis.url,
      '--metrics-port',
      String(port),
    ]);
    t.is(consumer.code, 2);
    t.regex(consumer.stderr, new RegExp(`--metrics-port ${port} cannot be used \\(another process listens on it\\)`));
    await t.throwsAsync(
      import('node:fs/promises').then((fs) => fs.access(pipeline.duckdbPath('main'))),
      undefined,
      'no DuckDB file was created',
    );
    const producer = await runCli([
      'producer',
      '--pg-url',
      env.pg.url,
      '--publication',
      'nothing',
      '--slot',
      'unused',
      '--pipeline',
      pipeline.pipeline,
      '--redis-url',
      env.redis.url,
      '--metrics-port',
      'ninety',
    ]);
    t.is(producer.code, 2);
    t.regex(producer.stderr, /--metrics-port \(METRICS_PORT\) must be a TCP port number/);
  } finally {
    taken.close();
  }
});
