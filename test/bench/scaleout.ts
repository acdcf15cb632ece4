/**
 * Scale-out: a destination bound by round trips — the BigQuery emulator answering each job
 * 250 ms after it arrives, as BigQuery's own scheduling does, and running jobs at once as
 * BigQuery does — 8 partitions, 16 tables (two in each partition: see createEvenTables), and
 * the same backlog of small transactions over them drained by 1, 2, 4 and 8 consumer processes
 * of that one destination, each applying one batch at a time (--concurrency 1), in batches of
 * at most 1 000 changes (so that round trips, not encoding rows, bound the rate). Then, for
 * reference, one process with the default concurrency (a batch of every partition at once).
 * Measured from the producer's start to the slot at the end of the WAL, as the CDC scenarios are.
 */
import { performance } from 'node:perf_hooks';
import { partitionOf } from '../../shared/keys.js';
import { BigQueryEmulator } from '../support/bigquery-emulator.js';
import { type CliProcess, currentWalLsn, waitForSlotAt } from '../support/pipeline.js';
import type { Bench } from './context.js';
import { quiesce } from './measure.js';

export interface ScalePoint {
  processes: number;
  /** Each process's --concurrency; undefined: the default, one batch per partition. */
  concurrency?: number;
  seconds: number;
  changesPerSecond: number;
}

export const SCALE_JOB_DELAY_MS = 250;
const SCALE_PARTITIONS = 8;
const PRODUCER_FLAGS = ['--partitions', String(SCALE_PARTITIONS), '--max-batch-changes', '1000'];
const TABLES = Array.from({ length: 16 }, (_, index) => `bench_scale_${index}`);

/** A procedure writing `total` changes in transactions of `per_tx`, each change to the next of the 16 tables in turn. */
const SCALE_WRITE = `
  CREATE OR REPLACE PROCEDURE bench_scale_write(total int, per_tx int) LANGUAGE plpgsql AS $$
  DECLARE i int := 0;
  BEGIN
    WHILE i < total LOOP
      FOR j IN 1..per_tx LOOP
        i := i + 1;
        EXECUTE format('INSERT INTO bench_scale_%s VALUES ($1, $2, $3, now())', i % 16) USING i, 'n' || i, i / 100.0;
      END LOOP;
      COMMIT;
    END LOOP;
  END $$;`;

/** The processes and --concurrency of each run: the curve, then the default for reference. */
const RUNS: { processes: number; concurrency?: number }[] = [
  ...[1, 2, 4, 8].map((processes) => ({ processes, concurrency: 1 })),
  { processes: 1, concurrency: undefined },
];

/**
 * The 16 tables, two in each partition. A table's partition is a hash of its OID: 16 tables
 * created at random leave some partitions with four and some with none, and the busiest
 * partition, applied one batch at a time, then bounds every run whatever the processes (a
 * different bound each run, as the OIDs change). Each candidate table is kept only while its
 * partition has fewer than two, so every partition carries an eighth of the load.
 */
async function createEvenTables(bench: Bench): Promise<void> {
  await bench.pg.query(TABLES.map((table) => `DROP TABLE IF EXISTS ${table};`).join('\n'));
  const perPartition = new Array<number>(SCALE_PARTITIONS).fill(0);
  for (let kept = 0, candidate = 0; kept < TABLES.length; candidate++) {
    const name = `bench_scale_candidate_${candidate}`;
    await bench.pg.query(
      `CREATE TABLE ${name} (id bigint PRIMARY KEY, name text, amount numeric(12,2), updated timestamptz) WITH (autovacuum_enabled = false)`,
    );
    const { rows } = await bench.pg.query(`SELECT '${name}'::regclass::oid AS oid`);
    const partition = partitionOf(Number(rows[0].oid), SCALE_PARTITIONS);
    if (perPartition[partition] < TABLES.length / SCALE_PARTITIONS) {
      perPartition[partition]++;
      await bench.pg.query(`ALTER TABLE ${name} RENAME TO ${TABLES[kept++]}`);
    } else {
      await bench.pg.query(`DROP TABLE ${name}`);
    }
  }
}

export async function benchScaleOut(bench: Bench, changes: number): Promise<ScalePoint[]> {
  const emulator = await BigQueryEmulator.start({ jobDelayMs: SCALE_JOB_DELAY_MS, parallelJobs: true });
  const points: ScalePoint[] = [];
  try {
    for (const [run, { processes, concurrency }] of RUNS.entries()) {
      await createEvenTables(bench);
      await bench.pg.query(SCALE_WRITE);
      const pipeline = bench.pipeline('benchscale');
      await bench.pg.query(`CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${TABLES.join(', ')}`);
      const dataset = `scale_${run}`;
      let producer = pipeline.producer(PRODUCER_FLAGS);
      const env: Record<string, string> = concurrency === undefined ? {} : { CONSUMER_CONCURRENCY: String(concurrency) };
      const consumers: CliProcess[] = Array.from({ length: processes }, () => pipeline.bigquery('bench', emulator.url, dataset, env));
      await pipeline.waitForCopy(bench.redis.client);
      await producer.stop();
      process.stderr.write(`scale-out, ${processes} consumer processes, concurrency ${concurrency ?? 'default'}: writing ${changes} changes…\n`);
      await bench.pg.query(`CALL bench_scale_write(${changes}, 10)`);
      const end = await currentWalLsn(bench.pg);
      await quiesce(bench.pg);
      const started = performance.now();
      producer = pipeline.producer(PRODUCER_FLAGS);
      await waitForSlotAt(bench.pg, pipeline.slot, end, { stallMs: 30 * 60_000, intervalMs: 10 });
      const seconds = (performance.now() - started) / 1000;
      points.push({ processes, concurrency, seconds, changesPerSecond: changes / seconds });
      process.stderr.write(`  ${(changes / seconds).toFixed(0)} changes/s\n`);
      await Promise.all([producer.stop(), ...consumers.map((consumer) => consumer.stop())]);
      await bench.pg.query(`DROP PUBLICATION ${pipeline.publication}; SELECT pg_drop_replication_slot('${pipeline.slot}')`);
    }
  } finally {
    await emulator.close();
  }
  return points;
}
