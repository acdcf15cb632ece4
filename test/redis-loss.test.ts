import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { LOAD_SCHEMA, TestPipeline, loadTablesIn, waitFor, writeLoad } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

test('FLUSHALL and a Redis restart mid-stream: the producer re-reads from the slot and DuckDB still equals Postgres', async (t) => {
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
