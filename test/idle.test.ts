import { statSync } from 'node:fs';
import test from 'ava';
import { IDLE_CHECKPOINT_WAL_BYTES } from '../consumers/duckdb/idle.js';
import { currentWalLsn, duckdbRows, lsnNotAfter, postgresRows, slotConfirmed, TestPipeline, waitFor, waitForSlotAt } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

const lsnAtMost = (a: string, b: string) => lsnNotAfter(env.pg, a, b);

test('on an idle publication (changes only to other tables) the slot keeps advancing', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'idle', ['main']);
  await env.pg.query(
    `CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id serial PRIMARY KEY, payload text); CREATE PUBLICATION ${pipeline.publication} FOR TABLE quiet;`,
  );
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    const before = (await slotConfirmed(env.pg, pipeline.slot))!;
    for (let i = 0; i < 50; i++) await env.pg.query("INSERT INTO busy (payload) SELECT repeat('x', 1000) FROM generate_series(1, 100)");
    const target = await currentWalLsn(env.pg);
    t.false(await lsnAtMost(target, before));
    await waitForSlotAt(env.pg, pipeline.slot, target, { stallMs: 60_000 });
    t.pass();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
});

test('on a database with no writes at all, the heartbeat keeps the slot moving', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'heartbeat', ['main']);
  await env.pg.query(`CREATE TABLE silent (id int PRIMARY KEY); CREATE PUBLICATION ${pipeline.publication} FOR TABLE silent;`);
  const producer = pipeline.producer(['--heartbeat-interval-ms', '300']);
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    await pipeline.waitForCatchUp();
    const idleAt = await currentWalLsn(env.pg);
    // Nobody writes: only the producer's heartbeat can move the WAL, and the slot with it.
    await waitForSlotAt(env.pg, pipeline.slot, idleAt);
    const moved = await waitFor(
      'the slot to pass the idle position',
      async () => {
        const confirmed = await slotConfirmed(env.pg, pipeline.slot);
        return confirmed && !(await lsnAtMost(confirmed, idleAt)) ? confirmed : undefined;
      },
      { stallMs: 30_000 },
    );
    t.truthy(moved);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
});

test('a DuckDB consumer that goes idle writes its WAL into the file, so the next burst does not pay for this one', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'idlewal', ['main']);
  await env.pg.query(`CREATE TABLE burst (id bigint PRIMARY KEY, note text); CREATE PUBLICATION ${pipeline.publication} FOR TABLE burst;`);
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  const wal = `${pipeline.duckdbPath('main')}.wal`;
  const walBytes = () => {
    try {
      return statSync(wal).size;
    } catch {
      return 0;
    }
  };
  let largest = 0;
  const watch = setInterval(() => (largest = Math.max(largest, walBytes())), 20);
  try {
    await pipeline.waitForCopy(env.redis.client);
    // Enough for a WAL worth a checkpoint, short of DuckDB's own threshold (16 MB), at which it
    // would checkpoint by itself.
    await env.pg.query("INSERT INTO burst SELECT g, 'note ' || g FROM generate_series(1, 300000) g");
    await pipeline.waitForCatchUp();
    t.true(largest >= IDLE_CHECKPOINT_WAL_BYTES && largest < 16 * 2 ** 20, `the burst left ${largest} bytes of WAL`);
    // Idle now, and still running: the WAL goes into the file.
    await waitFor('the idle consumer to checkpoint', async () => walBytes() < IDLE_CHECKPOINT_WAL_BYTES || undefined, { stallMs: 15_000 });
    t.is(consumer.child.exitCode, null);
  } finally {
    clearInterval(watch);
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.burst', ['id', 'note']), await postgresRows(env.pg, 'burst', ['id', 'note']));
});
