import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { duckdbRows, LOAD_SCHEMA, loadTablesIn, postgresRows, TestPipeline, waitFor, writeLoad } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

test('a table added to the publication while running is copied consistently (in ranges, in parallel), then streamed', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'addtable', ['main']);
  await env.pg.query(
    `${LOAD_SCHEMA(pipeline.publication)}; CREATE TABLE late (id int PRIMARY KEY, v text); INSERT INTO late SELECT g, 'v' || g FROM generate_series(1, 5000) g;`,
  );
  // Small ranges: the new table's copy is cut into several, copied over two connections.
  const producer = pipeline.producer(['--copy-range-blocks', '4', '--copy-chunk-rows', '500']);
  const consumer = pipeline.duckdb('main');
  let writing = true;
  const lateWrites = (async () => {
    for (let round = 1; writing; round++) {
      await env.pg.query(
        `UPDATE late SET v = 'u${round}' WHERE id = ${1 + (round % 5000)}; INSERT INTO late VALUES (${5000 + round}, 'new'); DELETE FROM late WHERE id = ${round * 7}`,
      );
    }
  })();
  try {
    await pipeline.waitForCopy(env.redis.client);
    const load = writeLoad(env.pg, 800, 2);
    await sleep(300);
    await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} ADD TABLE late`);
    await waitFor('the new table to be copied', async () => producer.stderr.includes('table sync: copy enqueued'));
    await sleep(500);
    writing = false;
    await Promise.all([load, lateWrites]);
    await pipeline.waitForCatchUp();
  } finally {
    writing = false;
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  t.notRegex(producer.stderr, /session ended/, 'the producer ran without a failure');
  t.true(Number(/"ranges":(\d+)[^\n]*"msg":"table sync: copying"/.exec(producer.stderr)?.[1]) > 1, 'the table sync copied several ranges');
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.late', ['id', 'v']), await postgresRows(env.pg, 'late', ['id', 'v']));
  const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'));
  t.deepEqual(duckdb, postgres);
});
