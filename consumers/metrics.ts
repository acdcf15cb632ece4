import { Counter, Gauge, Histogram } from 'prom-client';
import type { Batch } from '../shared/events.js';

/**
 * The consumers' Prometheus metrics, on this thread's default registry (served by
 * shared/metrics), labelled by destination: `pg-replicate run` applies several in one process.
 */
const labelNames = ['destination'];
const batches = new Counter({ name: 'pg_replicate_batches_applied_total', help: 'Batches applied (or found applied already) by this process.', labelNames });
const changes = new Counter({ name: 'pg_replicate_changes_applied_total', help: 'Streamed row changes and truncates in the batches applied.', labelNames });
const copyRows = new Counter({ name: 'pg_replicate_copy_rows_applied_total', help: 'Table copy rows in the batches applied.', labelNames });
const failures = new Counter({ name: 'pg_replicate_batch_failures_total', help: 'Failed attempts to apply a batch (each is retried in place).', labelNames });
const applySeconds = new Histogram({
  name: 'pg_replicate_apply_duration_seconds',
  help: 'From taking a batch to its commit at the destination, retries included.',
  labelNames,
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
});
const lagSeconds = new Histogram({
  name: 'pg_replicate_replication_lag_seconds',
  help: "From the oldest commit in a batch of streamed changes, in Postgres, to the batch's commit at the destination.",
  labelNames,
  buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
});

/** Per destination, its partitions that are not ok, and how. */
const failing = new Map<string, Map<number, 'retrying' | 'parked'>>();
new Gauge({
  name: 'pg_replicate_partitions_failing',
  help: 'Partitions whose next batch keeps failing: retrying, or parked (failed too often; retried slowly until the cause is fixed).',
  labelNames: ['destination', 'state'],
  collect() {
    this.reset();
    for (const [destination, partitions] of failing) {
      for (const state of ['retrying', 'parked'] as const) this.set({ destination, state }, [...partitions.values()].filter((each) => each === state).length);
    }
  },
});

/** Per destination, its quarantined tables (source table → quarantine). */
const quarantinedTables = new Map<string, Map<string, unknown>>();
new Gauge({
  name: 'pg_replicate_tables_quarantined',
  help: 'Tables the destination refused data of: their changes are skipped until `pg-replicate resync --table` copies them afresh.',
  labelNames,
  collect() {
    this.reset();
    for (const [destination, tables] of quarantinedTables) this.set({ destination }, tables.size);
  },
});

/** One destination's metrics, as its runner records them. */
export class DestinationMetrics {
  private readonly batches;
  private readonly changes;
  private readonly copyRows;
  private readonly failures;
  private readonly applySeconds;
  private readonly lagSeconds;

  constructor(
    destination: string,
    /** The runner's partitions that are not ok: shown as they are when scraped. */
    unhealthy: Map<number, 'retrying' | 'parked'>,
    /** Its quarantined tables, as the runner knows them. */
    quarantined: Map<string, unknown>,
  ) {
    this.batches = batches.labels(destination);
    this.changes = changes.labels(destination);
    this.copyRows = copyRows.labels(destination);
    this.failures = failures.labels(destination);
    this.applySeconds = applySeconds.labels(destination);
    this.lagSeconds = lagSeconds.labels(destination);
    // Shown from the start, at zero: a rate or an alert needs the series before the first event.
    for (const counter of [this.batches, this.changes, this.copyRows, this.failures]) counter.inc(0);
    failing.set(destination, unhealthy);
    quarantinedTables.set(destination, quarantined);
  }

  /**
   * A job's batch, and those applied with it, are durably applied (none: it was found applied
   * already). `startedAt` is when the job was taken, `committedAt` the batch's oldest commit
   * in Postgres (streamed changes only).
   */
  applied(applied: Batch[], startedAt: number, committedAt: number | undefined): void {
    const now = Date.now();
    this.batches.inc(Math.max(1, applied.length));
    this.changes.inc(applied.reduce((sum, batch) => sum + batch.changes.length, 0));
    this.copyRows.inc(applied.reduce((sum, batch) => sum + (batch.copy?.rows ?? 0), 0));
    this.applySeconds.observe((now - startedAt) / 1000);
    if (committedAt !== undefined) this.lagSeconds.observe(Math.max(0, now - committedAt) / 1000);
  }

  failed(): void {
    this.failures.inc();
  }
}
