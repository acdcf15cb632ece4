import { writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { Queue } from 'bullmq';
import { QUEUE_PREFIX, queueName } from '../shared/keys.js';
import { useBigQueryEmulator } from './support/bigquery-emulator.js';
import { type CliProcess, duckdbRows, killStrayProcesses, loadUntilStopped, postgresRows, TestPipeline } from './support/pipeline.js';
import { type SentinelSet, startSentinelSet } from './support/sentinel.js';
import { type PostgresServer, startPostgres } from './support/services.js';

/**
 * The fault harness: a mixed workload against two destinations (DuckDB and BigQuery, through
 * the local emulator), through Redis Sentinel, while faults are injected at random; at the end
 * both equal Postgres row for row and the slot has passed the end of the WAL. CHAOS_SECONDS sets how long faults go on
 * (CI: 60); CHAOS_REPORT=FILE writes what happened as a Markdown table (`npm run chaos`).
 */
const SECONDS = Number(process.env.CHAOS_SECONDS ?? 60);
const OUTAGE_MS = Number(process.env.CHAOS_OUTAGE_MS ?? 8_000);
const env = {} as { pg: PostgresServer; redis: SentinelSet };
test.before(async () => {
  [env.pg, env.redis] = await Promise.all([startPostgres(), startSentinelSet()]);
});
test.after.always(async () => {
  await killStrayProcesses();
  await Promise.all([env.pg?.stop(), env.redis?.stop()]);
});
const bq = useBigQueryEmulator(test);
const serial = process.env.PG_URL ? test.skip : test.serial;

const TABLES: [string, string[]][] = [
  ['orders', ['id', 'customer', 'amount', 'note']],
  ['docs', ['id', 'body', 'version']],
  ['events', ['kind', 'n']],
];

const SCHEMA = (publication: string) => `
  CREATE TABLE orders (id int PRIMARY KEY, customer int, amount numeric(12,2), note text);
  CREATE TABLE docs (id int PRIMARY KEY, body text, version int);
  CREATE TABLE events (kind text, n int);
  ALTER TABLE events REPLICA IDENTITY FULL;
  INSERT INTO orders SELECT g, g % 97, g * 1.5, 'seed' FROM generate_series(1, 5000) g;
  INSERT INTO docs SELECT g, repeat(md5(g::text), 400), 0 FROM generate_series(1, 50) g;
  CREATE PUBLICATION ${publication} FOR TABLE orders, docs, events;`;

/** One transaction of the mixed workload, chosen by the round. */
function round(n: number): string {
  const id = 1 + ((n * 7919) % 6000);
  switch (n % 10) {
    case 0: // a key change
      return `UPDATE orders SET id = ${100000 + n} WHERE id = (SELECT min(id) FROM orders WHERE id < 100000)`;
    case 1: // a TOASTed value kept while another column changes, and one rewritten
      return `BEGIN; UPDATE docs SET version = version + 1 WHERE id = ${1 + (n % 50)}; UPDATE docs SET body = repeat(md5('${n}'), 400) WHERE id = ${1 + ((n + 7) % 50)}; COMMIT;`;
    case 2:
      return `DELETE FROM orders WHERE id = ${id}`;
    case 3:
      return n % 30 === 3 ? 'TRUNCATE events' : `INSERT INTO events VALUES ('k${n % 5}', ${n % 3}), ('k${n % 5}', ${n % 3})`;
    case 4:
      return `DELETE FROM events WHERE ctid = (SELECT min(ctid) FROM events WHERE kind = 'k${n % 5}')`;
    default:
      return `INSERT INTO orders VALUES (${id}, ${n % 97}, ${n}.25, 'r${n}') ON CONFLICT (id) DO UPDATE SET amount = orders.amount + 1, note = 'u${n}'`;
  }
}

serial(`chaos: ${SECONDS} s of random faults under a mixed workload, then DuckDB and BigQuery equal Postgres row for row`, async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'chaos', ['duck', 'warehouse']);
  await env.pg.query(SCHEMA(pipeline.publication));
  const flags = ['--max-batch-changes', '20000'];
  const processes: Record<string, CliProcess> = {
    producer: pipeline.producer(flags),
    duck: pipeline.duckdb('duck'),
    warehouse: pipeline.bigquery('warehouse', bq.emulator.url, 'chaos'),
  };
  const start: Record<string, () => CliProcess> = {
    producer: () => pipeline.producer(flags),
    duck: () => pipeline.duckdb('duck'),
    warehouse: () => pipeline.bigquery('warehouse', bq.emulator.url, 'chaos'),
  };
  const restartProcess = async (name: string) => {
    await processes[name].kill9();
    processes[name] = start[name]();
  };
  const faults: Record<string, () => Promise<void>> = {
    'kill -9 producer': () => restartProcess('producer'),
    'kill -9 DuckDB consumer': () => restartProcess('duck'),
    'kill -9 BigQuery consumer': () => restartProcess('warehouse'),
    'pg_terminate_backend of the walsender': async () => {
      await env.pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name LIKE 'pg-replicate%'");
    },
    'Postgres restart (fast)': async () => env.pg.control!.restart('fast'),
    'Postgres restart (immediate)': async () => env.pg.control!.restart('immediate'),
    'Redis restart with its data (from a snapshot a moment earlier)': async () => {
      await env.redis.snapshot();
      await sleep(500);
      await env.redis.restart({ fromSnapshot: true });
    },
    'Redis Sentinel failover': () => env.redis.failover(),
    'Redis FLUSHALL': async () => {
      await env.redis.client.flushall();
    },
    'loss of the newest jobs of one queue': async () => {
      const queue = new Queue(queueName(pipeline.pipeline, Math.random() < 0.5 ? 'duck' : 'warehouse', Math.floor(Math.random() * 8)), {
        connection: env.redis.client,
        prefix: QUEUE_PREFIX,
      });
      for (const job of await queue.getJobs(['wait'], 0, 1, false)) await job.remove().catch(() => {});
      await queue.close();
    },
    // Unavailable, not refusing access: a consumer (re)started meanwhile must wait, not exit
    // (access denied at start is an error a human must fix: exit 2, tested in bigquery-rows).
    'BigQuery unavailable for a while (every request answered 503)': async () => {
      bq.emulator.unavailable('test-project', true);
      await sleep(OUTAGE_MS / 2);
      bq.emulator.unavailable('test-project', false);
    },
    'a destination unavailable for a while': async () => {
      const name = Math.random() < 0.5 ? 'duck' : 'warehouse';
      const stopping = Date.now();
      await processes[name].stop();
      t.log(`${name} stopped in ${Date.now() - stopping} ms`);
      await sleep(OUTAGE_MS);
      processes[name] = start[name]();
    },
  };
  const injected = new Map<string, number>(Object.keys(faults).map((name) => [name, 0]));
  let load: ReturnType<typeof loadUntilStopped> | undefined;
  let counts = { committed: 0, failed: 0 };
  try {
    await pipeline.waitForCopy(env.redis.client);
    // Once, a large transaction (60 000 changes, several batches).
    load = loadUntilStopped(env.pg, (n) => (n === 200 ? "INSERT INTO orders SELECT g, g % 97, g, 'bulk' FROM generate_series(200001, 260000) g" : round(n)));
    // CHAOS_ONLY=TEXT: only the faults whose name contains it (while looking into one).
    const names = Object.keys(faults).filter((name) => name.includes(process.env.CHAOS_ONLY ?? ''));
    // Every kind once, in random order, then at random until the time is up.
    const order = names
      .map((name) => ({ name, key: Math.random() }))
      .sort((a, b) => a.key - b.key)
      .map(({ name }) => name);
    for (const until = Date.now() + SECONDS * 1000; order.length > 0 || Date.now() < until; ) {
      const name = order.shift() ?? names[Math.floor(Math.random() * names.length)];
      t.log(`${new Date().toISOString()} ${name}`);
      await faults[name]();
      injected.set(name, injected.get(name)! + 1);
      await sleep(2_000 + Math.random() * 3_000);
    }
    counts = await load.stop();
    load = undefined;
    await pipeline.waitForCatchUp({ stallMs: 180_000 });
  } finally {
    await load?.stop();
    await Promise.all(Object.values(processes).map((process) => process.stop()));
  }
  let rows = 0;
  for (const [table, columns] of TABLES) {
    const postgres = await postgresRows(env.pg, table, columns);
    rows += postgres.length;
    t.deepEqual(await duckdbRows(pipeline.duckdbPath('duck'), `public.${table}`, columns), postgres, `DuckDB: ${table}`);
    t.deepEqual(await bq.emulator.tableRows('chaos', table, columns), postgres, `BigQuery: ${table}`);
  }
  const report = [
    `| fault | injected |`,
    `| --- | --- |`,
    ...[...injected].map(([name, count]) => `| ${name} | ${count} |`),
    '',
    `${SECONDS} s of faults; ${counts.committed} transactions committed (${counts.failed} refused while Postgres was away); ${rows} rows in each destination compared with Postgres: 0 lost, 0 duplicated.`,
  ].join('\n');
  t.log(report);
  if (process.env.CHAOS_REPORT) writeFileSync(process.env.CHAOS_REPORT, `${report}\n`);
  if (!process.env.CHAOS_ONLY)
    t.true(
      [...injected.values()].every((count) => count > 0),
      'every kind of fault was injected',
    );
});
