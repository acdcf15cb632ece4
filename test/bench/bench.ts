/**
 * npm run bench: what a user waits for, next to what they would use instead in the same run.
 * Backfills of four row shapes from the producer's launch to its exit, beside raw binary COPY
 * and the manual path (COPY csv to a file, DuckDB read_csv); CDC beside pg_recvlogical draining
 * the same WAL; commit → visible latency at steady rates; the peak memory of the producer, the
 * consumer and Redis, and the CPU each part used. Writes the report into docs/benchmarks.md and
 * its main table into README.md, each target of the performance issue with PASS or FAIL.
 *
 * Sizes (0 skips a scenario): BENCH_ROWS (each shape's backfill, default 2,000,000) in
 * BENCH_ROUNDS rounds (default 5), BENCH_SHAPES (names to run, default all: narrow, wide,
 * json, arrays); BENCH_CHANGES (small transactions, default 1,000,000); BENCH_BIG_INSERT
 * (one transaction, default 5,000,000); BENCH_BIG_UPDATE (one transaction, default
 * 1,000,000); BENCH_PGBENCH (pgbench-like transactions over four tables, default 200,000);
 * BENCH_HUGE_ROWS (memory-flatness backfill, default 10,000,000); BENCH_LATENCY_SECONDS (each
 * steady rate, default 60); BENCH_PG_ROWS and BENCH_PG_CHANGES (into Postgres, defaults
 * 2,000,000 and 1,000,000); BENCH_SCALE_CHANGES (scale-out into the BigQuery emulator with
 * 1, 2, 4 and 8 consumer processes, default 100,000).
 */
import { startPostgres, startRedis } from '../support/services.js';
import { benchBackfill } from './backfill.js';
import { benchCdc, benchLatency, type CdcWorkload, type Latency, PGBENCH_TABLES } from './cdc.js';
import { Bench, type Result, type Sink, size } from './context.js';
import { report, targetsOf } from './report.js';
import { benchScaleOut, type ScalePoint } from './scaleout.js';
import { ARRAYS, JSON_DOCUMENTS, NARROW, type Shape, WIDE_TEXT } from './shapes.js';

const ROWS = size('BENCH_ROWS', 2_000_000);
const ROUNDS = size('BENCH_ROUNDS', 5);
const CHANGES = size('BENCH_CHANGES', 1_000_000);
const BIG_INSERT = size('BENCH_BIG_INSERT', 5_000_000);
const BIG_UPDATE = size('BENCH_BIG_UPDATE', 1_000_000);
const PGBENCH = size('BENCH_PGBENCH', 200_000);
const HUGE_ROWS = size('BENCH_HUGE_ROWS', 10_000_000);
const LATENCY_SECONDS = size('BENCH_LATENCY_SECONDS', 60);
const PG_ROWS = size('BENCH_PG_ROWS', 2_000_000);
const PG_CHANGES = size('BENCH_PG_CHANGES', 1_000_000);
const SCALE_CHANGES = size('BENCH_SCALE_CHANGES', 100_000);
const SHAPES: Record<string, Shape> = { narrow: NARROW, wide: WIDE_TEXT, json: JSON_DOCUMENTS, arrays: ARRAYS };
const chosenShapes = (process.env.BENCH_SHAPES ?? Object.keys(SHAPES).join(',')).split(',').map((key) => {
  const shape = SHAPES[key.trim()];
  if (!shape) throw new Error(`BENCH_SHAPES: no shape "${key}" (there are ${Object.keys(SHAPES).join(', ')})`);
  return shape;
});
const MEMORY_RUN = 'backfill, large table (memory)';
const CDC_SMALL = 'CDC, transactions of 10 changes (60 % insert, 30 % update, 10 % delete)';
const insertRows = (count: number) => `INSERT INTO bench_changes SELECT g, 'n' || g, g / 100.0, now() FROM generate_series(1, ${count}) g`;

const bench = await Bench.start(startPostgres, startRedis);
const latencies: Latency[] = [];
const failures: string[] = [];
const scale: ScalePoint[] = [];
/** Runs a scenario; one that fails is reported as failed, and the others still run. */
async function scenario<T>(name: string, run: () => Promise<T>, keep: (result: T) => void): Promise<void> {
  try {
    keep(await run());
  } catch (error) {
    process.stderr.write(`${name} failed: ${(error as Error).stack}\n`);
    failures.push(`${name}: ${(error as Error).message.split('\n')[0]}`);
  }
}
const keep = (result: Result) => bench.results.push(result);
try {
  if (ROWS > 0) {
    for (const shape of chosenShapes) {
      await scenario(
        `backfill, ${shape.name}`,
        () => benchBackfill(bench, shape, { rows: ROWS, rounds: ROUNDS, manual: true, duckdbAlone: shape === NARROW }),
        keep,
      );
    }
  }
  const cdc = (workload: CdcWorkload, sink?: Sink) => (workload.count > 0 ? scenario(workload.name, () => benchCdc(bench, workload, sink), keep) : undefined);
  await cdc({ name: CDC_SMALL, count: CHANGES, write: `CALL bench_write(${CHANGES}, 10)` });
  await cdc({ name: 'CDC, one transaction inserting every row', count: BIG_INSERT, write: insertRows(BIG_INSERT) });
  await cdc({
    name: 'CDC, one transaction updating every row',
    count: BIG_UPDATE,
    write: 'UPDATE bench_changes SET amount = amount + 1, updated = now()',
    prepare: insertRows(BIG_UPDATE),
  });
  await cdc({
    name: 'CDC, pgbench-like transactions over four tables (3 updates, 1 insert, 1 delete)',
    count: 5 * PGBENCH,
    write: `CALL bench_pgbench(${PGBENCH})`,
    tables: PGBENCH_TABLES,
    published: ['bench_accounts', 'bench_tellers', 'bench_branches', 'bench_history'],
  });
  if (HUGE_ROWS > 0) await scenario(MEMORY_RUN, () => benchBackfill(bench, NARROW, { rows: HUGE_ROWS, rounds: 1, name: MEMORY_RUN }), keep);
  if (PG_ROWS > 0) await scenario('backfill → Postgres', () => benchBackfill(bench, NARROW, { rows: PG_ROWS, rounds: 3, sink: 'postgres' }), keep);
  await cdc({ name: `${CDC_SMALL} → Postgres`, count: PG_CHANGES, write: `CALL bench_write(${PG_CHANGES}, 10)` }, 'postgres');
  if (SCALE_CHANGES > 0)
    await scenario(
      'scale-out',
      () => benchScaleOut(bench, SCALE_CHANGES),
      (points) => scale.push(...points),
    );
  if (LATENCY_SECONDS > 0) {
    for (const rate of [5_000, 20_000]) {
      await scenario(
        `latency at ${rate} changes/s`,
        () => benchLatency(bench, rate, LATENCY_SECONDS),
        (latency) => latencies.push(latency),
      );
    }
  }
} finally {
  await bench.stop();
}
const failed = failures.map((failure) => ({ what: failure, measured: 'the scenario failed (its error is on stderr)', ok: false }));
report(bench.results, [...failed, ...targetsOf(bench.results, latencies, scale, { memoryRun: MEMORY_RUN })], scale);
