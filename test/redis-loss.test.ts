import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { duckdbRows, LOAD_SCHEMA, loadTablesIn, postgresRows, TestPipeline, waitFor, writeLoad } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

test.serial('FLUSHALL and a Redis restart mid-stream: the producer re-reads from the slot and DuckDB still equals Postgres', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'redisloss', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication));
  const { producer } = await pipeline.runWithDuckdb(env.redis.client, async ({ producer }) => {
    const load = writeLoad(env.pg, 1500, 2);
    await sleep(1000);
    await env.redis.client.flushall();
    await waitFor('the producer to notice', async () => producer.stderr.includes('Redis no longer holds this producer run'), { stallMs: 30_000 });
    await sleep(1000);
    await env.redis.restart();
    await load;
    await pipeline.waitForCatchUp();
  });
  const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'));
  t.deepEqual(duckdb, postgres);
  t.false(producer.stderr.includes('copying every table again'), 'the copy is not redone: the stream resumes from the slot');
  t.false(producer.stderr.includes('table sync'), 'no table is copied again');
});

test.serial(
  'Redis restarted from an older snapshot mid-stream (its newest writes lost, the run kept): the pipeline catches up and DuckDB equals Postgres',
  async (t) => {
    const pipeline = new TestPipeline(env.pg, env.redis.url, 'snapshot', ['main']);
    await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'snap'));
    const { producer } = await pipeline.runWithDuckdb(env.redis.client, async () => {
      const load = writeLoad(env.pg, 2000, 2, 'snap');
      await sleep(1000);
      await env.redis.snapshot();
      await sleep(1500);
      await env.redis.restart({ fromSnapshot: true });
      // Whether the producer sent batches after the snapshot depends on timing (it may have had
      // everything in Redis by then): the gap is found when it did (the runner tests and the
      // next test make a loss certain); either way the slot must catch up and nothing be lost.
      await load;
      await pipeline.waitForCatchUp();
    });
    const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'), 'snap');
    t.deepEqual(duckdb, postgres);
    t.false(producer.stderr.includes('copying every table again'), 'the copy was applied before the loss: it is not redone');
  },
);

test.serial('a table added to the publication whose copy Redis lost before it was applied is copied again, and DuckDB has its rows', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'lostsync', ['main']);
  await env.pg.query(`
    CREATE TABLE kept (id int PRIMARY KEY, v text);
    CREATE TABLE joined (id int PRIMARY KEY, v text);
    INSERT INTO joined SELECT g, 'before ' || g FROM generate_series(1, 5000) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE kept;`);
  const producer = pipeline.producer();
  let consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    // Nothing is applied from here on until the loss: the copy of the new table waits in Redis.
    await consumer.stop();
    await env.redis.snapshot();
    await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} ADD TABLE joined; INSERT INTO joined VALUES (0, 'after'); INSERT INTO kept VALUES (1, 'x');`);
    await waitFor("the new table's copy to be enqueued", async () => producer.stderr.includes('table sync: copy enqueued'));
    const seen = producer.stderr.length;
    await env.redis.restart({ fromSnapshot: true });
    // The consumer comes back with Redis, as it would in production. The producer finds the
    // loss (a queue empty behind its marks), or the consumer does (an add the producer had in
    // flight was resent to the restored Redis, so the queue holds a batch that names a missing
    // one), or a command of the producer's meets Redis mid-restart and ends its session: either
    // way the new session finds Redis' record of the pipeline without the table, and copies it again.
    consumer = pipeline.duckdb('main');
    await waitFor(
      'the loss to be found',
      async () => /Redis lost recent writes|producer session ended; restarting from the slot/.test(producer.stderr.slice(seen)),
      { stallMs: 90_000 },
    ).catch((error) => {
      // What the producer did meanwhile, for whoever finds this failing.
      throw new Error(`${(error as Error).message}; the producer's last lines:\n${producer.stderr.slice(-4000)}`);
    });
    await waitFor('the table to be copied again', async () => (producer.stderr.match(/table sync: copy enqueued/g)?.length ?? 0) >= 2);
    await pipeline.waitForCatchUp();
    await waitFor('the copy to be applied and forgotten', async () => (await env.redis.client.hlen(`pgr:{${pipeline.pipeline}}:table-syncs`)) === 0);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.joined', ['id', 'v']), await postgresRows(env.pg, 'joined', ['id', 'v']));
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.kept', ['id', 'v']), await postgresRows(env.pg, 'kept', ['id', 'v']));
});
