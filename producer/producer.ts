import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import copyStreams from 'pg-copy-streams';
import type { Redis } from 'ioredis';
import { type Batch, type Relation, type Value, qualifiedName } from '../shared/events.js';
import { UserError, errorMessage } from '../shared/errors.js';
import { keys, partitionOf } from '../shared/keys.js';
import { log } from '../shared/log.js';
import { type Lsn, formatLsn, maxLsn, parseLsn } from '../shared/lsn.js';
import { VALUE_TEXT_SETTINGS } from '../shared/pgconn.js';
import { connectRedis, readApplied, readPipelineState, writePipelineState } from '../shared/redis.js';
import { AckTracker, type AppliedMark } from './acks.js';
import { Batcher, Sequencer } from './batcher.js';
import { describeTable, publicationTables, tablesWithoutIdentity } from './catalog.js';
import { CopyTextParser } from './copytext.js';
import { decodePgoutput } from './pgoutput.js';
import { checkRedis, checkSource, connectPostgres } from './preflight.js';
import { BatchQueues } from './queues.js';
import { ReplicationConnection, quoteIdent } from './replication.js';

export interface ProducerOptions {
  pgUrl: string;
  redisUrl: string;
  pipeline: string;
  publication: string;
  slot: string;
  mode: 'both' | 'copy' | 'cdc';
  destinations: string[];
  partitions: number;
  maxBatchChanges: number;
  maxBatchBytes: number;
  flushIntervalMs: number;
  /** Unapplied batches (summed over partitions, worst destination) above which slot reading pauses. */
  maxBacklogBatches: number;
  statusIntervalMs: number;
  heartbeatIntervalMs: number;
  copyConnections: number;
  copyChunkRows: number;
}

export const PRODUCER_DEFAULTS = {
  mode: 'both',
  partitions: 8,
  maxBatchChanges: 5000,
  maxBatchBytes: 4 * 1024 * 1024,
  flushIntervalMs: 50,
  maxBacklogBatches: 1000,
  statusIntervalMs: 10_000,
  heartbeatIntervalMs: 30_000,
  copyConnections: 2,
  copyChunkRows: 5000,
} as const;

/** Redis no longer holds what this run enqueued (FLUSHALL, a restart without persistence). */
class RedisLostError extends Error {}

const POLL_MS = 100;
/** Adds not yet acknowledged by Redis (each up to one batch) before reading pauses: bounds producer memory. */
const MAX_PENDING_ADDS = 32;

/**
 * The producer: one per pipeline (one slot). It copies the publication's tables under the
 * slot's exported snapshot, then streams the slot, batching changes by partition for every
 * destination, and acknowledges to Postgres only what every destination has durably applied.
 * Any failure restarts a session from the slot, which never passed anything unapplied.
 */
export class Producer {
  private readonly redis: Redis;
  private acknowledged: Lsn = 0n;
  /** Every destination has applied the copy for the current slot: survives Redis losing its record of it. */
  private copyApplied = false;

  constructor(private readonly options: ProducerOptions) {
    this.redis = connectRedis(options.redisUrl);
    this.redis.on('error', (error) => log.debug({ err: errorMessage(error) }, 'redis connection error'));
  }

  /** Runs until the signal aborts (or, in copy mode, until the copy is applied everywhere). */
  async run(signal: AbortSignal): Promise<void> {
    const client = await connectPostgres(this.options.pgUrl, 'pg-replicate producer');
    try {
      await checkSource(client, this.options.publication);
      await checkRedis(this.redis);
    } finally {
      await client.end();
    }
    let failures = 0;
    while (!signal.aborted) {
      try {
        const finished = await this.session(signal);
        if (finished) return;
        failures = 0;
      } catch (error) {
        if (error instanceof UserError) throw error;
        if (signal.aborted) return;
        failures++;
        const delay = error instanceof RedisLostError ? 0 : Math.min(30_000, 500 * 2 ** Math.min(failures, 6));
        log.warn({ err: errorMessage(error), retryInMs: delay }, 'producer session ended; restarting from the slot');
        await sleep(delay, undefined, { signal }).catch(() => {});
      }
    }
  }

  async close(): Promise<void> {
    this.redis.disconnect();
  }

  /** One run from the slot's confirmed position. Returns true when the producer's work is finished (copy mode). */
  private async session(signal: AbortSignal): Promise<boolean> {
    const { options } = this;
    const previous = await readPipelineState(this.redis, options.pipeline);
    const epoch = Math.max(Date.now(), (previous?.epoch ?? 0) + 1);
    const slot = await this.inactiveSlot(signal);
    if (!slot) this.copyApplied = false;
    if (previous && previous.partitions !== options.partitions) {
      throw new UserError(
        `Pipeline ${options.pipeline} was created with ${previous.partitions} partitions; it cannot change to ${options.partitions} while its queues exist. Pass --partitions ${previous.partitions}, or start a new pipeline id.`,
      );
    }
    const added = options.destinations.filter((name) => previous && !previous.destinations.includes(name));
    const copyApplied = (this.copyApplied || (previous?.copy === 'done' && previous.slot === options.slot)) && added.length === 0;
    const needsCopy = options.mode === 'copy' || (options.mode === 'both' && (!slot || !copyApplied));
    if (needsCopy && slot && options.mode === 'both') {
      const reason = added.length > 0 ? `new destinations ${added.join(', ')} need a consistent copy` : 'Redis holds no record of a finished copy for this slot (was Redis wiped, or the producer stopped mid-copy?)';
      log.warn(`${reason}: copying every table again under a new slot`);
    }

    const queues = new BatchQueues(this.redis, options.pipeline, options.destinations, options.partitions);
    const replication = await ReplicationConnection.open(options.pgUrl, `pg-replicate ${options.pipeline}`);
    const session = new AbortController();
    const stop = () => session.abort();
    signal.addEventListener('abort', stop);
    let failure: Error | undefined;
    const fail = (error: Error) => {
      failure ??= error;
      session.abort();
    };
    replication.on('error', fail);
    try {
      await queues.limitToOneWorker();
      await writePipelineState(this.redis, options.pipeline, {
        slot: options.slot,
        publication: options.publication,
        partitions: options.partitions,
        destinations: options.destinations,
        epoch,
        ...(copyApplied && !needsCopy ? { copy: 'done' as const } : {}),
      });
      const sequencer = new Sequencer(options.partitions);
      const tracker = new AckTracker(epoch);
      const watcher = new AppliedWatcher(this.redis, options, epoch, queues, sequencer, tracker, () => (this.copyApplied = true), () => this.acknowledged);

      if (needsCopy) {
        this.copyApplied = false;
        if (slot) await this.dropSlot();
        await writePipelineState(this.redis, options.pipeline, { copy: 'started' });
        const created = await replication.createSlot(options.slot, true);
        this.acknowledged = created.consistentPoint;
        log.info({ slot: options.slot, snapshotLsn: formatLsn(created.consistentPoint) }, 'created replication slot; copying tables');
        await this.copyTables(created.snapshotName!, created.consistentPoint, epoch, sequencer, tracker, queues, watcher, session.signal);
        await writePipelineState(this.redis, options.pipeline, { copy: 'enqueued' });
      } else if (!slot) {
        const created = await replication.createSlot(options.slot, false);
        this.acknowledged = created.consistentPoint;
        log.info({ slot: options.slot, lsn: formatLsn(created.consistentPoint) }, 'created replication slot (no copy: cdc mode)');
      } else {
        this.acknowledged = slot.confirmedFlush;
      }

      if (options.mode === 'copy') {
        while (!tracker.isIdle) {
          await watcher.poll(() => {});
          await sleep(POLL_MS, undefined, { signal: session.signal });
        }
        log.info('copy applied by every destination');
        return true;
      }
      await this.stream(replication, epoch, sequencer, tracker, queues, watcher, session.signal, fail);
      if (failure) throw failure;
      return false;
    } catch (error) {
      throw failure ?? error;
    } finally {
      signal.removeEventListener('abort', stop);
      await replication.close();
      await queues.close();
    }
  }

  private async stream(
    replication: ReplicationConnection,
    epoch: number,
    sequencer: Sequencer,
    tracker: AckTracker,
    queues: BatchQueues,
    watcher: AppliedWatcher,
    signal: AbortSignal,
    fail: (error: Error) => void,
  ): Promise<void> {
    const { options } = this;
    const limits = { maxChanges: options.maxBatchChanges, maxBytes: options.maxBatchBytes };
    const batcher = new Batcher(options.pipeline, epoch, options.partitions, limits, sequencer, (batch) => queues.enqueue(batch));
    let commitLsn: Lsn = 0n;
    let ordinal = 0;
    let paused = false;
    let lastStatus = 0;
    let lastActivity = Date.now();

    const sendStatus = (replyRequested = false) => {
      replication.sendStatus(this.acknowledged, replyRequested);
      lastStatus = Date.now();
    };
    const setPaused = (shouldPause: boolean) => {
      if (shouldPause === paused) return;
      paused = shouldPause;
      if (paused) replication.pause();
      else replication.resume();
      log.debug({ paused }, paused ? 'backlog full: pausing the slot read' : 'backlog drained: resuming');
    };

    const onData = (message: Buffer) => {
      const decoded = decodePgoutput(message);
      switch (decoded.tag) {
        case 'begin':
          commitLsn = decoded.finalLsn;
          ordinal = 0;
          tracker.begin();
          break;
        case 'relation':
          batcher.setRelation(decoded);
          break;
        case 'insert':
        case 'update':
        case 'delete': {
          const version = { lsn: commitLsn, ordinal: ++ordinal };
          const change = { op: decoded.tag, version, ...('row' in decoded ? { row: decoded.row } : {}), ...('old' in decoded && decoded.old ? { old: decoded.old } : {}) };
          const { partition, seq } = batcher.addRow(change, decoded.relation, message.length);
          tracker.touch(partition, seq);
          break;
        }
        case 'truncate': {
          const version = { lsn: commitLsn, ordinal: ++ordinal };
          for (const { partition, seq } of batcher.addTruncate({ op: 'truncate', version, cascade: decoded.cascade, restartIdentity: decoded.restartIdentity }, decoded.relations)) {
            tracker.touch(partition, seq);
          }
          break;
        }
        case 'commit':
          tracker.commit(decoded.endLsn);
          break;
        default:
          break;
      }
      lastActivity = Date.now();
      if (queues.pendingAdds > MAX_PENDING_ADDS) setPaused(true);
    };

    const streaming = replication.start(options.slot, options.publication, 0n, {
      onData: (message) => {
        try {
          onData(message);
        } catch (error) {
          fail(error as Error);
        }
      },
      onKeepalive: (walEnd, replyRequested) => {
        // Nothing of ours is in flight: everything up to the server's WAL end is either applied or
        // not for us, so acknowledging it lets Postgres recycle WAL on a quiet publication.
        if (tracker.isIdle && batcher.isEmpty && walEnd > this.acknowledged) {
          this.acknowledged = walEnd;
          sendStatus();
        } else if (replyRequested) {
          sendStatus();
        }
      },
    });
    streaming.then(
      () => fail(new Error('the server ended replication')),
      (error: Error) => fail(error),
    );
    log.info({ slot: options.slot, from: formatLsn(this.acknowledged), epoch }, 'streaming');
    const heartbeat = new Heartbeat(options.pgUrl);
    try {
      while (!signal.aborted) {
        batcher.flushAll();
        const advanced = await watcher.poll((ackLsn) => {
          this.acknowledged = maxLsn(this.acknowledged, ackLsn);
        });
        if (advanced || Date.now() - lastStatus >= options.statusIntervalMs) sendStatus();
        setPaused(queues.pendingAdds > MAX_PENDING_ADDS || watcher.backlog > options.maxBacklogBatches);
        if (tracker.isIdle && Date.now() - lastActivity >= options.heartbeatIntervalMs) {
          lastActivity = Date.now();
          await heartbeat.beat();
        }
        await sleep(options.flushIntervalMs, undefined, { signal }).catch(() => {});
      }
    } finally {
      await heartbeat.close();
    }
  }

  private async copyTables(
    snapshotName: string,
    snapshotLsn: Lsn,
    epoch: number,
    sequencer: Sequencer,
    tracker: AckTracker,
    queues: BatchQueues,
    watcher: AppliedWatcher,
    signal: AbortSignal,
  ): Promise<void> {
    const { options } = this;
    // Every copy connection imports the snapshot before anything else runs on the replication
    // connection: the exported snapshot lives only while that connection stays idle.
    const connections: pg.Client[] = [];
    try {
      for (let i = 0; i < Math.max(1, options.copyConnections); i++) {
        const client = new pg.Client({ connectionString: options.pgUrl, application_name: 'pg-replicate copy', options: VALUE_TEXT_SETTINGS });
        connections.push(client);
        await client.connect();
        await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
        await client.query(`SET TRANSACTION SNAPSHOT '${snapshotName}'`);
      }
      const tables = await publicationTables(connections[0], options.publication);
      const relations: Relation[] = [];
      const rowFilters = new Map<Relation, string | null>();
      for (const table of tables) {
        const relation = await describeTable(connections[0], table);
        relations.push(relation);
        rowFilters.set(relation, table.rowFilter);
      }
      const unidentified = tablesWithoutIdentity(relations);
      if (unidentified.length > 0) {
        log.warn({ tables: unidentified }, 'these tables have no replica identity: their UPDATEs and DELETEs cannot be replicated (inserts and the copy are)');
      }
      tracker.begin();
      const pending = [...relations];
      let rows = 0;
      const worker = async (client: pg.Client) => {
        for (let relation = pending.shift(); relation; relation = pending.shift()) {
          const copied = await this.copyTable(client, relation, rowFilters.get(relation) ?? null, snapshotLsn, epoch, sequencer, tracker, queues, watcher, signal);
          rows += copied;
          log.info({ table: `${relation.schema}.${relation.name}`, rows: copied }, 'table copied');
        }
      };
      await Promise.all(connections.map(worker));
      await queues.settle();
      tracker.commit(snapshotLsn, true);
      log.info({ tables: relations.length, rows }, 'copy enqueued');
    } finally {
      await Promise.all(connections.map((client) => client.end().catch(() => {})));
    }
  }

  /** Streams one table with COPY into chunk batches; never holds more than one chunk. */
  private async copyTable(
    client: pg.Client,
    relation: Relation,
    rowFilter: string | null,
    snapshotLsn: Lsn,
    epoch: number,
    sequencer: Sequencer,
    tracker: AckTracker,
    queues: BatchQueues,
    watcher: AppliedWatcher,
    signal: AbortSignal,
  ): Promise<number> {
    const { options } = this;
    const partition = partitionOf(qualifiedName(relation), options.partitions);
    const columns = relation.columns.map((column) => quoteIdent(column.name)).join(', ');
    const where = rowFilter ? ` WHERE ${rowFilter}` : '';
    const stream = client.query(copyStreams.to(`COPY (SELECT ${columns} FROM ${quoteIdent(relation.schema)}.${quoteIdent(relation.name)}${where}) TO STDOUT`));
    const parser = new CopyTextParser();
    let chunk = 0;
    let rows: Value[][] = [];
    let total = 0;
    const send = (last: boolean) => {
      const seq = sequencer.next(partition);
      const batch: Batch = {
        pipeline: options.pipeline,
        partition,
        epoch,
        seq,
        relations: [relation],
        changes: [],
        copy: { relation: 0, snapshotLsn, chunk: chunk++, last, rows },
      };
      queues.enqueue(batch);
      tracker.touch(partition, seq);
      total += rows.length;
      rows = [];
    };
    for await (const data of stream as AsyncIterable<Buffer>) {
      for (const row of parser.push(data)) {
        rows.push(row);
        // Keep one full chunk back so the table's last chunk can be marked as such.
        if (rows.length > options.copyChunkRows) {
          const next = rows.pop()!;
          send(false);
          rows.push(next);
          await this.waitForRoom(queues, watcher, signal);
        }
      }
    }
    parser.end();
    send(true);
    return total;
  }

  private async waitForRoom(queues: BatchQueues, watcher: AppliedWatcher, signal: AbortSignal): Promise<void> {
    while (queues.pendingAdds > MAX_PENDING_ADDS || watcher.backlog > this.options.maxBacklogBatches) {
      await sleep(POLL_MS, undefined, { signal });
      await watcher.poll(() => {});
    }
  }

  /** The slot, once no other walsender holds it (a previous session's may take a moment to exit). */
  private async inactiveSlot(signal: AbortSignal) {
    for (let attempt = 0; ; attempt++) {
      const slot = await this.slotInfo();
      if (!slot?.active) return slot;
      if (attempt >= 50 || signal.aborted) {
        throw new Error(`replication slot ${this.options.slot} is in use by another process (pid ${slot.activePid}); only one producer may run per pipeline`);
      }
      await sleep(200);
    }
  }

  private async slotInfo(): Promise<{ confirmedFlush: Lsn; active: boolean; activePid: number | null } | undefined> {
    const client = await connectPostgres(this.options.pgUrl, 'pg-replicate producer');
    try {
      const result = await client.query(
        `SELECT confirmed_flush_lsn::text AS confirmed, active, active_pid, plugin, database = current_database() AS here
           FROM pg_replication_slots WHERE slot_name = $1`,
        [this.options.slot],
      );
      const row = result.rows[0];
      if (!row) return undefined;
      if (row.plugin !== 'pgoutput' || !row.here) {
        throw new UserError(`Replication slot ${this.options.slot} exists but is not a pgoutput slot of this database. Choose another --slot, or drop it with SELECT pg_drop_replication_slot('${this.options.slot}').`);
      }
      return { confirmedFlush: parseLsn(row.confirmed), active: row.active, activePid: row.active_pid };
    } finally {
      await client.end();
    }
  }

  private async dropSlot(): Promise<void> {
    const client = await connectPostgres(this.options.pgUrl, 'pg-replicate producer');
    try {
      await client.query('SELECT pg_drop_replication_slot($1)', [this.options.slot]);
      log.info({ slot: this.options.slot }, 'dropped replication slot to take a fresh consistent copy');
    } finally {
      await client.end();
    }
  }
}

/**
 * Reads what every destination has applied, moves the ack tracker, and notices when Redis
 * has lost this run's data (the epoch field is gone or replaced).
 */
class AppliedWatcher {
  backlog = 0;
  private readonly published = new Map<string, Lsn>();

  constructor(
    private readonly redis: Redis,
    private readonly options: ProducerOptions,
    private readonly epoch: number,
    private readonly queues: BatchQueues,
    private readonly sequencer: Sequencer,
    private readonly tracker: AckTracker,
    private readonly onCopyApplied: () => void,
    private readonly acknowledged: () => Lsn,
  ) {}

  /** Returns true when the acknowledgeable LSN moved. */
  async poll(onAck: (lsn: Lsn) => void): Promise<boolean> {
    const epoch = await this.redis.hget(keys.state(this.options.pipeline), 'epoch');
    if (epoch !== String(this.epoch)) {
      throw new RedisLostError(`Redis no longer holds this producer run (epoch ${this.epoch}, found ${epoch ?? 'nothing'}): re-reading from the slot`);
    }
    const applied = new Map<string, Map<number, AppliedMark>>();
    for (const destination of this.queues.destinations) {
      applied.set(destination, await readApplied(this.redis, this.options.pipeline, destination));
    }
    this.backlog = this.measureBacklog(applied);
    await this.publishAppliedLsns(applied);
    const { ackLsn, copyConfirmed } = this.tracker.advance(applied);
    if (copyConfirmed) {
      this.onCopyApplied();
      await writePipelineState(this.redis, this.options.pipeline, { copy: 'done' });
    }
    if (ackLsn === undefined) return false;
    onAck(ackLsn);
    return true;
  }

  /** For status: each destination's applied LSN (what the slot could confirm if it were the only one). */
  private async publishAppliedLsns(applied: Map<string, Map<number, AppliedMark>>): Promise<void> {
    const fields: Record<string, string> = {};
    for (const [destination, marks] of applied) {
      const lsn = this.tracker.appliedBy(marks) ?? this.acknowledged();
      if (this.published.get(destination) !== lsn) fields[`applied:${destination}`] = formatLsn(lsn);
      this.published.set(destination, lsn);
    }
    if (Object.keys(fields).length > 0) await this.redis.hset(keys.state(this.options.pipeline), fields);
  }

  private measureBacklog(applied: Map<string, Map<number, AppliedMark>>): number {
    let worst = 0;
    for (const marks of applied.values()) {
      let unapplied = 0;
      for (let partition = 0; partition < this.options.partitions; partition++) {
        const mark = marks.get(partition);
        const done = mark && mark.epoch === this.epoch ? mark.seq : 0;
        unapplied += Math.max(0, this.sequencer.lastOf(partition) - done);
      }
      worst = Math.max(worst, unapplied);
    }
    return worst;
  }
}

/**
 * On an idle database the walsender may have nothing to send; a non-transactional logical
 * message writes a little WAL so the slot keeps advancing. Needs EXECUTE on
 * pg_logical_emit_message (superusers have it); without it we say so once and rely on keepalives.
 */
class Heartbeat {
  private client: pg.Client | undefined;
  private disabled = false;

  constructor(private readonly pgUrl: string) {}

  async beat(): Promise<void> {
    if (this.disabled) return;
    try {
      if (!this.client) {
        this.client = new pg.Client({ connectionString: this.pgUrl, application_name: 'pg-replicate heartbeat' });
        await this.client.connect();
      }
      await this.client.query("SELECT pg_logical_emit_message(false, 'pg_replicate_heartbeat', '')");
    } catch (error) {
      if ((error as { code?: string }).code === '42501') {
        this.disabled = true;
        log.warn('heartbeat disabled: GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) to the replication user to keep the slot moving on an idle database');
      } else {
        log.debug({ err: errorMessage(error) }, 'heartbeat failed');
        await this.close();
      }
    }
  }

  async close(): Promise<void> {
    await this.client?.end().catch(() => {});
    this.client = undefined;
  }
}
