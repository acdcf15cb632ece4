import { Counter, Gauge } from 'prom-client';
import { detachedDestinations, type ShownSession, shownSession, source, tally } from './metrics.js';

// The producer's Prometheus metrics, on this thread's default registry (served by
// shared/metrics): loaded only with a metrics port, as prom-client takes a tenth of a second
// of every start-up.

const PAUSE_REASONS = ['backlog', 'redis_memory', 'held', 'inbox', 'operator'];

const counter = (name: string, help: string, value: () => number) =>
  new Counter({
    name,
    help,
    collect() {
      this.reset();
      this.inc(value());
    },
  });
const gauge = (name: string, help: string, value: (view: ShownSession) => number) =>
  new Gauge({
    name,
    help,
    collect() {
      const shown = shownSession();
      if (shown) this.set(value(shown));
      else this.reset();
    },
  });
counter('pg_replicate_transactions_total', 'Transactions read from the slot (of the published tables).', () => tally.transactions);
counter('pg_replicate_batches_enqueued_total', "Batches put into the destinations' queues (copy chunks and streamed changes).", () => tally.batches);
counter('pg_replicate_producer_restarts_total', 'Producer sessions that ended in an error and were restarted from the slot.', () => tally.restarts);
new Counter({
  name: 'pg_replicate_changes_total',
  help: 'Row changes and truncates read from the slot, by operation.',
  labelNames: ['operation'],
  collect() {
    this.reset();
    for (const [operation, count] of Object.entries(tally.changes)) this.inc({ operation }, count);
  },
});
new Counter({
  name: 'pg_replicate_copied_rows_total',
  help: 'Rows enqueued by table copies (initial, added tables, new destinations, resyncs), by table.',
  labelNames: ['table'],
  collect() {
    this.reset();
    for (const [table, count] of tally.copiedRows) this.inc({ table }, count);
  },
});
new Gauge({
  name: 'pg_replicate_destination_detached',
  help: 'Destinations detached by this producer for leaving more than --max-destination-lag-bytes of WAL unapplied (1 until their consumer registers again).',
  labelNames: ['destination'],
  collect() {
    this.reset();
    for (const destination of detachedDestinations) this.set({ destination }, 1);
  },
});
new Gauge({
  name: 'pg_replicate_postgres_connected',
  help: 'Whether the producer reaches Postgres (0 while it reconnects after a lost connection, a restart or a failover).',
  collect() {
    this.set(source.connected ? 1 : 0);
  },
});
// LSNs as numbers: exact up to 2^53 bytes of WAL (8 PiB).
gauge('pg_replicate_slot_acknowledged_lsn', 'The LSN acknowledged to Postgres: every destination has applied everything before it.', ({ position }) =>
  Number(position.lsn),
);
gauge('pg_replicate_slot_lag_bytes', 'WAL between the newest position the server reported and the acknowledged LSN.', ({ position, stream }) =>
  stream ? Math.max(0, Number(stream.serverLsn() - position.lsn)) : 0,
);
gauge(
  'pg_replicate_transactions_in_flight',
  'Transactions (or table copies) read but not yet applied by every destination.',
  ({ session }) => session.tracker.pendingTransactions,
);
gauge('pg_replicate_backlog_batches', 'Batches the slowest destination has not applied yet.', ({ session }) => session.watcher.backlog);
gauge(
  'pg_replicate_backlog_bytes',
  'Bytes (approximate, as stored in Redis) the slowest destination has not applied yet.',
  ({ session }) => session.watcher.backlogBytes,
);
new Gauge({
  name: 'pg_replicate_destination_applied_lsn',
  help: 'Per destination, the LSN before which it has applied everything.',
  labelNames: ['destination'],
  collect() {
    this.reset();
    for (const [destination, lsn] of shownSession()?.session.watcher.appliedLsns ?? []) this.set({ destination }, Number(lsn));
  },
});
new Gauge({
  name: 'pg_replicate_slot_read_paused',
  help: 'Whether reading the slot is paused, by reason: backlog (destinations behind), redis_memory (Redis near its maxmemory), held (a table copy holds its changes), inbox (catalog look-ups), operator (paused through the control API).',
  labelNames: ['reason'],
  collect() {
    const paused = new Set(shownSession()?.stream?.pauses() ?? []);
    for (const reason of PAUSE_REASONS) this.set({ reason }, paused.has(reason) ? 1 : 0);
  },
});
