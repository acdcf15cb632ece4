import test from 'ava';
import { currentWalLsn, lsnNotAfter, slotConfirmed, TestPipeline, waitFor, waitForSlotAt } from './support/pipeline.js';
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
