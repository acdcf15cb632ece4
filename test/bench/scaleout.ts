/**
 * Scale-out: a destination bound by round trips — the BigQuery emulator answering each job
 * 250 ms after it arrives, as BigQuery's own scheduling does — 8 partitions, 16 tables, and
 * the same backlog of small transactions over them drained by 1, 2, 4 and 8 consumer processes
 * of that one destination, in batches of at most 1 000 changes (so that round trips, not
 * encoding rows, bound the rate). Measured from the producer's start to the slot at the end of
 * the WAL, as the CDC scenarios are.
 */
import { performance } from 'node:perf_hooks';
import { BigQueryEmulator } from '../support/bigquery-emulator.js';
import { type CliProcess, currentWalLsn, waitForSlotAt } from '../support/pipeline.js';
import type { Bench } from './context.js';
import { quiesce } from './measure.js';

export interface ScalePoint {
  processes: number;
  seconds: number;
  changesPerSecond: number;
}

export const SCALE_JOB_DELAY_MS = 250;
const PRODUCER_FLAGS = ['--partitions', '8', '--max-batch-changes', '1000'];
const TABLES = Array.from({ length: 16 }, (_, index) => `bench_scale_${index}`);

/** The 16 tables, and a procedure writing `total` changes in transactions of `per_tx`, each change to the next table in turn. */
const SCALE_TABLES = `
  ${TABLES.map((table) => `DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (id bigint PRIMARY KEY, name text, amount numeric(12,2), updated timestamptz) WITH (autovacuum_enabled = false);`).join('\n')}
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

export async function benchScaleOut(bench: Bench, changes: number, processCounts = [1, 2, 4, 8]): Promise<ScalePoint[]> {
  const emulator = await BigQueryEmulator.start({ jobDelayMs: SCALE_JOB_DELAY_MS });
  const points: ScalePoint[] = [];
  try {
    for (const processes of processCounts) {
      await bench.pg.query(SCALE_TABLES);
      const pipeline = bench.pipeline('benchscale');
      await bench.pg.query(`CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${TABLES.join(', ')}`);
      const dataset = `scale_${processes}`;
      let producer = pipeline.producer(PRODUCER_FLAGS);
      const consumers: CliProcess[] = Array.from({ length: processes }, () => pipeline.bigquery('bench', emulator.url, dataset));
      await pipeline.waitForCopy(bench.redis.client);
      await producer.stop();
      process.stderr.write(`scale-out, ${processes} consumer processes: writing ${changes} changes…\n`);
      await bench.pg.query(`CALL bench_scale_write(${changes}, 10)`);
      const end = await currentWalLsn(bench.pg);
      await quiesce(bench.pg);
      const started = performance.now();
      producer = pipeline.producer(PRODUCER_FLAGS);
      await waitForSlotAt(bench.pg, pipeline.slot, end, { stallMs: 30 * 60_000, intervalMs: 10 });
      const seconds = (performance.now() - started) / 1000;
      points.push({ processes, seconds, changesPerSecond: changes / seconds });
      process.stderr.write(`  ${(changes / seconds).toFixed(0)} changes/s\n`);
      await Promise.all([producer.stop(), ...consumers.map((consumer) => consumer.stop())]);
      await bench.pg.query(`DROP PUBLICATION ${pipeline.publication}; SELECT pg_drop_replication_slot('${pipeline.slot}')`);
    }
  } finally {
    await emulator.close();
  }
  return points;
}
