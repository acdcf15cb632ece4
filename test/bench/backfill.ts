/**
 * Backfill scenarios: a table of one shape copied by a new pipeline (producer `--mode copy`,
 * its consumer already running), timed from the producer's launch to its exit, in rounds
 * paired with raw binary COPY and, into DuckDB, with the manual path.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import copyStreams from 'pg-copy-streams';
import { DuckDbDestination } from '../../consumers/duckdb/destination.js';
import { JOIN_LIMITS } from '../../consumers/lookahead.js';
import { Catalog, describeTable } from '../../producer/catalog.js';
import { PRODUCER_DEFAULTS } from '../../producer/options.js';
import { COPY_TEXT_OPTIONS } from '../../shared/csv.js';
import { waitFor } from '../support/pipeline.js';
import type { Bench, Result, Sink } from './context.js';
import { cpuNow, cpuSince, loggedAt, quiesce, sampleRedis, sampleRss, timeRawCopy } from './measure.js';
import { loadShapeSql, type Shape, timeManualPath } from './shapes.js';

export interface BackfillOptions {
  rows: number;
  rounds: number;
  sink?: Sink;
  /** Time the manual path in each round (into DuckDB only). */
  manual?: boolean;
  /** Time the DuckDB destination alone on the same chunks, once. */
  duckdbAlone?: boolean;
  name?: string;
}

export async function benchBackfill(bench: Bench, shape: Shape, options: BackfillOptions): Promise<Result> {
  const { rows, rounds, sink = 'duckdb' } = options;
  const name = options.name ?? `backfill, ${shape.name}${sink === 'postgres' ? ' → Postgres' : ''}`;
  const table = bench.table('bench_rows');
  process.stderr.write(`${name}: loading ${rows} rows…\n`);
  await bench.pg.query(loadShapeSql(shape, table, rows));
  await bench.pg.query(`VACUUM ANALYZE ${table}`);
  const bytesPerRow = await copyBytesPerRow(bench, table);
  await quiesce(bench.pg);
  const duckdbAloneSeconds = options.duckdbAlone ? await timeDuckdbAlone(bench, table) : undefined;
  // The machine's speed drifts from one minute to the next (shared cores): each round times
  // raw COPY, the manual path and the pipeline back to back; the median round is reported.
  const measured: Result[] = [];
  for (let round = 0; round < rounds; round++) {
    await quiesce(bench.pg);
    const rawSeconds = await timeRawCopy(bench.pg.url, table);
    let manualSeconds: number | undefined;
    if (options.manual) {
      await quiesce(bench.pg);
      manualSeconds = await timeManualPath(bench.pg.url, table, shape);
    }
    await quiesce(bench.pg);
    const run = await backfillOnce(bench, table, sink);
    process.stderr.write(
      `  round ${round + 1}: raw ${rawSeconds.toFixed(2)} s, manual ${manualSeconds?.toFixed(2) ?? '-'} s, pipeline ${run.seconds.toFixed(2)} s\n`,
    );
    measured.push({ ...run, name, count: rows, rawSeconds, rawName: 'binary COPY … TO STDOUT', manualSeconds, bytesPerRow, duckdbAloneSeconds });
  }
  await bench.pg.query(`DROP TABLE ${table}`);
  const ratio = (result: Result) => result.rawSeconds / result.seconds;
  const byRatio = [...measured].sort((a, b) => ratio(a) - ratio(b));
  return {
    ...byRatio[Math.floor(byRatio.length / 2)],
    roundRatios: measured.map(ratio),
    manualRatios: options.manual ? measured.map((result) => result.manualSeconds! / result.seconds) : undefined,
  };
}

/** The table's bytes per row in Postgres' text COPY format (what the pipeline carries). */
async function copyBytesPerRow(bench: Bench, table: string): Promise<number> {
  const { rows } = await bench.pg.query(`SELECT avg(octet_length(t::text)) AS bytes FROM (SELECT * FROM ${table} LIMIT 10000) t`);
  return Math.round(Number(rows[0].bytes));
}

/** One backfill of `table` by a new pipeline, its consumer started first. */
async function backfillOnce(bench: Bench, table: string, sink: Sink) {
  const pipeline = bench.pipeline('benchcopy');
  await bench.pg.query(`CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${table}`);
  if (sink === 'postgres') await bench.resetTarget();
  const consumer = bench.consumer(pipeline, sink);
  // A consumer is a service that is up before a copy starts: its own start-up is not the copy's.
  await waitFor('the consumer to start', async () => consumer.stderr.includes('waiting for the producer'));
  const consumerPeak = sampleRss(consumer);
  const redisPeak = sampleRedis(bench.redis.client);
  const cpuFrom = await cpuNow(bench.pg, bench.redis.client, consumer);
  const started = performance.now();
  const producer = pipeline.producer(['--mode', 'copy']);
  const producerPeak = sampleRss(producer);
  const code = await producer.exited;
  const seconds = (performance.now() - started) / 1000;
  const cpu = cpuSince(cpuFrom, await cpuNow(bench.pg, bench.redis.client, consumer), producerPeak);
  await consumer.stop();
  if (code !== 0) throw new Error(`producer failed: ${producer.stderr}`);
  // The end is the producer seeing every chunk applied (it polls every 10 ms).
  const copySeconds = (loggedAt(producer.stderr, 'copy applied by every destination') - loggedAt(producer.stderr, 'copying tables')) / 1000;
  // Chunks being written are not yet part of the backlog: one per copy connection on top of it.
  const bound = PRODUCER_DEFAULTS.maxBacklogBytes + PRODUCER_DEFAULTS.copyConnections * PRODUCER_DEFAULTS.copyChunkBytes;
  await bench.pg.query(`DROP PUBLICATION ${pipeline.publication}`);
  await bench.pg.query(`SELECT pg_drop_replication_slot('${pipeline.slot}')`);
  return { seconds, copySeconds, producerPeakMb: producerPeak().mb, consumerPeakMb: consumerPeak().mb, ...redisPeak(bound), cpu };
}

/**
 * The DuckDB destination alone: the table's COPY text (read beforehand, as the producer's
 * chunks would carry it) applied chunk by chunk into a fresh file, as many chunks to a
 * transaction as the consumer joins when they wait queued. What DuckDB needs for the copy when
 * it has the machine to itself.
 */
async function timeDuckdbAlone(bench: Bench, table: string): Promise<number> {
  const client = new pg.Client({ connectionString: bench.pg.url });
  await client.connect();
  // Described as the producer describes a table it copies (with Postgres' statistics).
  const oid = Number((await client.query('SELECT $1::regclass::oid AS oid', [table])).rows[0].oid);
  const relation = await describeTable(client, { schema: 'public', name: table, oid, kind: 'r', columns: null, rowFilter: null }, new Catalog(client));
  const pieces: Buffer[] = [];
  for await (const piece of client.query(copyStreams.to(`COPY ${table} TO STDOUT (${COPY_TEXT_OPTIONS})`)) as AsyncIterable<Buffer>) pieces.push(piece);
  await client.end();
  const text = Buffer.concat(pieces);
  pieces.length = 0;
  const chunks: Buffer[] = [];
  for (let start = 0, lines = 0, at = 0; at < text.length; ) {
    at = text.indexOf(0x0a, at) + 1 || text.length;
    if (++lines === PRODUCER_DEFAULTS.copyChunkRows || at === text.length) {
      chunks.push(text.subarray(start, at));
      start = at;
      lines = 0;
    }
  }
  const directory = mkdtempSync(join(tmpdir(), 'pgr-bench-duckdb-'));
  const destination = await DuckDbDestination.open(join(directory, 'alone.duckdb'));
  const started = performance.now();
  for (let first = 0; first < chunks.length; ) {
    let end = first + 1;
    let bytes = chunks[first].length;
    while (end < chunks.length && end - first < JOIN_LIMITS.batches && bytes + chunks[end].length <= JOIN_LIMITS.bytes) bytes += chunks[end++].length;
    const steps = chunks
      .slice(first, end)
      .map((copyText, index) => ({ kind: 'copy' as const, relation, replace: first + index === 0, merge: false, copyText: [copyText], rows: 0 }));
    const state = { copyLsn: 1n, copyChunk: end - 1, copyDone: end === chunks.length, applied: { lsn: 1n, ordinal: 0 } };
    await destination.apply(steps, new Map([[relation.oid, state]]));
    first = end;
  }
  const seconds = (performance.now() - started) / 1000;
  await destination.close();
  rmSync(directory, { recursive: true, force: true });
  return seconds;
}
