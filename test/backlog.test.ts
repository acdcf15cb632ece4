import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { TestPipeline, duckdbRows, postgresRows, storedChunks, waitFor } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

test('a copy to a destination that is not running stops at the backlog bound, then completes when it starts (applying queued chunks together, and killed once)', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'backlog', ['late']);
  await env.pg.query(`
    CREATE TABLE wide (id bigint PRIMARY KEY, body text);
    INSERT INTO wide SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 60000) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE wide;`);
  // About 300 bytes a row: chunks of 1000 rows are about 300 kB, the bound 1 MB.
  const connections = 2;
  const bound = 1024 * 1024;
  const chunk = 1000 * 300;
  const producer = pipeline.producer(['--copy-chunk-rows', '1000', '--copy-range-blocks', '100', '--copy-connections', String(connections), '--max-backlog-bytes', String(bound)]);
  const stored = async () => {
    let bytes = 0;
    for (const key of await storedChunks(env.redis.client, pipeline.pipeline)) {
      if (key.includes(':chunk:')) for (const piece of await env.redis.client.lrangeBuffer(key, 0, -1)) bytes += piece.length;
    }
    return bytes;
  };
  let consumer;
  try {
    await waitFor('the copy to fill the backlog', async () => (await stored()) >= bound / 2);
    // Reading stops: over the next seconds the rows waiting in Redis stay at the bound (plus
    // the chunks being written, one per copy connection).
    let most = 0;
    for (let sample = 0; sample < 15; sample++) {
      most = Math.max(most, await stored());
      await sleep(200);
    }
    t.true(most <= bound + connections * chunk * 1.5, `at most ${most} bytes of rows waited in Redis (bound ${bound})`);
    t.false(producer.stderr.includes('copy enqueued'), 'the copy is paused, not finished');
    // The late destination finds batches queued: it applies each with those right behind it,
    // in one transaction. Killed after such an apply, it restarts to find them in the queue
    // still, already applied: they are skipped, nothing is lost or doubled.
    consumer = pipeline.duckdb('late', { LOG_LEVEL: 'debug' });
    await waitFor('a batch applied with those queued behind it', async () => /"joined":[1-9]/.test(consumer!.stderr));
    await consumer.kill9();
    consumer = pipeline.duckdb('late');
    await pipeline.waitForCopy(env.redis.client);
  } finally {
    await Promise.all([producer.stop(), consumer?.stop()]);
  }
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('late'), 'public.wide', ['id', 'body']), await postgresRows(env.pg, 'wide', ['id', 'body']));
});
