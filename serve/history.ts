import type { PipelineStatus } from '../cli/status.js';

/** One sample of a pipeline, for the status page's plots. */
export interface Point {
  /** When, in ms since the epoch. */
  t: number;
  lagBytes: number | null;
  lagSeconds: number | null;
  /** Per destination: changes and copied rows applied per second since the sample before. */
  destinations: Record<string, { changesPerSecond: number; rowsPerSecond: number }>;
}

const HOUR_MS = 3_600_000;

/**
 * The last hour of each pipeline's lag and throughput, sampled by the server. Throughput comes
 * from the destinations' applied totals (counted in Redis once per batch), so it is what the
 * destination took, whichever process applied it.
 */
export class History {
  private readonly points = new Map<string, Point[]>();
  /** Each pipeline's newest status sampled: what the page shows, so that its views cost Postgres and Redis nothing. */
  private readonly latest = new Map<string, PipelineStatus>();
  private readonly lastTotals = new Map<string, { t: number; totals: Map<string, { changes: number; rows: number }> }>();

  add(status: PipelineStatus, t = Date.now()): void {
    this.latest.set(status.pipeline, status);
    const previous = this.lastTotals.get(status.pipeline);
    const totals = new Map(status.destinations.map((each) => [each.name, { changes: each.appliedChanges, rows: each.appliedRows }]));
    this.lastTotals.set(status.pipeline, { t, totals });
    const seconds = previous ? (t - previous.t) / 1000 : 0;
    const destinations: Point['destinations'] = {};
    for (const [name, now] of totals) {
      // Rates need two samples: the first point has the lag alone.
      const before = previous?.totals.get(name);
      if (!before || seconds <= 0) continue;
      // A total that went down (the pipeline dropped and made again) starts over.
      destinations[name] = {
        changesPerSecond: Math.max(0, now.changes - before.changes) / seconds,
        rowsPerSecond: Math.max(0, now.rows - before.rows) / seconds,
      };
    }
    const points = this.points.get(status.pipeline) ?? [];
    points.push({ t, lagBytes: status.slotLagBytes ?? null, lagSeconds: status.slotLagSeconds ?? null, destinations });
    while (points.length > 0 && points[0].t < t - HOUR_MS) points.shift();
    this.points.set(status.pipeline, points);
  }

  of(pipeline: string): Point[] {
    return this.points.get(pipeline) ?? [];
  }

  latestOf(pipeline: string): PipelineStatus | undefined {
    return this.latest.get(pipeline);
  }

  forget(pipeline: string): void {
    this.points.delete(pipeline);
    this.latest.delete(pipeline);
    this.lastTotals.delete(pipeline);
  }
}
