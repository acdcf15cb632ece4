import { Queue } from 'bullmq';
import type { Health } from '../consumers/options.js';
import type { QuarantineReport } from '../consumers/quarantine.js';
import { aliveConsumers } from '../consumers/registration.js';
import { connectPostgresOnce } from '../producer/preflight.js';
import { UserError } from '../shared/errors.js';
import { keys, QUEUE_PREFIX, queueName } from '../shared/keys.js';
import { heardQueue, readApplied, readCopyApplied, readCopyProgress, readPipelineState, readTableSyncs } from '../shared/redis.js';
import { connectRedisOnce } from '../shared/redistarget.js';

export interface PipelineStatus {
  pipeline: string;
  slot: string;
  publication: string;
  copy: string;
  partitions: number;
  /** Reading the slot is paused by an operator (`serve`'s API): WAL is held until it is resumed. */
  paused: boolean;
  /** The initial copy, per table: CTID ranges in the queues out of all, rows, and rows per second so far. */
  copyProgress: {
    table: string;
    rangesDone: number;
    rangesTotal: number;
    rows: number;
    rowsPerSecond: number;
    /** Postgres' estimate of the table's rows, and those applied by the slowest destination. */
    estimatedRows?: number;
    appliedRows: number;
  }[];
  /** Copies beside the stream in progress (added tables, resyncs, new destinations), per table. */
  tableSyncs: { table: string; destinations: string[] | 'all'; reason: string; rangesDone: number; rangesTotal: number | null; rows: number }[];
  slotConfirmedFlushLsn?: string | null;
  slotActive?: boolean;
  /** Postgres 13+: reserved, extended, unreserved or lost (invalidated). */
  slotWalStatus?: string | null;
  /** WAL the slot holds on the server: from its confirmed position to the current one. */
  slotLagBytes?: number | null;
  /**
   * How long the newest WAL flushed on the server waits for the slot to confirm it (the
   * walsender's flush_lag): 0 when caught up, null with no producer connected.
   */
  slotLagSeconds?: number | null;
  /** Requests the producer refused and moved aside (malformed, or for a table not published), the newest last. */
  refusedRequests: { request: string; error: string; at: string }[];
  /** The producer's connection to Postgres, as it last recorded it. */
  postgres?: { state: 'connected' | 'reconnecting'; since?: string; error?: string };
  destinations: {
    name: string;
    /** Everything up to this LSN is durably applied at the destination. */
    appliedLsn: string | null;
    pendingBatches: number;
    /** Changes and copied rows applied since the pipeline began (counted once per batch, however often it was delivered). */
    appliedChanges: number;
    appliedRows: number;
    state: 'ok' | 'retrying' | 'parked' | 'detached';
    /** Consumers of this destination alive now (heartbeats). */
    consumers: number;
    /** Where the destination put each source table ("schema.name" → its name there), as it reported. */
    places: Record<string, string>;
    /** Tables the destination refused data of, by source table: why, since when, and the fix. Their changes are skipped until a resync copies them afresh. */
    quarantined: Record<string, QuarantineReport>;
    /** Why and since when it is detached (it no longer holds the slot; its consumer, when it runs, registers again for a fresh copy). */
    detached?: { reason: string; since: string };
    errors: { partition: number; attempts: number; error: string; since: string }[];
    appliedBatches: Record<string, string>;
  }[];
}

export async function pipelineStatus(options: { pipeline: string; redisUrl: string; pgUrl?: string }): Promise<PipelineStatus> {
  const redis = await connectRedisOnce(options.redisUrl);
  try {
    const state = await readPipelineState(redis, options.pipeline);
    if (!state) throw new UserError(`Redis has no pipeline "${options.pipeline}". Check --pipeline and --redis-url, or start its producer first.`);
    const status: PipelineStatus = {
      pipeline: options.pipeline,
      slot: state.slot,
      publication: state.publication,
      copy: state.copy ?? 'none',
      partitions: state.partitions,
      paused: (await redis.hget(keys.state(options.pipeline), 'paused')) === '1',
      copyProgress: [],
      tableSyncs: [],
      refusedRequests: [],
      destinations: [],
    };
    status.refusedRequests = (await redis.lrange(keys.refusedRequests(options.pipeline), -10, -1)).map((text) => JSON.parse(text));
    const postgres = await redis.hget(keys.state(options.pipeline), 'postgres');
    if (postgres) status.postgres = JSON.parse(postgres);
    const copyApplied = await readCopyApplied(redis, options.pipeline);
    for (const [oid, progress] of await readCopyProgress(redis, options.pipeline)) {
      const seconds = ((progress.updatedAt ?? Date.now()) - progress.startedAt) / 1000;
      status.copyProgress.push({
        table: `${progress.schema}.${progress.name}`,
        rangesDone: progress.done.length,
        rangesTotal: progress.ranges,
        rows: progress.rows,
        rowsPerSecond: seconds > 0 ? Math.round(progress.rows / seconds) : 0,
        ...(progress.estimatedRows === undefined ? {} : { estimatedRows: progress.estimatedRows }),
        appliedRows: copyApplied.get(oid) ?? 0,
      });
    }
    for (const [oid, record] of await readTableSyncs(redis, options.pipeline)) {
      const { progress } = record;
      status.tableSyncs.push({
        table: progress ? `${progress.schema}.${progress.name}` : `table OID ${oid}`,
        destinations: record.destinations ?? 'all',
        reason: record.reason,
        rangesDone: progress?.done.length ?? 0,
        rangesTotal: progress?.ranges ?? null,
        rows: progress?.rows ?? 0,
      });
    }
    if (options.pgUrl) {
      const client = await connectPostgresOnce(options.pgUrl, 'pg-replicate status');
      try {
        const row = (
          await client.query(
            `SELECT confirmed_flush_lsn::text AS lsn, active, to_jsonb(s) ->> 'wal_status' AS wal_status,
                    pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, confirmed_flush_lsn)::int8 AS lag,
                    CASE WHEN r.pid IS NULL THEN NULL ELSE COALESCE(EXTRACT(epoch FROM r.flush_lag), 0) END::float8 AS lag_seconds
               FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE slot_name = $1`,
            [state.slot],
          )
        ).rows[0];
        status.slotConfirmedFlushLsn = row?.lsn ?? null;
        status.slotActive = row?.active ?? false;
        status.slotWalStatus = row?.wal_status ?? null;
        status.slotLagBytes = row?.lag === undefined || row.lag === null ? null : Number(row.lag);
        status.slotLagSeconds = row?.lag_seconds ?? null;
      } finally {
        await client.end();
      }
    }
    for (const name of state.destinations) {
      let pending = 0;
      for (let partition = 0; partition < state.partitions; partition++) {
        const queue = heardQueue(new Queue(queueName(options.pipeline, name, partition), { connection: redis, prefix: QUEUE_PREFIX }));
        const counts = await queue.getJobCounts('wait', 'active', 'delayed', 'prioritized');
        pending += Object.values(counts).reduce((sum, count) => sum + count, 0);
        await queue.close();
      }
      const health = Object.entries(await redis.hgetall(keys.health(options.pipeline, name))).map(([partition, text]) => ({
        partition: Number(partition),
        ...(JSON.parse(text) as Health),
      }));
      const errors = health.flatMap((entry) =>
        entry.state === 'ok' ? [] : [{ partition: entry.partition, attempts: entry.attempts, error: entry.error, since: entry.since }],
      );
      const applied = await readApplied(redis, options.pipeline, name);
      const totals = await redis.hmget(keys.totals(options.pipeline, name), 'changes', 'rows');
      status.destinations.push({
        name,
        consumers: await aliveConsumers(redis, options.pipeline, name),
        places: await redis.hgetall(keys.places(options.pipeline, name)),
        quarantined: Object.fromEntries(
          Object.entries(await redis.hgetall(keys.quarantined(options.pipeline, name))).map(([table, text]) => [table, JSON.parse(text)]),
        ),
        appliedLsn: (await redis.hget(keys.state(options.pipeline), `applied:${name}`)) ?? null,
        pendingBatches: pending,
        appliedChanges: Number(totals[0] ?? 0),
        appliedRows: Number(totals[1] ?? 0),
        state: health.some((entry) => entry.state === 'parked') ? 'parked' : errors.length > 0 ? 'retrying' : 'ok',
        errors,
        appliedBatches: Object.fromEntries([...applied].map(([partition, mark]) => [String(partition), `${mark.epoch}:${mark.seq}`])),
      });
    }
    for (const [field, text] of Object.entries(await redis.hgetall(keys.state(options.pipeline)))) {
      const name = field.startsWith('detached:') ? field.slice('detached:'.length) : undefined;
      if (!name || state.destinations.includes(name)) continue;
      status.destinations.push({
        name,
        consumers: await aliveConsumers(redis, options.pipeline, name),
        places: {},
        quarantined: {},
        appliedLsn: null,
        pendingBatches: 0,
        appliedChanges: 0,
        appliedRows: 0,
        state: 'detached',
        detached: JSON.parse(text),
        errors: [],
        appliedBatches: {},
      });
    }
    return status;
  } finally {
    redis.disconnect();
  }
}

export function formatStatus(status: PipelineStatus): string {
  const lines = [`pipeline ${status.pipeline}: slot ${status.slot}, publication ${status.publication}, copy ${status.copy}`];
  if (status.paused) lines.push('reading the slot is paused by an operator: WAL is held until it is resumed');
  for (const table of status.copyProgress) {
    const estimate = table.estimatedRows === undefined ? '' : ` of about ${table.estimatedRows}`;
    lines.push(
      `copy ${table.table}: ${table.rangesDone}/${table.rangesTotal} ranges, ${table.rows} rows enqueued, ${table.appliedRows}${estimate} applied everywhere, ${table.rowsPerSecond} rows/s`,
    );
  }
  for (const sync of status.tableSyncs) {
    const ranges = sync.rangesTotal === null ? 'starting' : `${sync.rangesDone}/${sync.rangesTotal} ranges, ${sync.rows} rows`;
    lines.push(`table sync ${sync.table} (${sync.reason}, for ${sync.destinations === 'all' ? 'every destination' : sync.destinations.join(', ')}): ${ranges}`);
  }
  for (const refused of status.refusedRequests) lines.push(`control request refused at ${refused.at}: ${refused.error} (${refused.request.slice(0, 200)})`);
  if (status.postgres?.state === 'reconnecting') lines.push(`producer: reconnecting to Postgres since ${status.postgres.since} (${status.postgres.error})`);
  if (status.slotConfirmedFlushLsn !== undefined) {
    const seconds = typeof status.slotLagSeconds === 'number' ? ` (${status.slotLagSeconds.toFixed(1)} s behind)` : '';
    const held = status.slotLagBytes === null || status.slotLagBytes === undefined ? '' : `, holding ${status.slotLagBytes} bytes of WAL${seconds}`;
    const wal = status.slotWalStatus
      ? `, wal_status ${status.slotWalStatus}${status.slotWalStatus === 'lost' ? ' (invalidated: run pg-replicate resync --all)' : ''}`
      : '';
    lines.push(
      `slot confirmed flush LSN ${status.slotConfirmedFlushLsn ?? '(slot missing)'}${status.slotActive ? ' (producer connected)' : ' (no producer connected)'}${held}${wal}`,
    );
  }
  for (const destination of status.destinations) {
    if (destination.detached) {
      lines.push(
        `destination ${destination.name}: detached since ${destination.detached.since} (${destination.detached.reason}); its consumer, when it runs, gets a fresh copy`,
      );
      continue;
    }
    const consumers = destination.consumers === 0 ? 'no consumer' : `${destination.consumers} consumer${destination.consumers > 1 ? 's' : ''} alive`;
    lines.push(
      `destination ${destination.name}: ${destination.state}, applied up to ${destination.appliedLsn ?? '(nothing yet)'}, ${destination.pendingBatches} batches pending, ${consumers}`,
    );
    for (const error of destination.errors) lines.push(`  partition ${error.partition}: attempt ${error.attempts} since ${error.since}: ${error.error}`);
    for (const [table, quarantine] of Object.entries(destination.quarantined)) {
      lines.push(`  table ${table}: quarantined since ${quarantine.since} (its changes are skipped): ${quarantine.error}. To release it, ${quarantine.fix}`);
    }
    // Only the tables placed under another name than their own (names that would collide there).
    for (const [table, place] of Object.entries(destination.places)) {
      if (!place.endsWith(table.slice(table.indexOf('.') + 1))) lines.push(`  table ${table} is ${place} there`);
    }
  }
  return lines.join('\n');
}
