import { setTimeout as sleep } from 'node:timers/promises';
import test, { type ExecutionContext } from 'ava';
import { type CliProcess, duckdbRows, LOAD_SCHEMA, loadTablesIn, postgresRows, scrape, storedChunks, TestPipeline, waitFor } from './support/pipeline.js';
import { freePort, useServices } from './support/services.js';

const env = useServices(test);

/**
 * A copy to a destination that is not running, of a table of about 300 bytes a row, under a
 * backlog bound of 1 MB: chunks of `chunkRows` rows, ranges of `rangeBlocks` heap blocks.
 */
const copyStopsAtTheBound = (chunkRows: number, rangeBlocks: number) => async (t: ExecutionContext) => {
  const table = `wide_${chunkRows}`;
  const pipeline = new TestPipeline(env.pg, env.redis.url, `backlog${chunkRows}`, ['late']);
  await env.pg.query(`
    CREATE TABLE ${table} (id bigint PRIMARY KEY, body text);
    INSERT INTO ${table} SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 60000) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${table};`);
  const connections = 2;
  const bound = 1024 * 1024;
  // A chunk ends at its rows or at the end of its range, whichever comes first.
  const chunk = Math.min(chunkRows * 300, rangeBlocks * 8192);
  const producer = pipeline.producer([
    '--copy-chunk-rows',
    String(chunkRows),
    '--copy-range-blocks',
    String(rangeBlocks),
    '--copy-connections',
    String(connections),
    '--max-backlog-bytes',
    String(bound),
  ]);
  const stored = async () => {
    let bytes = 0;
    for (const key of await storedChunks(env.redis.client, pipeline.pipeline)) {
      if (key.includes(':chunk:')) for (const piece of await env.redis.client.lrangeBuffer(key, 0, -1)) bytes += piece.length;
    }
    return bytes;
  };
  let consumer: CliProcess | undefined;
  try {
    await waitFor('the copy to fill the backlog', async () => (await stored()) >= bound / 2);
    // Reading stops: over the next seconds the rows waiting in Redis stay at the bound (plus
    // the chunks being written, one per copy connection).
    let most = 0;
    for (let sample = 0; sample < 15; sample++) {
      most = Math.max(most, await stored());
      await sleep(200);
    }
    t.true(most <= bound + connections * chunk * 1.5, `at most ${most} bytes of rows waited in Redis (bound ${bound})`);
    t.false(producer.stderr.includes('copy enqueued'), 'the copy is paused, not finished');
    // The late destination finds batches queued: it applies each with those right behind it,
    // in one transaction. Killed after such an apply, it restarts to find them in the queue
    // still, already applied: they are skipped, nothing is lost or doubled.
    consumer = pipeline.duckdb('late', { LOG_LEVEL: 'debug' });
    await waitFor('a batch applied with those queued behind it', async () => /"joined":[1-9]/.test(consumer!.stderr));
    await consumer.kill9();
    consumer = pipeline.duckdb('late');
    await pipeline.waitForCopy(env.redis.client);
  } finally {
    await Promise.all([producer.stop(), consumer?.stop()]);
  }
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('late'), `public.${table}`, ['id', 'body']), await postgresRows(env.pg, table, ['id', 'body']));
};

test(
  'a copy to a destination that is not running stops at the backlog bound, then completes when it starts (applying queued chunks together, and killed once)',
  copyStopsAtTheBound(1000, 100),
);

test('a copy whose ranges end before a chunk fills (wide rows) stops at the backlog bound too', copyStopsAtTheBound(100_000, 20));

test('transactions waiting for a destination that is not running are bounded: reading pauses at --max-pending-transactions, the running destination waits, and both catch up when it starts', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'pending', ['printed', 'late']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'pending'));
  const port = await freePort();
  // Batches of up to 100 000 changes and a backlog of 100 000 batches: only the bound on
  // transactions can pause reading here.
  const producer = pipeline.producer([
    '--max-pending-transactions',
    '500',
    '--max-batch-changes',
    '100000',
    '--max-backlog-batches',
    '100000',
    '--metrics-port',
    String(port),
  ]);
  const printed = pipeline.stdout('printed');
  let late = pipeline.duckdb('late');
  const streamed = () =>
    printed.stdout.split('\n').filter((line) => line.includes('"table":"pending.events","op":"insert"') && !line.includes('"backfill"')).length;
  try {
    await pipeline.waitForCopy(env.redis.client);
    await late.stop();
    for (let round = 1; round <= 2000; round++) await env.pg.query(`INSERT INTO pending.events VALUES (${round}, 'e${round}')`);
    await waitFor('reading to pause for the backlog', async () => (await scrape(port)).get('pg_replicate_slot_read_paused{reason="backlog"}') === 1);
    // While paused, the running destination gets no further than the bound (plus the
    // transactions of the batch open when it was crossed).
    await sleep(2000);
    const seen = streamed();
    t.true(seen < 2000, `the running destination has ${seen} of the 2000 rows while reading is paused`);
    t.is((await scrape(port)).get('pg_replicate_slot_read_paused{reason="backlog"}'), 1, 'still paused');
    late = pipeline.duckdb('late');
    await pipeline.waitForCatchUp();
    await waitFor('every row printed', async () => streamed() === 2000);
  } finally {
    await Promise.all([producer.stop(), printed.stop(), late.stop()]);
  }
  const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('late'), 'pending');
  t.deepEqual(duckdb, postgres);
});
