import test from 'ava';
import { TestPipeline, currentWalLsn, slotConfirmed, waitFor, waitForSlotAt } from './support/pipeline.js';
import { type PostgresServer, type RedisServer, startPostgres, startRedis } from './support/services.js';

let pg: PostgresServer;
let redis: RedisServer;

test.before(async () => {
  [pg, redis] = await Promise.all([startPostgres(), startRedis()]);
});
test.after.always(async () => {
  await Promise.all([pg?.stop(), redis?.stop()]);
});

const lsnAtMost = async (a: string, b: string) => (await pg.query('SELECT $1::pg_lsn <= $2::pg_lsn AS ok', [a, b])).rows[0].ok as boolean;

test('on an idle publication (changes only to other tables) the slot keeps advancing', async (t) => {
  const pipeline = new TestPipeline(pg, redis.url, 'idle', ['main']);
  await pg.query(`CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id serial PRIMARY KEY, payload text); CREATE PUBLICATION ${pipeline.publication} FOR TABLE quiet;`);
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(redis.client);
    const before = (await slotConfirmed(pg, pipeline.slot))!;
    for (let i = 0; i < 50; i++) await pg.query("INSERT INTO busy (payload) SELECT repeat('x', 1000) FROM generate_series(1, 100)");
    const target = await currentWalLsn(pg);
    t.false(await lsnAtMost(target, before));
    await waitForSlotAt(pg, pipeline.slot, target, 60_000);
    t.pass();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
});

test('on a database with no writes at all, the heartbeat keeps the slot moving', async (t) => {
  const pipeline = new TestPipeline(pg, redis.url, 'heartbeat', ['main']);
  await pg.query(`CREATE TABLE silent (id int PRIMARY KEY); CREATE PUBLICATION ${pipeline.publication} FOR TABLE silent;`);
  const producer = pipeline.producer(['--heartbeat-interval-ms', '300']);
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(redis.client);
    await pipeline.waitForCatchUp();
    const idleAt = await currentWalLsn(pg);
    // Nobody writes: only the producer's heartbeat can move the WAL, and the slot with it.
    await waitForSlotAt(pg, pipeline.slot, idleAt);
    const moved = await waitFor('the slot to pass the idle position', async () => {
      const confirmed = await slotConfirmed(pg, pipeline.slot);
      return confirmed && !(await lsnAtMost(confirmed, idleAt)) ? confirmed : undefined;
    }, 5_000);
    t.truthy(moved);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
});
