import test from 'ava';
import { LOAD_SCHEMA, LOAD_TABLES, TestPipeline, currentWalLsn, duckdbRows, postgresRows, runCli, slotConfirmed, waitFor, waitForSlotAt, writeLoad } from './support/pipeline.js';
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

test('with two destinations and one stopped, the slot never passes what the stopped one applied; then it catches up', async (t) => {
  const pipeline = new TestPipeline(pg, redis.url, 'minlsn', ['fast', 'slow']);
  await pg.query(LOAD_SCHEMA(pipeline.publication));
  const producer = pipeline.producer();
  const fast = pipeline.duckdb('fast');
  let slow = pipeline.duckdb('slow');
  try {
    await pipeline.waitForCopy(redis.client);
    await pipeline.waitForCatchUp();
    await slow.stop();
    const stoppedAt = await slotConfirmed(pg, pipeline.slot);
    await writeLoad(pg, 300, 0);
    const end = await currentWalLsn(pg);
    // The fast destination has everything once its queues are empty; the slow one has nothing new.
    const status = await waitFor('the fast destination to drain', async () => {
      const result = await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', redis.url, '--pg-url', pg.url, '--json']);
      const parsed = JSON.parse(result.stdout);
      const byName = Object.fromEntries(parsed.destinations.map((destination: { name: string }) => [destination.name, destination]));
      const fastApplied = byName.fast.pendingBatches === 0 && byName.fast.appliedLsn && !(await lsnAtMost(byName.fast.appliedLsn, stoppedAt!));
      return fastApplied && byName.slow.pendingBatches > 0 ? parsed : undefined;
    });
    t.true(await lsnAtMost(status.slotConfirmedFlushLsn, stoppedAt!), `slot at ${status.slotConfirmedFlushLsn}, slow destination stopped at ${stoppedAt}`);
    const applied = Object.fromEntries(status.destinations.map((destination: { name: string; appliedLsn: string }) => [destination.name, destination.appliedLsn]));
    t.true(await lsnAtMost(applied.slow, stoppedAt!), 'status shows the stopped destination where it stopped');
    t.true(await lsnAtMost((await slotConfirmed(pg, pipeline.slot))!, stoppedAt!));
    slow = pipeline.duckdb('slow');
    await waitForSlotAt(pg, pipeline.slot, end);
  } finally {
    await Promise.all([producer.stop(), fast.stop(), slow.stop()]);
  }
  for (const name of ['fast', 'slow']) {
    for (const [table, columns] of LOAD_TABLES) {
      t.deepEqual(await duckdbRows(pipeline.duckdbPath(name), `public.${table}`, columns), await postgresRows(pg, table, columns), `${name} ${table}`);
    }
  }
});
