import { setTimeout as sleep } from 'node:timers/promises';
import test, { type ExecutionContext } from 'ava';
import { type CliProcess, duckdbRows, postgresRows, runCli, storedChunks, TestPipeline, waitFor } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

/** Copies beside the stream in progress, per table, from the producer's record in Redis. */
async function syncsInProgress(pipeline: string): Promise<Record<string, { done: number; total: number; destinations?: string[] }>> {
  const raw = await env.redis.client.hgetall(`pgr:{${pipeline}}:table-syncs`);
  const records = Object.values(raw).map((text) => JSON.parse(text));
  return Object.fromEntries(
    records
      .filter((record) => record.progress)
      .map((record) => [record.progress.name, { done: record.progress.done.length, total: record.progress.ranges, destinations: record.destinations }]),
  );
}

/** Asks for a resync of `table` and waits until at least three of its ranges are in the queues. */
async function resyncPartWay(t: ExecutionContext, pipeline: TestPipeline, table: string): Promise<void> {
  const requested = await pipeline.resync(`public.${table}`);
  t.is(requested.code, 0, requested.stderr);
  await waitFor('the resync to be part-way', async () => (await syncsInProgress(pipeline.pipeline))[table]?.done >= 3, {
    progress: () => progressOf(pipeline),
  });
}

/** What moves while a copy beside the stream goes on: its ranges, and the destinations' applied positions. */
async function progressOf(pipeline: TestPipeline): Promise<unknown> {
  return [await syncsInProgress(pipeline.pipeline), await env.redis.client.hgetall(`pgr:{${pipeline.pipeline}}:state`)];
}

/** Waits until no copy beside the stream is left and the running producer has enqueued one. */
async function syncsFinished(what: string, pipeline: TestPipeline, producer: CliProcess): Promise<void> {
  await waitFor(
    what,
    async () => (await env.redis.client.hlen(`pgr:{${pipeline.pipeline}}:table-syncs`)) === 0 && producer.stderr.includes('table sync: copy enqueued'),
    {
      progress: () => progressOf(pipeline),
    },
  );
}

/** Small transactions on both tables (named `big` and `bag` after `prefix`) until stopped. */
function writeLoad(prefix: string): { stop: () => Promise<void> } {
  let writing = true;
  const load = (async () => {
    for (let round = 1; writing; round++) {
      await env.pg.query(`BEGIN;
        UPDATE ${prefix}big SET n = n + 1, payload = 'r${round}' WHERE id = ${1 + ((round * 7919) % 200000)};
        DELETE FROM ${prefix}big WHERE id = ${1 + ((round * 104729) % 200000)};
        INSERT INTO ${prefix}big VALUES (${200000 + round}, 'new', ${round});
        INSERT INTO ${prefix}bag VALUES ('new', ${round % 7});
        COMMIT;`);
      await sleep(5);
    }
  })();
  return {
    stop: async () => {
      writing = false;
      await load;
    },
  };
}

/** A keyed table of 200 000 rows and a keyless one, named `big` and `bag` after `prefix` (the tests share a database). */
const SCHEMA = (publication: string, prefix: string) => `
  CREATE TABLE ${prefix}big (id bigint PRIMARY KEY, payload text, n int);
  INSERT INTO ${prefix}big SELECT g, md5(g::text) || md5((g * 7)::text), 0 FROM generate_series(1, 200000) g;
  CREATE TABLE ${prefix}bag (label text, n int);
  ALTER TABLE ${prefix}bag REPLICA IDENTITY FULL;
  INSERT INTO ${prefix}bag SELECT 'l' || (g % 50), g % 7 FROM generate_series(1, 20000) g;
  CREATE PUBLICATION ${publication} FOR TABLE ${prefix}big, ${prefix}bag;`;

/** Copies slowed to the consumers' pace, in many small ranges: a kill lands mid-copy. */
const SLOW_COPY = ['--copy-range-blocks', '40', '--copy-connections', '2', '--copy-chunk-rows', '2000', '--max-backlog-batches', '6'];

async function assertEqual(t: { deepEqual: (a: unknown, b: unknown, message?: string) => void }, pipeline: TestPipeline, name: string, prefix: string) {
  for (const [table, columns] of [
    [`${prefix}big`, ['id', 'payload', 'n']],
    [`${prefix}bag`, ['label', 'n']],
  ] as const) {
    t.deepEqual(
      await duckdbRows(pipeline.duckdbPath(name), `public.${table}`, [...columns]),
      await postgresRows(env.pg, table, [...columns]),
      `${name}: ${table}`,
    );
  }
}

test('a resync interrupted by kill -9 of the producer is continued after the restart, not forgotten half-applied', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'syncresume', ['main']);
  await env.pg.query(SCHEMA(pipeline.publication, 'r_'));
  let producer: CliProcess = pipeline.producer(SLOW_COPY);
  const main = pipeline.duckdb('main');
  let load: { stop: () => Promise<void> } | undefined;
  let killedAt: { done: number; total: number } | undefined;
  try {
    await pipeline.waitForCopy(env.redis.client);
    load = writeLoad('r_');
    // Killed once the resync's first chunks have replaced the table in DuckDB and more ranges are done.
    await resyncPartWay(t, pipeline, 'r_big');
    await producer.kill9();
    const recorded = (await syncsInProgress(pipeline.pipeline)).r_big;
    t.true(recorded.done < recorded.total, `killed mid-copy (${recorded.done}/${recorded.total} ranges)`);
    killedAt = recorded;
    const status = await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url]);
    t.regex(status.stdout, new RegExp(`table sync public\\.r_big \\(resync requested, for every destination\\): ${recorded.done}/${recorded.total} ranges`));
    producer = pipeline.producer(SLOW_COPY);
    await syncsFinished('the resync to finish', pipeline, producer);
    await load.stop();
    await pipeline.waitForCatchUp();
    t.deepEqual(await storedChunks(env.redis.client, pipeline.pipeline), [], 'every chunk applied and released');
  } finally {
    await load?.stop().catch(() => {});
    await Promise.all([producer.stop(), main.stop()]);
  }
  t.regex(producer.stderr, /table sync: continuing the copies a restart interrupted/);
  const resumed = /"ranges":(\d+),"resumed":true,"msg":"table sync: copying"/.exec(producer.stderr);
  t.truthy(resumed, 'the restarted producer continued the copy');
  t.true(
    Number(resumed![1]) <= killedAt!.total - killedAt!.done,
    `it copied only the ranges left (${resumed![1]} of ${killedAt!.total}, ${killedAt!.done} done)`,
  );
  await assertEqual(t, pipeline, 'main', 'r_');
});

test("a new destination's copy interrupted by kill -9 of the producer is continued for it alone (a keyless table anew), and it ends equal to Postgres", async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'syncnewdest', ['main']);
  await env.pg.query(SCHEMA(pipeline.publication, 'd_'));
  let producer: CliProcess = pipeline.producer(SLOW_COPY);
  const main = pipeline.duckdb('main');
  let late: CliProcess | undefined;
  let load: { stop: () => Promise<void> } | undefined;
  try {
    await pipeline.waitForCopy(env.redis.client);
    load = writeLoad('d_');
    late = pipeline.duckdb('late');
    const recorded = await waitFor(
      "the new destination's copy to be part-way",
      async () => {
        const syncs = await syncsInProgress(pipeline.pipeline);
        return syncs.d_big?.done >= 3 && syncs.d_big.done < syncs.d_big.total ? syncs : undefined;
      },
      { progress: () => progressOf(pipeline) },
    );
    await producer.kill9();
    t.deepEqual(recorded.d_big.destinations, ['late'], 'the copy is for the new destination only');
    producer = pipeline.producer(SLOW_COPY);
    await syncsFinished('its copy to finish', pipeline, producer);
    await load.stop();
    await pipeline.waitForCatchUp();
    t.regex((await runCli(['destinations', 'list', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout, /^late\tok\t/m);
  } finally {
    await load?.stop().catch(() => {});
    await Promise.all([producer.stop(), main.stop(), late?.stop()]);
  }
  t.regex(producer.stderr, /"destinations":\["late"\],"reason":"new destination","msg":"table sync: continuing the copies a restart interrupted"/);
  t.is(late!.stderr.match(/registering this destination/g)?.length, 1, 'it registered once: the restart kept it');
  await assertEqual(t, pipeline, 'main', 'd_');
  await assertEqual(t, pipeline, 'late', 'd_');
});

test("a resync in flight when Redis loses the pipeline's data is copied again from the start (the producer remembers it), and DuckDB equals Postgres", async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'syncloss', ['main']);
  await env.pg.query(SCHEMA(pipeline.publication, 'l_'));
  // One partition: the copied table and the streamed one share a queue, so a batch of the
  // streamed table sent late by the ended session would let DuckDB skip the ones Redis lost.
  const producer = pipeline.producer([...SLOW_COPY, '--partitions', '1']);
  const main = pipeline.duckdb('main');
  let load: { stop: () => Promise<void> } | undefined;
  try {
    await pipeline.waitForCopy(env.redis.client);
    load = writeLoad('l_');
    await resyncPartWay(t, pipeline, 'l_big');
    // Everything Redis held for this pipeline (and only it: other tests share this Redis) is gone.
    const lost = await env.redis.client.keys(`*${pipeline.pipeline}*`);
    await env.redis.client.del(...lost);
    await waitFor('the producer to notice', async () => producer.stderr.includes('Redis no longer holds this producer run'), { stallMs: 30_000 });
    await syncsFinished('the resync to finish', pipeline, producer);
    await load.stop();
    await pipeline.waitForCatchUp();
  } finally {
    await load?.stop().catch(() => {});
    await Promise.all([producer.stop(), main.stop()]);
  }
  const afterLoss = producer.stderr.slice(producer.stderr.indexOf('Redis no longer holds this producer run'));
  t.regex(afterLoss, /"reason":"resync requested","msg":"table sync: continuing the copies a restart interrupted"/);
  t.regex(afterLoss, /"resumed":false,"msg":"table sync: copying"/, 'its chunks went with Redis: copied from the start');
  await assertEqual(t, pipeline, 'main', 'l_');
});
