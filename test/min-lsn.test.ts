import test from 'ava';
import {
  currentWalLsn,
  LOAD_SCHEMA,
  loadTablesIn,
  lsnNotAfter,
  runCli,
  slotConfirmed,
  TestPipeline,
  waitFor,
  waitForSlotAt,
  writeLoad,
} from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

const lsnAtMost = (a: string, b: string) => lsnNotAfter(env.pg, a, b);

test('with two destinations and one stopped, the slot never passes what the stopped one applied; then it catches up', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'minlsn', ['fast', 'slow']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication));
  const producer = pipeline.producer();
  const fast = pipeline.duckdb('fast');
  let slow = pipeline.duckdb('slow');
  try {
    await pipeline.waitForCopy(env.redis.client);
    await pipeline.waitForCatchUp();
    await slow.stop();
    // Nothing the slow destination applied lies beyond the WAL's end when it stopped; the slot
    // may still move up to there (trailing acknowledgements, heartbeats), never past it.
    const stoppedAt = await currentWalLsn(env.pg);
    await writeLoad(env.pg, 300, 0);
    const end = await currentWalLsn(env.pg);
    // The fast destination has everything once its queues are empty; the slow one has nothing new.
    const status = await waitFor('the fast destination to drain', async () => {
      const result = await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url, '--pg-url', env.pg.url, '--json']);
      const parsed = JSON.parse(result.stdout);
      const byName = Object.fromEntries(parsed.destinations.map((destination: { name: string }) => [destination.name, destination]));
      const fastApplied = byName.fast.pendingBatches === 0 && byName.fast.appliedLsn && !(await lsnAtMost(byName.fast.appliedLsn, stoppedAt));
      return fastApplied && byName.slow.pendingBatches > 0 ? parsed : undefined;
    });
    t.true(await lsnAtMost(status.slotConfirmedFlushLsn, stoppedAt), `slot at ${status.slotConfirmedFlushLsn}, slow destination stopped at ${stoppedAt}`);
    const applied = Object.fromEntries(
      status.destinations.map((destination: { name: string; appliedLsn: string }) => [destination.name, destination.appliedLsn]),
    );
    t.true(await lsnAtMost(applied.slow, stoppedAt), 'status shows the stopped destination where it stopped');
    t.true(await lsnAtMost((await slotConfirmed(env.pg, pipeline.slot))!, stoppedAt));
    slow = pipeline.duckdb('slow');
    await waitForSlotAt(env.pg, pipeline.slot, end);
  } finally {
    await Promise.all([producer.stop(), fast.stop(), slow.stop()]);
  }
  for (const name of ['fast', 'slow']) {
    const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath(name));
    t.deepEqual(duckdb, postgres, name);
  }
});
