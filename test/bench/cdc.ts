/**
 * CDC scenarios: WAL written while the producer is stopped, then streamed (timed from its
 * start to the slot at the WAL's end) beside pg_recvlogical draining the same WAL; and the
 * latency from commit to applied at a steady rate.
 */
import { spawnSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { PRODUCER_DEFAULTS } from '../../producer/options.js';
import { currentWalLsn, type TestPipeline, waitFor, waitForSlotAt } from '../support/pipeline.js';
import type { Bench, Result, Sink } from './context.js';
import { cpuNow, cpuSince, quiesce, sampleRedis, sampleRss } from './measure.js';

export interface Latency {
  rate: number;
  /** The rate the writer kept up (changes/s over the run). */
  achieved: number;
  p50: number;
  p99: number;
  batches: number;
}

/** The bench's CDC workload: what it writes, into which tables (made by `tables`), after what preparation. */
export interface CdcWorkload {
  name: string;
  count: number;
  write: string;
  prepare?: string;
  /** DDL of the tables written, their names in `published`; by default bench_changes and bench_write(). */
  tables?: string;
  published?: string[];
}

// Autovacuum off for the bench's tables: a vacuum of a million rewritten rows landing in one
// run and not the other would be measured as replication.
const CHANGES_TABLE = `
  DROP TABLE IF EXISTS bench_changes;
  CREATE TABLE bench_changes (id bigint PRIMARY KEY, name text, amount numeric(12,2), updated timestamptz) WITH (autovacuum_enabled = false);
  CREATE OR REPLACE PROCEDURE bench_write(total int, per_tx int) LANGUAGE plpgsql AS $$
  DECLARE i int := 0;
  BEGIN
    WHILE i < total LOOP
      FOR j IN 1..per_tx LOOP
        i := i + 1;
        IF i % 10 < 6 THEN
          INSERT INTO bench_changes VALUES (i, 'n' || i, i / 100.0, now());
        ELSIF i % 10 < 9 THEN
          UPDATE bench_changes SET amount = amount + 1, updated = now() WHERE id = i - 5;
        ELSE
          DELETE FROM bench_changes WHERE id = i - 9;
        END IF;
      END LOOP;
      COMMIT;
    END LOOP;
  END $$;`;

/**
 * pgbench's tables and its transaction, with a delete added: each transaction updates an
 * account, a teller and a branch, inserts a history row and deletes the oldest one left. The
 * accounts and the history rows to delete are there before the pipeline starts (copied).
 */
export const PGBENCH_TABLES = `
  DROP TABLE IF EXISTS bench_accounts, bench_tellers, bench_branches, bench_history;
  CREATE TABLE bench_branches (bid int PRIMARY KEY, bbalance bigint, filler char(88)) WITH (autovacuum_enabled = false);
  CREATE TABLE bench_tellers (tid int PRIMARY KEY, bid int, tbalance bigint, filler char(84)) WITH (autovacuum_enabled = false);
  CREATE TABLE bench_accounts (aid int PRIMARY KEY, bid int, abalance bigint, filler char(84)) WITH (autovacuum_enabled = false);
  CREATE TABLE bench_history (hid bigint PRIMARY KEY, tid int, bid int, aid int, delta int, mtime timestamptz, filler char(22)) WITH (autovacuum_enabled = false);
  CREATE OR REPLACE PROCEDURE bench_pgbench(transactions int) LANGUAGE plpgsql AS $$
  DECLARE account int; teller int; branch int; delta int;
  BEGIN
    FOR i IN 1..transactions LOOP
      account := 1 + (i * 7919) % 100000; teller := 1 + i % 100; branch := 1 + i % 10; delta := (i % 10001) - 5000;
      UPDATE bench_accounts SET abalance = abalance + delta WHERE aid = account;
      UPDATE bench_tellers SET tbalance = tbalance + delta WHERE tid = teller;
      UPDATE bench_branches SET bbalance = bbalance + delta WHERE bid = branch;
      INSERT INTO bench_history VALUES (1000000 + i, teller, branch, account, delta, now(), '');
      DELETE FROM bench_history WHERE hid = i;
      COMMIT;
    END LOOP;
  END $$;
  INSERT INTO bench_branches SELECT g, 0, '' FROM generate_series(1, 10) g;
  INSERT INTO bench_tellers SELECT g, 1 + g % 10, 0, '' FROM generate_series(1, 100) g;
  INSERT INTO bench_accounts SELECT g, 1 + g % 10, 0, '' FROM generate_series(1, 100000) g;
  INSERT INTO bench_history SELECT g, 1 + g % 100, 1 + g % 10, g, 0, now(), '' FROM generate_series(1, 1000000) g;`;

/** Streams the WAL that the workload writes, after its preparation has run and been applied. */
export async function benchCdc(bench: Bench, workload: CdcWorkload, sink: Sink = 'duckdb'): Promise<Result> {
  const { name, count, write, prepare } = workload;
  const pipeline = bench.pipeline('benchcdc');
  await bench.pg.query(workload.tables ?? CHANGES_TABLE);
  await bench.pg.query(`CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${(workload.published ?? ['bench_changes']).join(', ')}`);
  // Create the pipeline's slot and copy, apply the preparation, then stop the producer so the WAL piles up.
  if (sink === 'postgres') await bench.resetTarget();
  let producer = pipeline.producer();
  const consumer = bench.consumer(pipeline, sink);
  await pipeline.waitForCopy(bench.redis.client);
  if (prepare) {
    process.stderr.write(`${name}: preparing…\n`);
    await bench.pg.query(prepare);
    await pipeline.waitForCatchUp({ stallMs: 30 * 60_000 });
    await restartPointPast(bench, pipeline, await currentWalLsn(bench.pg));
  }
  await producer.stop();
  const rawSlot = `${pipeline.slot}_raw`;
  await bench.pg.query(`SELECT pg_create_logical_replication_slot('${rawSlot}', 'pgoutput')`);
  process.stderr.write(`${name}: writing ${count} changes…\n`);
  await bench.pg.query(write);
  const end = await currentWalLsn(bench.pg);
  await quiesce(bench.pg);

  const rawStarted = performance.now();
  const url = new URL(bench.pg.url);
  const drained = spawnSync(
    'pg_recvlogical',
    [
      '-h',
      url.hostname,
      '-p',
      url.port,
      '-U',
      url.username || 'postgres',
      '-d',
      url.pathname.slice(1),
      '-S',
      rawSlot,
      '--start',
      '--endpos',
      end,
      '-o',
      'proto_version=1',
      '-o',
      `publication_names=${pipeline.publication}`,
      '-f',
      '/dev/null',
      '--no-loop',
    ],
    { stdio: 'inherit' },
  );
  if (drained.status !== 0) throw new Error('pg_recvlogical failed');
  const rawSeconds = (performance.now() - rawStarted) / 1000;
  await bench.pg.query(`SELECT pg_drop_replication_slot('${rawSlot}')`);

  const consumerPeak = sampleRss(consumer);
  const redisPeak = sampleRedis(bench.redis.client);
  const cpuFrom = await cpuNow(bench.pg, bench.redis.client, consumer);
  const started = performance.now();
  producer = pipeline.producer();
  const producerPeak = sampleRss(producer);
  await waitForSlotAt(bench.pg, pipeline.slot, end, { stallMs: 60 * 60_000, intervalMs: 10 });
  const seconds = (performance.now() - started) / 1000;
  const cpu = cpuSince(cpuFrom, await cpuNow(bench.pg, bench.redis.client, consumer), producerPeak);
  const result = {
    name,
    count,
    seconds,
    rawSeconds,
    rawName: 'pg_recvlogical',
    producerPeakMb: producerPeak().mb,
    consumerPeakMb: consumerPeak().mb,
    ...redisPeak(PRODUCER_DEFAULTS.maxBacklogBytes),
    cpu,
  };
  await Promise.all([producer.stop(), consumer.stop()]);
  await bench.pg.query(`DROP PUBLICATION ${pipeline.publication}; SELECT pg_drop_replication_slot('${pipeline.slot}')`);
  return result;
}

/**
 * Waits until the slot's restart point (where its walsender starts decoding again) is past
 * `lsn`. Postgres moves it only at a record of the transactions running, which it writes every
 * 15 s or at a checkpoint, so after a large preparation the point is still before it: the
 * pipeline's walsender would then decode the preparation again (and drop it, as confirmed)
 * before the WAL measured, while pg_recvlogical's slot, made after it, starts at it.
 */
async function restartPointPast(bench: Bench, pipeline: TestPipeline, lsn: string): Promise<void> {
  await waitFor(
    `slot ${pipeline.slot} to restart past ${lsn}`,
    async () => {
      await bench.pg.query('CHECKPOINT');
      await pipeline.waitForCatchUp();
      const { rows } = await bench.pg.query(`SELECT restart_lsn >= '${lsn}'::pg_lsn AS past FROM pg_replication_slots WHERE slot_name = '${pipeline.slot}'`);
      return rows[0]?.past === true;
    },
    { intervalMs: 500 },
  );
}

/** Commit → applied in DuckDB, at a steady `rate` changes/s (a transaction of inserts every 10 ms). */
export async function benchLatency(bench: Bench, rate: number, seconds: number): Promise<Latency> {
  const pipeline = bench.pipeline('benchlatency');
  const table = bench.table('bench_latency');
  await bench.pg.query(`
    CREATE TABLE ${table} (id bigint PRIMARY KEY, name text, amount numeric(12,2), updated timestamptz);
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${table};
  `);
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('bench', { LOG_LEVEL: 'debug' });
  await pipeline.waitForCopy(bench.redis.client);
  process.stderr.write(`latency: ${rate} changes/s for ${seconds} s…\n`);
  const client = new pg.Client({ connectionString: bench.pg.url });
  await client.connect();
  // The bench cluster runs with synchronous_commit=off for speed; then the WAL writer flushes
  // (and the walsender sends) only every 200 ms. Commit as production does.
  await client.query('SET synchronous_commit = on');
  const intervalMs = 10;
  const perTransaction = Math.round((rate * intervalMs) / 1000);
  const started = performance.now();
  let measuredFrom = 0;
  let tick = 0;
  for (; performance.now() - started < seconds * 1000; tick++) {
    const first = tick * perTransaction;
    await client.query(`INSERT INTO ${table} SELECT g, 'n' || g, g / 100.0, now() FROM generate_series(${first + 1}, ${first + perTransaction}) g`);
    if (measuredFrom === 0 && performance.now() - started > 3000) measuredFrom = consumer.stderr.length;
    const wait = started + (tick + 1) * intervalMs - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  }
  const achieved = (tick * perTransaction) / ((performance.now() - started) / 1000);
  await client.end();
  await pipeline.waitForCatchUp();
  await Promise.all([producer.stop(), consumer.stop()]);
  // Batches applied after a 3 s warm-up, from the consumer's debug log.
  const lags = [...consumer.stderr.slice(measuredFrom).matchAll(/"lagMs":(\d+)/g)].map((match) => Number(match[1])).sort((a, b) => a - b);
  const percentile = (p: number) => lags[Math.min(lags.length - 1, Math.floor((p / 100) * lags.length))] ?? NaN;
  await bench.pg.query(`DROP PUBLICATION ${pipeline.publication}; SELECT pg_drop_replication_slot('${pipeline.slot}'); DROP TABLE ${table}`);
  return { rate, achieved, p50: percentile(50), p99: percentile(99), batches: lags.length };
}
