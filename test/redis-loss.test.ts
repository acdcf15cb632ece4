import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { LOAD_SCHEMA, LOAD_TABLES, TestPipeline, duckdbRows, postgresRows, waitFor, writeLoad } from './support/pipeline.js';
import { type PostgresServer, type RedisServer, startPostgres, startRedis } from './support/services.js';

let pg: PostgresServer;
let redis: RedisServer;

test.before(async () => {
  [pg, redis] = await Promise.all([startPostgres(), startRedis()]);
});
test.after.always(async () => {
  await Promise.all([pg?.stop(), redis?.stop()]);
});

test('FLUSHALL and a Redis restart mid-stream: the producer re-reads from the slot and DuckDB still equals Postgres', async (t) => {
  const pipeline = new TestPipeline(pg, redis.url, 'redisloss', ['main']);
  await pg.query(LOAD_SCHEMA(pipeline.publication));
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(redis.client);
    const load = writeLoad(pg, 1500, 2);
    await sleep(1000);
    await redis.client.flushall();
    await waitFor('the producer to notice', async () => producer.stderr.includes('Redis no longer holds this producer run'), 30_000);
    await sleep(1000);
    await redis.restart();
    await load;
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  for (const [table, columns] of LOAD_TABLES) {
    t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), `public.${table}`, columns), await postgresRows(pg, table, columns), table);
  }
  t.false(producer.stderr.includes('copying every table again'), 'the copy is not redone: the stream resumes from the slot');
});
