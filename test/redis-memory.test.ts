import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { type CliProcess, duckdbRows, postgresRows, runCli, scrape, TestPipeline, waitFor } from './support/pipeline.js';
import { freePort, useServices } from './support/services.js';

const env = useServices(test);
const MB = 2 ** 20;

/** Redis' used_memory, sampled every 50 ms until stopped: its peak. */
function samplePeak(): { stop: () => Promise<number> } {
  let peak = 0;
  let running = true;
  const sampling = (async () => {
    while (running) {
      const info = await env.redis.client.info('memory').catch(() => '');
      peak = Math.max(peak, Number(/^used_memory:(\d+)/m.exec(info)?.[1] ?? 0));
      await sleep(50);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await sampling;
      return peak;
    },
  };
}

test.serial.afterEach.always(async () => {
  await env.redis.client.config('SET', 'maxmemory', '0');
});

test.serial(
  'a Redis whose maxmemory is below the backlog bound: the copy and the stream pause short of it while the destination is stopped, nothing is refused, and DuckDB equals Postgres',
  async (t) => {
    const maxmemory = 40 * MB;
    await env.redis.client.config('SET', 'maxmemory', String(maxmemory));
    const pipeline = new TestPipeline(env.pg, env.redis.url, 'smallredis', ['duck']);
    // About 60 MB of COPY text, and as much again of changes: each more than Redis may hold.
    await env.pg.query(`
      CREATE TABLE documents (id bigint PRIMARY KEY, body text);
      INSERT INTO documents SELECT g, repeat(md5(g::text), 7) FROM generate_series(1, 250000) g;
      CREATE PUBLICATION ${pipeline.publication} FOR TABLE documents;`);
    const peak = samplePeak();
    let most = 0;
    const port = await freePort();
    const producer = pipeline.producer(['--metrics-port', String(port)]);
    let consumer: CliProcess | undefined;
    try {
      // The destination is not running: the copy fills Redis up to short of its maxmemory and waits.
      await waitFor('the copy to pause near maxmemory', async () => producer.stderr.includes('Redis is near its maxmemory'));
      await sleep(3000);
      t.false(producer.stderr.includes('copy enqueued'), 'the copy waits for the destination');
      consumer = pipeline.duckdb('duck');
      await pipeline.waitForCopy(env.redis.client);
      await consumer.stop();
      await env.pg.query('UPDATE documents SET body = upper(body)');
      // Read until Redis is near its maxmemory, then paused.
      await waitFor('reading to pause near maxmemory', async () => (await scrape(port)).get('pg_replicate_slot_read_paused{reason="redis_memory"}') === 1);
      await sleep(2000);
      pipeline.assertRunning();
      consumer = pipeline.duckdb('duck');
      await pipeline.waitForCatchUp();
    } finally {
      await Promise.all([producer.stop(), consumer?.stop()]);
      most = await peak.stop();
    }
    t.true(most <= maxmemory, `Redis held at most ${(most / MB).toFixed(1)} MB (maxmemory 40 MB)`);
    for (const [name, log] of [
      ['producer', producer.stderr],
      ['consumer', consumer?.stderr ?? ''],
    ]) {
      t.false(log.includes('OOM'), `no write was refused by Redis (${name})`);
    }
    t.false(producer.stderr.includes('session ended'), 'the producer session never restarted');
    t.true(producer.stderr.includes('copy chunks are cut at 5 MB instead of 64 MB'), 'the producer said it cut chunks to fit');
    t.deepEqual(await duckdbRows(pipeline.duckdbPath('duck'), 'public.documents', ['id', 'body']), await postgresRows(env.pg, 'documents', ['id', 'body']));
  },
);

test.serial('a Redis whose maxmemory leaves too little room: the producer exits 2 saying how much it needs, before it creates a slot', async (t) => {
  await env.redis.client.config('SET', 'maxmemory', String(16 * MB));
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'tinyredis', ['duck']);
  await env.pg.query(`CREATE TABLE tiny (id int PRIMARY KEY); CREATE PUBLICATION ${pipeline.publication} FOR TABLE tiny;`);
  const { code, stderr } = await runCli(pipeline.producerArgs());
  t.is(code, 2, stderr);
  t.regex(stderr, /Redis' maxmemory is 16 MB and \d+ MB of it is in use: pg-replicate needs at least \d+ MB free there/);
  t.regex(stderr, /Raise maxmemory \(CONFIG SET maxmemory \d+mb/);
  t.false(stderr.includes('    at '), 'no stack trace');
  const slots = await env.pg.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = '${pipeline.slot}'`);
  t.is(slots.rows.length, 0, 'no slot was created');
});
