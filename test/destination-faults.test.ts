import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import test from 'ava';
import { duckdbRows, LOAD_SCHEMA, loadTablesIn, postgresRows, runCli, TestPipeline, waitFor, writeLoad } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

test('a DuckDB file that cannot grow (disk full) fails its checkpoint; the consumer waits without losing its place and, once the file can grow, catches up exactly', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'diskfull', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication));
  await env.pg.query('CREATE TABLE bulky (id int PRIMARY KEY, body text)');
  await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} ADD TABLE bulky`);
  // Small batches and checkpoints every megabyte of WAL: the database file, not the WAL or a
  // batch's staging file, is what cannot grow.
  const producer = pipeline.producer(['--max-batch-changes', '100']);
  const settings = ['--setting', 'checkpoint_threshold=1MB'];
  let consumer = pipeline.duckdb('main', {}, [], settings);
  const status = async () => (await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout;
  try {
    await pipeline.waitForCopy(env.redis.client);
    await pipeline.waitForCatchUp();
    await consumer.stop();
    // No file it writes may grow past 4 MB beyond the database's size now (EFBIG, as on a full
    // disk); a soft limit, so that it can be lifted while the process runs.
    const limit = statSync(pipeline.duckdbPath('main')).size + 4 * 1024 * 1024;
    consumer = pipeline.duckdb('main', {}, ['prlimit', `--fsize=${limit}:unlimited`, '--'], settings);
    // About 10 MB of rows that compress badly, in transactions of 100 kB.
    for (let part = 0; part < 100; part++) {
      await env.pg.query(
        `INSERT INTO bulky SELECT g, (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 32) i) FROM generate_series(${part * 100 + 1}, ${part * 100 + 100}) g`,
      );
    }
    await writeLoad(env.pg, 100, 0);
    await waitFor('the destination to report the failed checkpoint', async () =>
      /destination main: (retrying|parked).*Failed to create checkpoint/s.test(await status()),
    );
    execFileSync('prlimit', ['--pid', String(consumer.child.pid), '--fsize=unlimited:unlimited']);
    await writeLoad(env.pg, 50, 0);
    await pipeline.waitForCatchUp();
    t.regex(await status(), /destination main: ok/);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'));
  t.deepEqual(duckdb, postgres);
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.bulky', ['id', 'md5(body)']), await postgresRows(env.pg, 'bulky', ['id', 'md5(body)']));
});
