import type { Lsn } from '../shared/lsn.js';
import type { AckPosition, Session } from './session.js';

/**
 * What the producer's Prometheus metrics (producer/prometheus.ts) show. Counts are plain
 * numbers bumped on the hot path (a labelled prom-client increment per row change would cost
 * more than the change) and published at each scrape; gauges read the running session when
 * scraped. Without a metrics port, prom-client is never loaded.
 */
export const tally = {
  transactions: 0,
  changes: { insert: 0, update: 0, delete: 0, truncate: 0 },
  /** Rows enqueued by table copies, by table (schema.name). */
  copiedRows: new Map<string, number>(),
  batches: 0,
  restarts: 0,
};

/** The producer's connection to Postgres: false from a lost connection until a session has its slot again. */
export const source = { connected: true };

/** Destinations detached for lagging (--max-destination-lag-bytes) and not registered again since. */
export const detachedDestinations = new Set<string>();

/** What the stream adds to a session's view: where the server is, and why reading pauses. */
export interface StreamView {
  /** The newest WAL position the walsender reported, or the end of the newest commit read. */
  serverLsn(): Lsn;
  /** Why reading the slot is paused (empty when it is not). */
  pauses(): Iterable<string>;
}

export type ShownSession = { session: Session; position: AckPosition; stream?: StreamView };
let shown: ShownSession | undefined;

/** The session the gauges show, if any. */
export function shownSession(): ShownSession | undefined {
  return shown;
}

/** The session the gauges show from now on: copying (no stream yet) or streaming. */
export function showSession(session: Session, position: AckPosition, stream?: StreamView): void {
  shown = { session, position, stream };
}

/** Between sessions the gauges show nothing. */
export function hideSession(): void {
  shown = undefined;
}
