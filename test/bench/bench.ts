/**
 * npm run bench: end-to-end rates into DuckDB, each next to the raw rate at which Postgres
 * hands out the same data in the same run (COPY … TO STDOUT for a backfill, a pg_recvlogical
 * drain of the same WAL for CDC), with the peak memory of the producer, the consumer and Redis,
 * and the CPU time each part of the pipeline used (what bounds the rates on a small machine).
 * Writes the tables into docs/benchmarks.md, and the main one into README.md.
 *
 * Sizes: BENCH_ROWS (backfill, default 2,000,000), BENCH_CHANGES (small transactions, default
 * 1,000,000), BENCH_BIG_INSERT (one transaction, default 5,000,000), BENCH_BIG_UPDATE (one
 * transaction, default 1,000,000), BENCH_HUGE_ROWS (memory-flatness backfill, default
 * 10,000,000), BENCH_LATENCY_SECONDS (steady 5 k changes/s, default 30). A size of 0 skips that
 * scenario. BENCH_ROUNDS (default 7): rounds of the mixed-types backfill. BENCH_PG_ROWS and
 * BENCH_PG_CHANGES (defaults as above): the same backfill and small transactions into Postgres. Each target of the performance issue is printed with PASS or FAIL.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import copyStreams from 'pg-copy-streams';
import { DuckDbDestination } from '../../consumers/duckdb/destination.js';
import { JOIN_LIMITS } from '../../consumers/lookahead.js';
import { Catalog, describeTable } from '../../producer/catalog.js';
import { PRODUCER_DEFAULTS } from '../../producer/options.js';
import { COPY_TEXT_OPTIONS } from '../../shared/csv.js';
import { type CliProcess, currentWalLsn, TestPipeline, waitFor, waitForSlotAt } from '../support/pipeline.js';
import { startPostgres, startRedis } from '../support/services.js';

const size = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const ROWS = size('BENCH_ROWS', 2_000_000);
const CHANGES = size('BENCH_CHANGES', 1_000_000);
const BIG_INSERT = size('BENCH_BIG_INSERT', 5_000_000);
const BIG_UPDATE = size('BENCH_BIG_UPDATE', 1_000_000);
const HUGE_ROWS = size('BENCH_HUGE_ROWS', 10_000_000);
const LATENCY_SECONDS = size('BENCH_LATENCY_SECONDS', 30);
const ROUNDS = size('BENCH_ROUNDS', 7);
/** The Postgres destination: a backfill of the mixed rows (median of 3 rounds) and the small transactions, into a second database. */
const PG_ROWS = size('BENCH_PG_ROWS', 2_000_000);
const PG_CHANGES = size('BENCH_PG_CHANGES', 1_000_000);
const LATENCY_RATE = 5_000;
/** Linux's USER_HZ: the unit of the CPU times in /proc/<pid>/stat. */
const CLOCK_TICKS = 100;
const CDC_SMALL = 'CDC, transactions of 10 changes (60 % insert, 30 % update, 10 % delete)';
const CDC_BIG = 'CDC, one transaction inserting every row';

interface Result {
  name: string;
  count: number;
  /** The run: for a backfill, from the first COPY to the last chunk committed. */
  seconds: number;
  /** Backfill: from the producer's launch to its exit (start-up, slot and snapshot, copy, its check that every chunk is applied). */
  launchedSeconds?: number;
  rawSeconds: number;
  rawName: string;
  producerPeakMb: number;
  consumerPeakMb: number;
  /** Redis' used memory at its highest during the run, and the bound the producer's settings put on it. */
  redisPeakMb: number;
  redisBoundMb: number;
  cpu: CpuSeconds;
  /** Backfill: the DuckDB destination alone applying the same rows as COPY text chunks, nothing else running. */
  duckdbAloneSeconds?: number;
  /** Backfill: the ratio to raw COPY of each round, in the order run (the result is the median round). */
  roundRatios?: number[];
}

/** CPU seconds (user + system, every thread) each part used during a run. */
interface CpuSeconds {
  postgres: number;
  producer: number;
  redis: number;
  consumer: number;
}

const pgServer = await startPostgres();
const redis = await startRedis();
/** Where a scenario's consumer writes: DuckDB, or a second database of the same server. */
type Sink = 'duckdb' | 'postgres';
const targetUrl = await (async () => {
  await pgServer.query('CREATE DATABASE bench_target');
  const url = new URL(pgServer.url);
  url.pathname = '/bench_target';
  return url.toString();
})();
const consumerFor = (pipeline: TestPipeline, sink: Sink, env: Record<string, string> = {}) =>
  sink === 'duckdb' ? pipeline.duckdb('bench', env) : pipeline.postgres('bench', targetUrl);
/** Empties the target database between runs into it. */
async function resetTarget(): Promise<void> {
  const target = new pg.Client({ connectionString: targetUrl });
  await target.connect();
  await target.query('DROP SCHEMA IF EXISTS public CASCADE; DROP SCHEMA IF EXISTS _pg_replicate CASCADE; CREATE SCHEMA public');
  await target.end();
}
const results: Result[] = [];
let scenario = 0;
let latency: { p50: number; p99: number; batches: number } | undefined;
try {
  if (ROWS > 0) results.push(await benchBackfill('backfill, mixed types', ROWS, ROUNDS));
  if (CHANGES > 0) {
    results.push(await benchCdc(CDC_SMALL, CHANGES, `CALL bench_write(${CHANGES}, 10)`));
  }
  if (BIG_INSERT > 0)
    results.push(
      await benchCdc(CDC_BIG, BIG_INSERT, `INSERT INTO bench_changes SELECT g, 'n' || g, g / 100.0, now() FROM generate_series(1, ${BIG_INSERT}) g`),
    );
  if (BIG_UPDATE > 0) {
    results.push(
      await benchCdc(
        'CDC, one transaction updating every row',
        BIG_UPDATE,
        `UPDATE bench_changes SET amount = amount + 1, updated = now()`,
        `INSERT INTO bench_changes SELECT g, 'n' || g, g / 100.0, now() FROM generate_series(1, ${BIG_UPDATE}) g`,
      ),
    );
  }
  if (HUGE_ROWS > 0) results.push(await benchBackfill('backfill, large table (memory)', HUGE_ROWS, 1));
  if (PG_ROWS > 0) results.push(await benchBackfill('backfill, mixed types → Postgres', PG_ROWS, 3, 'postgres'));
  if (PG_CHANGES > 0) results.push(await benchCdc(`${CDC_SMALL} → Postgres`, PG_CHANGES, `CALL bench_write(${PG_CHANGES}, 10)`, undefined, 'postgres'));
  if (LATENCY_SECONDS > 0) latency = await benchLatency();
} finally {
  await Promise.all([pgServer.stop(), redis.stop()]);
}
report(results);

async function benchBackfill(name: string, rows: number, rounds: number, sink: Sink = 'duckdb'): Promise<Result> {
  const table = `bench_rows_${++scenario}`;
  process.stderr.write(`${name}: loading ${rows} rows…\n`);
  await pgServer.query(`
    CREATE TABLE ${table} (id bigint PRIMARY KEY, name text, amount numeric(12,2), created timestamptz, payload jsonb) WITH (autovacuum_enabled = false);
    INSERT INTO ${table} SELECT g, 'name ' || g, (g % 100000) / 100.0, '2024-01-01'::timestamptz + g * interval '1 second', jsonb_build_object('g', g, 'tag', 'x' || (g % 10))
      FROM generate_series(1, ${rows}) g;
  `);
  await pgServer.query(`VACUUM ANALYZE ${table}`);
  await quiesce();
  const duckdbAloneSeconds = sink === 'duckdb' && rows <= ROWS ? await timeDuckdbAlone(table) : undefined;
  // The machine's speed drifts from one minute to the next (shared cores): each round times
  // the raw COPY and the pipeline back to back, and the round with the median ratio is reported.
  const measured: Result[] = [];
  for (let round = 0; round < rounds; round++) {
    await quiesce();
    const rawSeconds = await timeRawCopy(table);
    await quiesce();
    measured.push({
      ...(await backfillOnce(table, rows, sink)),
      name,
      count: rows,
      rawSeconds,
      rawName: 'binary COPY … TO STDOUT, median of 3',
      duckdbAloneSeconds,
    });
  }
  await pgServer.query(`DROP TABLE ${table}`);
  const ratio = (result: Result) => result.rawSeconds / result.seconds;
  const byRatio = [...measured].sort((a, b) => ratio(a) - ratio(b));
  return { ...byRatio[Math.floor(byRatio.length / 2)], roundRatios: measured.map(ratio) };
}

/** One backfill of `table` by a new pipeline, its consumer started first. */
async function backfillOnce(table: string, rows: number, sink: Sink) {
  const pipeline = new TestPipeline(pgServer, redis.url, `benchcopy${++scenario}`, ['bench']);
  await pgServer.query(`CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${table}`);
  if (sink === 'postgres') await resetTarget();
  const consumer = consumerFor(pipeline, sink);
  // A consumer is a service that is up before a copy starts: its own start-up is not the copy's.
  await waitFor('the consumer to start', async () => consumer.stderr.includes('waiting for the producer'));
  const consumerPeak = sampleRss(consumer);
  const redisPeak = sampleRedis();
  const cpuFrom = await cpuNow(consumer);
  const started = performance.now();
  const producer = pipeline.producer(['--mode', 'copy']);
  const producerPeak = sampleRss(producer);
  const code = await producer.exited;
  const launchedSeconds = (performance.now() - started) / 1000;
  const cpu = cpuSince(cpuFrom, await cpuNow(consumer), producerPeak);
  await consumer.stop();
  if (code !== 0) throw new Error(`producer failed: ${producer.stderr}`);
  // Measured like the raw COPY beside it, from the first COPY on: a process start and a slot's
  // creation are not a rate. The end is the producer seeing every chunk applied (it polls
  // every 10 ms), so the copy is if anything measured long.
  const seconds = (loggedAt(producer.stderr, 'copy applied by every destination') - loggedAt(producer.stderr, 'copying tables')) / 1000;
  // Chunks being written are not yet part of the backlog: one per copy connection on top of it.
  const bound = PRODUCER_DEFAULTS.maxBacklogBytes + PRODUCER_DEFAULTS.copyConnections * PRODUCER_DEFAULTS.copyChunkBytes;
  await pgServer.query(`DROP PUBLICATION ${pipeline.publication}`);
  await pgServer.query(`SELECT pg_drop_replication_slot('${pipeline.slot}')`);
  process.stderr.write(`  ${rows} rows in ${seconds.toFixed(2)} s\n`);
  return { seconds, launchedSeconds, producerPeakMb: producerPeak().mb, consumerPeakMb: consumerPeak().mb, ...redisPeak(bound), cpu };
}

/** Streams the WAL that `write` produces, after `prepare` has run and been applied. */
async function benchCdc(name: string, count: number, write: string, prepare?: string, sink: Sink = 'duckdb'): Promise<Result> {
  const pipeline = new TestPipeline(pgServer, redis.url, `benchcdc${++scenario}`, ['bench']);
  // Autovacuum off for the bench's tables: a vacuum of a million rewritten rows landing in one
  // run and not the other would be measured as replication.
  await pgServer.query(`
    DROP TABLE IF EXISTS bench_changes;
    CREATE TABLE bench_changes (id bigint PRIMARY KEY, name text, amount numeric(12,2), updated timestamptz) WITH (autovacuum_enabled = false);
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE bench_changes;
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
    END $$;
  `);
  // Create the pipeline's slot and copy, apply the preparation, then stop the producer so the WAL piles up.
  if (sink === 'postgres') await resetTarget();
  let producer = pipeline.producer();
  const consumer = consumerFor(pipeline, sink);
  await pipeline.waitForCopy(redis.client);
  if (prepare) {
    process.stderr.write(`${name}: preparing…\n`);
    await pgServer.query(prepare);
    await pipeline.waitForCatchUp({ stallMs: 30 * 60_000 });
  }
  await producer.stop();
  const rawSlot = `${pipeline.slot}_raw`;
  await pgServer.query(`SELECT pg_create_logical_replication_slot('${rawSlot}', 'pgoutput')`);
  process.stderr.write(`${name}: writing ${count} changes…\n`);
  await pgServer.query(write);
  const end = await currentWalLsn(pgServer);
  await quiesce();

  const rawStarted = performance.now();
  const url = new URL(pgServer.url);
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
  await pgServer.query(`SELECT pg_drop_replication_slot('${rawSlot}')`);

  const consumerPeak = sampleRss(consumer);
  const redisPeak = sampleRedis();
  const cpuFrom = await cpuNow(consumer);
  const started = performance.now();
  producer = pipeline.producer();
  const producerPeak = sampleRss(producer);
  await waitForSlotAt(pgServer, pipeline.slot, end, { stallMs: 60 * 60_000, intervalMs: 10 });
  const seconds = (performance.now() - started) / 1000;
  const cpu = cpuSince(cpuFrom, await cpuNow(consumer), producerPeak);
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
  await pgServer.query(`DROP PUBLICATION ${pipeline.publication}; SELECT pg_drop_replication_slot('${pipeline.slot}')`);
  return result;
}

/** Commit → applied in DuckDB, at a steady 5 k changes/s (transactions of 50 inserts every 10 ms). */
async function benchLatency(): Promise<{ p50: number; p99: number; batches: number }> {
  const pipeline = new TestPipeline(pgServer, redis.url, `benchlatency${++scenario}`, ['bench']);
  await pgServer.query(`
    CREATE TABLE bench_latency (id bigint PRIMARY KEY, name text, amount numeric(12,2), updated timestamptz);
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE bench_latency;
  `);
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('bench', { LOG_LEVEL: 'debug' });
  await pipeline.waitForCopy(redis.client);
  process.stderr.write(`latency: ${LATENCY_RATE} changes/s for ${LATENCY_SECONDS} s…\n`);
  const client = new pg.Client({ connectionString: pgServer.url });
  await client.connect();
  // The bench cluster runs with synchronous_commit=off for speed; then the WAL writer flushes
  // (and the walsender sends) only every 200 ms. Commit as production does.
  await client.query('SET synchronous_commit = on');
  const perTransaction = 50;
  const intervalMs = (1000 * perTransaction) / LATENCY_RATE;
  const started = performance.now();
  let measuredFrom = 0;
  for (let tick = 0; performance.now() - started < LATENCY_SECONDS * 1000; tick++) {
    const first = tick * perTransaction;
    await client.query(`INSERT INTO bench_latency SELECT g, 'n' || g, g / 100.0, now() FROM generate_series(${first + 1}, ${first + perTransaction}) g`);
    if (measuredFrom === 0 && performance.now() - started > 3000) measuredFrom = consumer.stderr.length;
    const wait = started + (tick + 1) * intervalMs - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  }
  await client.end();
  await pipeline.waitForCatchUp();
  await Promise.all([producer.stop(), consumer.stop()]);
  // Batches applied after a 3 s warm-up, from the consumer's debug log.
  const lags = [...consumer.stderr.slice(measuredFrom).matchAll(/"lagMs":(\d+)/g)].map((match) => Number(match[1])).sort((a, b) => a - b);
  const percentile = (p: number) => lags[Math.min(lags.length - 1, Math.floor((p / 100) * lags.length))] ?? NaN;
  return { p50: percentile(50), p99: percentile(99), batches: lags.length };
}

/**
 * The DuckDB destination alone: the table's CSV (read beforehand, as the producer's chunks
 * would carry it) applied chunk by chunk into a fresh file, each chunk its own transaction.
 * What DuckDB needs for the copy when it has the machine to itself.
 */
async function timeDuckdbAlone(table: string): Promise<number> {
  const client = new pg.Client({ connectionString: pgServer.url });
  await client.connect();
  // Described as the producer describes a table it copies (with Postgres' statistics).
  const oid = Number((await client.query('SELECT $1::regclass::oid AS oid', [table])).rows[0].oid);
  const relation = await describeTable(client, { schema: 'public', name: table, oid, kind: 'r', columns: null, rowFilter: null }, new Catalog(client));
  const pieces: Buffer[] = [];
  for await (const piece of client.query(copyStreams.to(`COPY ${table} TO STDOUT (${COPY_TEXT_OPTIONS})`)) as AsyncIterable<Buffer>) pieces.push(piece);
  await client.end();
  const csv = Buffer.concat(pieces);
  pieces.length = 0;
  const chunks: Buffer[] = [];
  for (let start = 0, lines = 0, at = 0; at < csv.length; ) {
    at = csv.indexOf(0x0a, at) + 1 || csv.length;
    if (++lines === PRODUCER_DEFAULTS.copyChunkRows || at === csv.length) {
      chunks.push(csv.subarray(start, at));
      start = at;
      lines = 0;
    }
  }
  const directory = mkdtempSync(join(tmpdir(), 'pgr-bench-duckdb-'));
  const destination = await DuckDbDestination.open(join(directory, 'alone.duckdb'));
  // Applied as the consumer applies queued chunks: those waiting together, within its limits.
  const started = performance.now();
  for (let first = 0; first < chunks.length; ) {
    let end = first + 1;
    let bytes = chunks[first].length;
    while (end < chunks.length && end - first < JOIN_LIMITS.batches && bytes + chunks[end].length <= JOIN_LIMITS.bytes) bytes += chunks[end++].length;
    const steps = chunks
      .slice(first, end)
      .map((text, index) => ({ kind: 'copy' as const, relation, replace: first + index === 0, merge: false, copyText: [text], rows: 0 }));
    const state = { copyLsn: 1n, copyChunk: end - 1, copyDone: end === chunks.length, applied: { lsn: 1n, ordinal: 0 } };
    await destination.apply(steps, new Map([[relation.oid, state]]));
    first = end;
  }
  const seconds = (performance.now() - started) / 1000;
  await destination.close();
  rmSync(directory, { recursive: true, force: true });
  return seconds;
}

/** When (ms since the epoch) a process logged `msg`. */
function loggedAt(logs: string, msg: string): number {
  for (const line of logs.split('\n')) {
    if (!line.startsWith('{')) continue;
    const entry = JSON.parse(line) as { time?: string; msg?: string };
    if (entry.msg === msg && entry.time !== undefined) return Date.parse(entry.time);
  }
  throw new Error(`the producer never logged "${msg}"`);
}

/**
 * Writes the data just generated out of shared buffers, and every file written so far to
 * disk, before a scenario is measured: neither the checkpointer nor the kernel's writeback is
 * then still at it (and taking a core) during the run.
 */
async function quiesce(): Promise<void> {
  // Needs superuser or pg_checkpoint: against a PG_URL without either, measure as it is.
  await pgServer.query('CHECKPOINT').catch(() => {});
  spawnSync('sync');
}

/**
 * The raw binary COPY of the table, timed three times: the median. One run of it varies by a
 * fifth or more on this kind of machine, and every ratio of a scenario is taken against it.
 */
async function timeRawCopy(table: string): Promise<number> {
  const times: number[] = [];
  for (let run = 0; run < 3; run++) times.push(await timeRawCopyOnce(table));
  return times.sort((a, b) => a - b)[1];
}

async function timeRawCopyOnce(table: string): Promise<number> {
  const client = new pg.Client({ connectionString: pgServer.url });
  await client.connect();
  const started = performance.now();
  const stream = client.query(copyStreams.to(`COPY ${table} TO STDOUT (FORMAT binary)`));
  for await (const chunk of stream as AsyncIterable<Buffer>) void chunk;
  const seconds = (performance.now() - started) / 1000;
  await client.end();
  return seconds;
}

/**
 * Samples Redis' used memory (what it holds beyond the scenario's start); returns a function
 * giving the peak and the bound, in MB, against a bound in bytes.
 */
function sampleRedis(): (boundBytes: number) => { redisPeakMb: number; redisBoundMb: number } {
  const usedMemory = async () => Number(/used_memory:(\d+)/.exec(await redis.client.info('memory'))?.[1] ?? 0);
  let base: number | undefined;
  let peak = 0;
  const sample = async () => {
    const used = await usedMemory();
    base ??= used;
    peak = Math.max(peak, used - base);
  };
  void sample();
  const timer = setInterval(() => void sample().catch(() => {}), 100);
  return (boundBytes) => {
    clearInterval(timer);
    return { redisPeakMb: Math.round(peak / 2 ** 20), redisBoundMb: Math.round(boundBytes / 2 ** 20) };
  };
}

/**
 * Samples a child's resident set size and CPU time; returns a function giving the peak RSS in
 * MB and the CPU seconds last seen (up to its exit, to within the 100 ms between samples).
 */
function sampleRss(child: CliProcess): () => { mb: number; cpuSeconds: number } {
  let peak = 0;
  let cpuSeconds = 0;
  const sample = () => {
    try {
      const status = readFileSync(`/proc/${child.child.pid}/status`, 'utf8');
      const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      peak = Math.max(peak, kb / 1024);
      cpuSeconds = processTimes(child.child.pid!).own;
    } catch {
      // the process has exited
    }
  };
  const timer = setInterval(sample, 100);
  child.exited.then(() => clearInterval(timer));
  return () => {
    clearInterval(timer);
    sample();
    return { mb: Math.round(peak), cpuSeconds };
  };
}

/** A process's user + system CPU seconds (every thread), and those of its children it has reaped. */
function processTimes(pid: number): { own: number; reaped: number; parent: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15, cutime 16, cstime 17.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return {
    parent: Number(fields[1]),
    own: (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS,
    reaped: (Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS,
  };
}

/**
 * Postgres' CPU seconds so far: the postmaster's, the backends it has reaped, and the live ones
 * (a backend that ends moves from the last into the second, so the sum only grows).
 */
async function postgresCpuSeconds(): Promise<number> {
  const { rows } = await pgServer.query('SELECT pg_backend_pid() AS pid');
  const postmaster = processTimes(rows[0].pid).parent;
  const { own, reaped } = processTimes(postmaster);
  let live = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const times = processTimes(Number(entry));
      if (times.parent === postmaster) live += times.own;
    } catch {
      // gone meanwhile
    }
  }
  return own + reaped + live;
}

async function redisCpuSeconds(): Promise<number> {
  const info = await redis.client.info('cpu');
  return Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1] ?? 0) + Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1] ?? 0);
}

type CpuReading = Omit<CpuSeconds, 'producer'>;

async function cpuNow(consumer: CliProcess): Promise<CpuReading> {
  return { postgres: await postgresCpuSeconds(), redis: await redisCpuSeconds(), consumer: processTimes(consumer.child.pid!).own };
}

/** The CPU each part used between two readings; the producer starts with the run, so all of its time counts. */
function cpuSince(from: CpuReading, to: CpuReading, producer: () => { cpuSeconds: number }): CpuSeconds {
  return { postgres: to.postgres - from.postgres, producer: producer().cpuSeconds, redis: to.redis - from.redis, consumer: to.consumer - from.consumer };
}

function report(all: Result[]): void {
  const machine = `${cpus().length} × ${cpus()[0]?.model.trim()}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}, PostgreSQL ${postgresVersion()}`;
  const format = (value: number) => Math.round(value).toLocaleString('en-US');
  const rows = all.map((result) => {
    const rate = result.count / result.seconds;
    const raw = result.count / result.rawSeconds;
    return `| ${result.name} | ${format(result.count)} | ${format(rate)}/s | ${format(raw)}/s (${result.rawName}) | ${(rate / raw).toFixed(2)} | ${result.producerPeakMb} MB | ${result.consumerPeakMb} MB | ${result.redisPeakMb} MB (bound ${result.redisBoundMb} MB) |`;
  });
  const verdict = (ok: boolean) => (ok ? 'PASS' : 'FAIL');
  const ratio = (name: string) => {
    const result = all.find((candidate) => candidate.name === name);
    return result ? result.rawSeconds / result.seconds : undefined;
  };
  const targets: string[] = [];
  const target = (what: string, measured: number | undefined, text: (value: number) => string, ok: (value: number) => boolean) => {
    if (measured !== undefined && !Number.isNaN(measured)) targets.push(`| ${what} | ${text(measured)} | ${verdict(ok(measured))} |`);
  };
  target(
    'backfill ≥ 0.5 × raw COPY (mixed types)',
    ratio('backfill, mixed types'),
    (value) => value.toFixed(2),
    (value) => value >= 0.5,
  );
  target(
    'CDC, small transactions ≥ 0.8 × pg_recvlogical',
    ratio(CDC_SMALL),
    (value) => value.toFixed(2),
    (value) => value >= 0.8,
  );
  target(
    'CDC, one large transaction ≥ 0.8 × pg_recvlogical',
    ratio(CDC_BIG),
    (value) => value.toFixed(2),
    (value) => value >= 0.8,
  );
  target(
    `CDC latency at ${LATENCY_RATE.toLocaleString('en-US')} changes/s, p99 ≤ 250 ms`,
    latency?.p99,
    (value) => `p50 ${latency!.p50} ms, p99 ${value} ms (${latency!.batches} batches)`,
    (value) => value <= 250,
  );
  const producerPeak = Math.max(0, ...all.filter((result) => result.name !== 'backfill, large table (memory)').map((result) => result.producerPeakMb));
  target(
    'producer peak RSS ≤ 200 MB (backfill and CDC runs)',
    all.length > 0 ? producerPeak : undefined,
    (value) => `${value} MB`,
    (value) => value <= 200,
  );
  const targeted = all.filter((result) => result.name !== 'backfill, large table (memory)');
  const worstRedis = targeted.reduce((worst, result) => Math.max(worst, result.redisPeakMb / result.redisBoundMb), 0);
  target(
    'Redis peak memory within the backlog bound (backfill and CDC runs)',
    targeted.length > 0 ? worstRedis : undefined,
    (value) => `at most ${Math.round(value * 100)} % of the bound`,
    (value) => value <= 1,
  );
  const table = [
    `Measured ${new Date().toISOString().slice(0, 10)} on ${machine}.`,
    '',
    '| scenario | rows or changes | pg-replicate | raw Postgres, same data | ratio | producer peak RSS | consumer peak RSS | Redis peak |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
    ...all.flatMap(({ name, count, seconds, rawSeconds, launchedSeconds, duckdbAloneSeconds, roundRatios }) => [
      ...(roundRatios === undefined || roundRatios.length < 2
        ? []
        : [
            `${name}: ${roundRatios.length} pairs, each a raw COPY then the pipeline, back to back (the machine's speed drifts); ratios ${roundRatios.map((value) => value.toFixed(2)).join(', ')}, the median pair reported.`,
            '',
          ]),
      ...(launchedSeconds === undefined
        ? []
        : [
            `${name}: ${seconds.toFixed(2)} s from the first COPY to the last chunk committed; from the producer's launch to its exit (process start-up, slot and snapshot, the copy, its check that every chunk is applied) ${launchedSeconds.toFixed(2)} s, ${format(count / launchedSeconds)} rows/s (${(rawSeconds / launchedSeconds).toFixed(2)} × raw COPY).`,
            '',
          ]),
      ...(duckdbAloneSeconds === undefined
        ? []
        : [
            `${name}: the DuckDB destination alone, applying the same rows as COPY text chunks of ${format(PRODUCER_DEFAULTS.copyChunkRows)} rows (as many to a transaction as the consumer joins when they wait queued: up to ${JOIN_LIMITS.batches}, ${JOIN_LIMITS.bytes / 2 ** 20} MiB) with nothing else running, loads ${format(count / duckdbAloneSeconds)} rows/s (${(rawSeconds / duckdbAloneSeconds).toFixed(2)} × raw COPY).`,
            '',
          ]),
    ]),
    '| target (performance issue) | measured | |',
    '| --- | --- | --- |',
    ...targets,
    '',
    `CPU seconds each part used during each run (user + system, all threads; the machine has ${cpus().length} cores, so a run of w seconds has ${cpus().length}·w to share):`,
    '',
    '| scenario | wall | Postgres | producer | Redis | consumer (with its destination) | all | share of the cores |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...all.map(({ name, seconds: copySeconds, launchedSeconds, cpu }) => {
      // CPU is counted over the whole run, the producer's start-up included.
      const seconds = launchedSeconds ?? copySeconds;
      const total = cpu.postgres + cpu.producer + cpu.redis + cpu.consumer;
      const s = (value: number) => `${value.toFixed(1)} s`;
      return `| ${name} | ${s(seconds)} | ${s(cpu.postgres)} | ${s(cpu.producer)} | ${s(cpu.redis)} | ${s(cpu.consumer)} | ${s(total)} | ${Math.round((100 * total) / (seconds * cpus().length))} % |`;
    }),
  ].join('\n');
  process.stdout.write(`${table}\n`);
  // The whole report in docs/benchmarks.md; the main table in the README.
  writeBetweenMarkers(join(process.cwd(), 'docs', 'benchmarks.md'), table);
  writeBetweenMarkers(
    join(process.cwd(), 'README.md'),
    table
      .split('\n')
      .slice(0, rows.length + 4)
      .join('\n'),
  );
}

/** Replaces what a file holds between `<!-- bench:start -->` and `<!-- bench:end -->`, when it has both. */
function writeBetweenMarkers(path: string, text: string): void {
  const content = readFileSync(path, 'utf8');
  const start = '<!-- bench:start -->';
  const end = '<!-- bench:end -->';
  if (!content.includes(start) || !content.includes(end)) return;
  writeFileSync(path, `${content.slice(0, content.indexOf(start) + start.length)}\n${text}\n${content.slice(content.indexOf(end))}`);
  process.stderr.write(`${path} updated\n`);
}

function postgresVersion(): string {
  try {
    return execFileSync('pg_config', ['--version']).toString().trim().replace('PostgreSQL ', '');
  } catch {
    return 'unknown';
  }
}
