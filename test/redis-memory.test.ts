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

test.serial(
  'a Redis filled to its maxmemory by another application while batches wait: the consumer says so, no batch is failed or taken for lost, and once memory is freed the pipeline catches up',
  async (t) => {
    const pipeline = new TestPipeline(env.pg, env.redis.url, 'fullredis', ['duck']);
    await env.pg.query(`
      CREATE TABLE ledger (id int PRIMARY KEY, note text);
      INSERT INTO ledger SELECT g, 'copied' FROM generate_series(1, 1000) g;
      CREATE PUBLICATION ${pipeline.publication} FOR TABLE ledger;`);
    await env.redis.client.config('SET', 'maxmemory', String(64 * MB));
    const queued = async (state: 'wait' | 'failed') => {
      let count = 0;
      for (const key of await env.redis.client.keys(`pgr:{${pipeline.pipeline}.duck.*}:${state}`)) {
        count += state === 'wait' ? await env.redis.client.llen(key) : await env.redis.client.zcard(key);
      }
      return count;
    };
    const producer = pipeline.producer();
    let consumer = pipeline.duckdb('duck');
    const otherApp: string[] = [];
    try {
      await pipeline.waitForCopy(env.redis.client);
      await consumer.stop();
      await env.pg.query("UPDATE ledger SET note = 'updated'; INSERT INTO ledger SELECT g, 'new' FROM generate_series(1001, 3000) g");
      await waitFor('the changes to wait in their queue', async () => (await queued('wait')) > 0);
      const value = 'x'.repeat(256 * 1024);
      for (;;) {
        const key = `other-app:${otherApp.length}`;
        const refused = await env.redis.client.set(key, value).then(
          () => false,
          () => true,
        );
        if (refused) break;
        otherApp.push(key);
      }
      // Held past its maxmemory, as Redis' own memory comes and goes by a little: every write is refused.
      const used = Number(/^used_memory:(\d+)/m.exec(await env.redis.client.info('memory'))?.[1]);
      await env.redis.client.config('SET', 'maxmemory', String(used - 4 * MB));
      consumer = pipeline.duckdb('duck');
      // It waits, saying so: it had ended with "EXECABORT Transaction discarded because of previous errors".
      await waitFor('the consumer to say that Redis refuses its writes', async () => {
        pipeline.assertRunning();
        return consumer.stderr.includes("Redis refuses this consumer's writes at its maxmemory");
      });
      // Longer than the producer takes to look for queues that lost their batches.
      await sleep(7000);
      pipeline.assertRunning();
      t.is(await queued('failed'), 0, 'no batch was failed');
      t.false(producer.stderr.includes('Redis lost recent writes'), 'the producer did not take the refusal for lost writes');
      for (let at = 0; at < otherApp.length; at += 100) await env.redis.client.del(...otherApp.slice(at, at + 100));
      otherApp.length = 0;
      await pipeline.waitForCatchUp();
    } finally {
      for (let at = 0; at < otherApp.length; at += 100) await env.redis.client.del(...otherApp.slice(at, at + 100));
      await Promise.all([producer.stop(), consumer.stop()]);
    }
    t.deepEqual(await duckdbRows(pipeline.duckdbPath('duck'), 'public.ledger', ['id', 'note']), await postgresRows(env.pg, 'ledger', ['id', 'note']));
  },
);
