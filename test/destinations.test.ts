import { setTimeout as sleep } from 'node:timers/promises';
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

test('a consumer started against a running pipeline registers itself, gets its own copy and the stream; a removed destination stops holding the slot', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'destinations', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication));
  const producer = pipeline.producer();
  const main = pipeline.duckdb('main');
  let reporting: ReturnType<typeof pipeline.duckdb> | undefined;
  const cli = (...args: string[]) => runCli([...args, '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url]);
  try {
    await pipeline.waitForCopy(env.redis.client);
    const load = writeLoad(env.pg, 1500, 2);
    await sleep(800);
    reporting = pipeline.duckdb('reporting');
    await waitFor('the new destination to be registered', async () => (await cli('destinations', 'list')).stdout.includes('reporting'));
    await waitFor('its copy', async () => producer.stderr.includes('"reason":"new destination"') && producer.stderr.includes('table sync: copy enqueued'));
    await load;
    await pipeline.waitForCatchUp();
    const listed = await cli('destinations', 'list');
    t.regex(listed.stdout, /^main\tok\tapplied [0-9A-F]+\/[0-9A-F]+\t0 pending\t1 consumers$/m);
    t.regex(listed.stdout, /^reporting\tok\tapplied [0-9A-F]+\/[0-9A-F]+\t0 pending\t1 consumers$/m);

    // A stopped destination holds the slot back, while the other one goes on; removing it
    // lets the slot go on. The bound is the position of the first new change: up to it,
    // heartbeats (written whenever the stream is idle) and other WAL may still move the slot.
    await reporting.stop();
    const [, , first] = (await env.pg.query(
      "BEGIN; INSERT INTO events VALUES (-1, 'first'); SELECT pg_current_wal_insert_lsn() AS lsn; COMMIT;",
    )) as unknown as { rows: { lsn: string }[] }[];
    const beforeLoad = first.rows[0].lsn;
    await writeLoad(env.pg, 100, 0);
    const mainApplied = async () => /^main\tok\tapplied ([0-9A-F]+\/[0-9A-F]+)\t/m.exec((await cli('destinations', 'list')).stdout)?.[1];
    await waitFor('main to apply the new writes', async () => {
      const applied = await mainApplied();
      return applied !== undefined && !(await lsnAtMost(applied, beforeLoad));
    });
    await sleep(1500);
    t.true(await lsnAtMost((await slotConfirmed(env.pg, pipeline.slot))!, beforeLoad), 'the stopped destination holds the slot');
    const removed = await cli('destinations', 'remove', 'reporting');
    t.is(removed.code, 0, removed.stderr);
    t.regex(removed.stdout, /destination reporting removed/);
    await waitForSlotAt(env.pg, pipeline.slot, await currentWalLsn(env.pg));
    t.notRegex((await cli('destinations', 'list')).stdout, /reporting/);
    const missing = await cli('destinations', 'remove', 'reporting');
    t.is(missing.code, 2);
    t.regex(missing.stderr, /has no destination "reporting"/);
  } finally {
    await Promise.all([producer.stop(), main.stop(), reporting?.stop()]);
  }
  t.notRegex(producer.stderr, /session ended/, 'the producer ran without a failure');
  for (const name of ['main', 'reporting']) {
    const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath(name));
    if (name === 'main') t.deepEqual(duckdb, postgres, name);
    else t.true(duckdb.accounts.length === 200 && duckdb.ledger.length > 2000, 'the removed destination kept what it had');
  }
});
