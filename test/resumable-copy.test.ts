import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { useBigQueryEmulator } from './support/bigquery-emulator.js';
import { type CliProcess, duckdbRows, postgresRows, runCli, storedChunks, TestPipeline, waitFor } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);
const bq = useBigQueryEmulator(test);

/** Ranges recorded as copied, per table, from the producer's record in Redis. */
async function rangesDone(pipeline: string): Promise<Record<string, { done: number; total: number }>> {
  const raw = await env.redis.client.hgetall(`pgr:{${pipeline}}:copy-progress`);
  return Object.fromEntries(
    Object.values(raw)
      .map((text) => JSON.parse(text))
      .map((progress) => [progress.name, { done: progress.done.length, total: progress.ranges }]),
  );
}

test('a large table is copied in CTID ranges over several connections and continues after the producer is killed twice mid-copy (DuckDB and BigQuery)', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'resume', ['main', 'warehouse']);
  await env.pg.query(`
    CREATE TABLE big (id bigint PRIMARY KEY, payload text, n int);
    INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text), 0 FROM generate_series(1, 300000) g;
    -- Named to be copied after big: the restarts find it unfinished, and a keyless table is copied anew.
    CREATE TABLE zbag (label text, n int);
    ALTER TABLE zbag REPLICA IDENTITY FULL;
    INSERT INTO zbag SELECT 'l' || (g % 50), g % 7 FROM generate_series(1, 30000) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE big, zbag;
    ANALYZE big;`);
  const copyFlags = ['--copy-range-blocks', '60', '--copy-connections', '3', '--copy-chunk-rows', '2000', '--max-backlog-batches', '6'];
  let producer: CliProcess = pipeline.producer(copyFlags);
  const runs: CliProcess[] = [producer];
  const consumers = [pipeline.duckdb('main'), pipeline.bigquery('warehouse', bq.emulator.url, 'resume_test')];
  let writing = true;
  const load = (async () => {
    for (let round = 1; writing; round++) {
      await env.pg.query(`BEGIN;
        UPDATE big SET n = n + 1, payload = 'r${round}' WHERE id = ${1 + ((round * 7919) % 300000)};
        DELETE FROM big WHERE id = ${1 + ((round * 104729) % 300000)};
        INSERT INTO big VALUES (${300000 + round}, 'new', ${round});
        INSERT INTO zbag VALUES ('new', ${round % 7});
        DELETE FROM zbag WHERE ctid = (SELECT min(ctid) FROM zbag WHERE label = 'l${round % 50}');
        COMMIT;`);
      await sleep(3);
    }
  })();
  const kills: Record<string, { done: number; total: number }>[] = [];
  try {
    for (let kill = 1; kill <= 2; kill++) {
      const before = kills[kills.length - 1]?.big.done ?? 0;
      const progress = await waitFor(
        `copy progress before kill ${kill}`,
        async () => {
          const now = await rangesDone(pipeline.pipeline);
          return now.big && now.big.done >= before + 4 ? now : undefined;
        },
        { progress: () => rangesDone(pipeline.pipeline) },
      );
      await producer.kill9();
      t.true(progress.big.done < progress.big.total, `kill ${kill} happened mid-copy (${progress.big.done}/${progress.big.total} ranges)`);
      kills.push(await rangesDone(pipeline.pipeline));
      // What a kill can leave behind, made certain: rows of a chunk not yet enqueued (no
      // holders), and a chunk whose holders are set but whose job was never added.
      const redis = env.redis.client;
      await redis.set(`pgr:{${pipeline.pipeline}}:chunk:1.0.${kill}`, '1,half written\n');
      await redis.set(`pgr:{${pipeline.pipeline}}:chunk:1.1.${kill}`, '2,never enqueued\n');
      await redis.sadd(`pgr:{${pipeline.pipeline}}:chunk-for:1.1.${kill}`, 'main', 'warehouse');
      producer = pipeline.producer(copyFlags);
      runs.push(producer);
    }
    await pipeline.waitForCopy(env.redis.client);
    const status = JSON.parse((await runCli(['status', '--json', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout);
    const big = status.copyProgress.find((entry: { table: string }) => entry.table === 'public.big');
    t.is(big.rangesDone, big.rangesTotal, 'status shows every range copied');
    t.true(big.rangesTotal >= 10 && big.rows >= 300000 && big.rowsPerSecond > 0, JSON.stringify(big));
    writing = false;
    await load;
    await pipeline.waitForCatchUp();
    t.deepEqual(await storedChunks(env.redis.client, pipeline.pipeline), [], 'chunks of the killed runs were dropped, every applied one released');
  } finally {
    writing = false;
    await load.catch(() => {});
    await Promise.all([producer.stop(), ...consumers.map((consumer) => consumer.stop())]);
  }
  // Each restart copied only the ranges not yet recorded: its log says how many remained.
  for (const [index, run] of runs.slice(1).entries()) {
    const resumed = /"ranges":(\d+),"resumed":true/.exec(run.stderr);
    t.truthy(resumed, `run ${index + 2} resumed the copy`);
    const { big } = kills[index];
    const { zbag } = kills[index];
    t.true(
      Number(resumed![1]) <= big.total - big.done + zbag.total,
      `run ${index + 2} copied at most the ranges left (${resumed![1]}) plus the keyless table's, copied anew`,
    );
  }
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.big', ['id', 'payload', 'n']), await postgresRows(env.pg, 'big', ['id', 'payload', 'n']));
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.zbag', ['label', 'n']), await postgresRows(env.pg, 'zbag', ['label', 'n']));
  t.deepEqual(
    await bq.emulator.tableRows('resume_test', 'big', ['id', 'payload', 'n']),
    await postgresRows(env.pg, 'big', ['id', 'payload', 'n']),
    'BigQuery: big',
  );
  t.deepEqual(await bq.emulator.tableRows('resume_test', 'zbag', ['label', 'n']), await postgresRows(env.pg, 'zbag', ['label', 'n']), 'BigQuery: zbag');
});
