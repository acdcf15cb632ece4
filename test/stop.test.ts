import test from 'ava';
import { useBigQueryEmulator } from './support/bigquery-emulator.js';
import { type CliProcess, LOAD_SCHEMA, LOAD_TABLES, postgresRows, TestPipeline, waitFor, writeLoad } from './support/pipeline.js';
import { startRedis, useServices } from './support/services.js';

/**
 * Every process stops within 10 s of SIGTERM or SIGINT, whatever it is waiting for: a Redis
 * that went away, a Postgres that is down, a destination that does not answer. Nothing is lost
 * by it: what was in flight is applied again by the next run.
 */
const env = useServices(test);
const bq = useBigQueryEmulator(test);

async function stopsWithin(process: CliProcess, signal: NodeJS.Signals, ms: number): Promise<number> {
  const started = Date.now();
  process.child.kill(signal);
  const timer = setTimeout(() => process.child.kill('SIGKILL'), 30_000);
  await process.exited;
  clearTimeout(timer);
  const took = Date.now() - started;
  if (took > ms) throw new Error(`took ${took} ms to stop on ${signal}: ${process.stderr.slice(-1500)}`);
  return took;
}

test.serial('consumers whose Redis went away stop within 10 s of SIGTERM or SIGINT', async (t) => {
  const redis = await startRedis();
  const pipeline = new TestPipeline(env.pg, redis.url, 'redisgone', ['main', 'printed']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'redisgone'));
  const producer = pipeline.producer();
  const duckdb = pipeline.duckdb('main');
  const stdout = pipeline.stdout('printed');
  try {
    await pipeline.waitForCopy(redis.client);
    await redis.stop();
    await waitFor('the consumers to notice', async () => /ECONNREFUSED|Connection is closed|reconnect/i.test(duckdb.stderr + stdout.stderr) || undefined, {
      stallMs: 5_000,
    }).catch(() => {});
    t.log(
      `duckdb: ${await stopsWithin(duckdb, 'SIGTERM', 10_000)} ms, stdout: ${await stopsWithin(stdout, 'SIGINT', 10_000)} ms, producer: ${await stopsWithin(producer, 'SIGTERM', 10_000)} ms`,
    );
  } finally {
    await Promise.all([producer.stop(), duckdb.stop(), stdout.stop()]);
  }
  t.pass();
});

test.serial('a producer waiting for a Postgres that is down stops within 10 s of SIGTERM', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'pgdown', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'pgdown'));
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    await env.pg.control!.shutdown();
    await waitFor('the producer to notice', async () => /lost Postgres|Postgres unavailable|reconnect/i.test(producer.stderr), { stallMs: 30_000 });
    t.log(`producer: ${await stopsWithin(producer, 'SIGTERM', 10_000)} ms`);
  } finally {
    await env.pg.control!.start();
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  t.pass();
});

test.serial(
  'a BigQuery consumer waiting on a request that never returns stops within 10 s of SIGTERM, and its next run applies the batch exactly once',
  async (t) => {
    const pipeline = new TestPipeline(env.pg, env.redis.url, 'bqhang', ['warehouse']);
    await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'bqhang'));
    const producer = pipeline.producer();
    let consumer = pipeline.bigquery('warehouse', bq.emulator.url, 'hang');
    try {
      await pipeline.waitForCopy(env.redis.client);
      bq.emulator.hold(true);
      const held = bq.emulator.heldRequests;
      await writeLoad(env.pg, 20, 0, 'bqhang');
      await waitFor('a request to be held', async () => bq.emulator.heldRequests > held);
      t.log(`consumer: ${await stopsWithin(consumer, 'SIGTERM', 10_000)} ms`);
      bq.emulator.hold(false);
      consumer = pipeline.bigquery('warehouse', bq.emulator.url, 'hang');
      await writeLoad(env.pg, 20, 0, 'bqhang');
      await pipeline.waitForCatchUp();
    } finally {
      bq.emulator.hold(false);
      await Promise.all([producer.stop(), consumer.stop()]);
    }
    for (const [table, columns] of LOAD_TABLES) {
      t.deepEqual(await bq.emulator.tableRows('hang', `bqhang__${table}`, columns), await postgresRows(env.pg, `bqhang.${table}`, columns), table);
    }
  },
);
