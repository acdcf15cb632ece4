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
 * 2,000,000 and 1,000,000).
 */
import { startPostgres, startRedis } from '../support/services.js';
import { benchBackfill } from './backfill.js';
import { benchCdc, benchLatency, type Latency, PGBENCH_TABLES } from './cdc.js';
import { Bench, size } from './context.js';
import { report, targetsOf } from './report.js';
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
try {
  if (ROWS > 0) {
    for (const shape of chosenShapes) {
      bench.results.push(await benchBackfill(bench, shape, { rows: ROWS, rounds: ROUNDS, manual: true, duckdbAlone: shape === NARROW }));
    }
  }
  if (CHANGES > 0) bench.results.push(await benchCdc(bench, { name: CDC_SMALL, count: CHANGES, write: `CALL bench_write(${CHANGES}, 10)` }));
  if (BIG_INSERT > 0)
    bench.results.push(await benchCdc(bench, { name: 'CDC, one transaction inserting every row', count: BIG_INSERT, write: insertRows(BIG_INSERT) }));
  if (BIG_UPDATE > 0) {
    const write = 'UPDATE bench_changes SET amount = amount + 1, updated = now()';
    bench.results.push(await benchCdc(bench, { name: 'CDC, one transaction updating every row', count: BIG_UPDATE, write, prepare: insertRows(BIG_UPDATE) }));
  }
  if (PGBENCH > 0) {
    bench.results.push(
      await benchCdc(bench, {
        name: 'CDC, pgbench-like transactions over four tables (3 updates, 1 insert, 1 delete)',
        count: 5 * PGBENCH,
        write: `CALL bench_pgbench(${PGBENCH})`,
        tables: PGBENCH_TABLES,
        published: ['bench_accounts', 'bench_tellers', 'bench_branches', 'bench_history'],
      }),
    );
  }
  if (HUGE_ROWS > 0) bench.results.push(await benchBackfill(bench, NARROW, { rows: HUGE_ROWS, rounds: 1, name: MEMORY_RUN }));
  if (PG_ROWS > 0) bench.results.push(await benchBackfill(bench, NARROW, { rows: PG_ROWS, rounds: 3, sink: 'postgres' }));
  if (PG_CHANGES > 0) {
    bench.results.push(await benchCdc(bench, { name: `${CDC_SMALL} → Postgres`, count: PG_CHANGES, write: `CALL bench_write(${PG_CHANGES}, 10)` }, 'postgres'));
  }
  if (LATENCY_SECONDS > 0) {
    for (const rate of [5_000, 20_000]) latencies.push(await benchLatency(bench, rate, LATENCY_SECONDS));
  }
} finally {
  await bench.stop();
}
report(bench.results, targetsOf(bench.results, latencies, { memoryRun: MEMORY_RUN }));
