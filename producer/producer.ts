import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import type pg from 'pg';
import { errorMessage, UserError } from '../shared/errors.js';
import { keys } from '../shared/keys.js';
import { log } from '../shared/log.js';
import { formatLsn } from '../shared/lsn.js';
import { PRODUCER_SESSION_SETTINGS } from '../shared/pgconn.js';
import {
  connectRedis,
  loginRefused,
  type PipelineState,
  readCopyProgress,
  readPipelineState,
  readTableSyncs,
  type TableSyncRecord,
  writePipelineState,
} from '../shared/redis.js';
import { encodeRequest } from '../shared/requests.js';
import { AckTracker } from './acks.js';
import { Sequencer } from './batcher.js';
import { Catalog, currentWalLsn, departedTables, type PublicationReader, publicationMemberships } from './catalog.js';
import { copyTables, withExportedSnapshot } from './copy.js';
import { destinationChanges } from './destinations.js';
import { LagGuard } from './lagguard.js';
import { ProducerLease } from './lease.js';
import { hideSession, showSession, source, tally } from './metrics.js';
import { COPY_DONE_POLL_MS, type ProducerOptions } from './options.js';
import { connectPostgres, connectPostgresOnce, isConnectionLoss, preflight, refusal, SLOT_RECOVERY, STARTUP_PATIENCE_MS } from './preflight.js';
import { BatchQueues, loadQueues } from './queues.js';
import { redisFullHint } from './redismemory.js';
import { ReplicationConnection } from './replication.js';
import type { AckPosition, Session } from './session.js';
import { dropSlot, inactiveSlot, type SlotInfo } from './slots.js';
import { streamSlot } from './stream.js';
import { TableSync } from './tablesync.js';
import { AppliedWatcher, RecopyRequestedError, RedisLostError } from './watcher.js';

/**
 * The producer: one per pipeline (one slot). It copies the publication's tables under the
 * slot's exported snapshot, then streams the slot, batching changes by partition for every
 * destination, and acknowledges to Postgres only what every destination has durably applied.
 * Any failure restarts a session from the slot, which never passed anything unapplied.
 */
export class Producer {
  private readonly redis: Redis;
  /** What the slot has been told: every destination applied everything before it. */
  private readonly position: AckPosition = { lsn: 0n };
  /** Every destination has applied the copy for the current slot: survives Redis losing its record of it. */
  private copyApplied = false;
  /** The destinations fed, as last recorded: survives Redis losing its record of them. */
  private registered: string[] = [];
  /** OIDs of the tables every destination has a copy of (TableSync adds to it): survives Redis losing its record. */
  private tables = new Set<number>();
  /** Each published table's membership of the publication, as last seen (see TableSync.tick). */
  private readonly memberships = new Map<number, string>();
  /** Copies beside the stream in progress (TableSync keeps it): survives Redis losing its record. */
  private readonly tableSyncs = new Map<number, TableSyncRecord>();
  /** This process has streamed from the slot: a slot missing now lost changes. Survives Redis losing its record. */
  private streamed = false;
  /** The last session ended because Redis lost writes: the next one copies again what was not applied everywhere. */
  private redisLost = false;
  /** The largest row Redis takes in one value, read at start. */
  private largestRowBytes = Number.MAX_SAFE_INTEGER;
  /** Settles once Redis has refused the login for good. */
  private readonly refusedLogin: Promise<UserError>;
  /** Since when Postgres has been unreachable, while it is. */
  private outage: { since: number; error: string } | undefined;

  constructor(private options: ProducerOptions) {
    this.redis = connectRedis(options.redisUrl);
    this.redis.on('error', (error) => log.debug({ err: errorMessage(error) }, 'redis connection error'));
    this.refusedLogin = loginRefused(this.redis);
  }

  /** Runs until the signal aborts (or, in copy mode, until the copy is applied everywhere). */
  async run(signal: AbortSignal): Promise<void> {
    const connecting = connectPostgresOnce(this.options.pgUrl, 'pg-replicate producer', STARTUP_PATIENCE_MS);
    // Loaded while Postgres answers; a failure shows where the queues are opened.
    loadQueues().catch(() => {});
    const client = await connecting;
    try {
      ({ options: this.options, largestRowBytes: this.largestRowBytes } = await preflight(client, this.redis, this.options));
    } finally {
      await client.end();
    }
    // One producer per pipeline: a second one exits here, before it touches a slot.
    const lease = new ProducerLease(this.redis, this.options.pipeline);
    let leaseLost: UserError | undefined;
    const running = new AbortController();
    const stop = () => running.abort();
    signal.addEventListener('abort', stop);
    // Redis refusing the login for good: every command would wait for ever, the session's too.
    let loginError: UserError | undefined;
    const refused = this.refusedLogin.then((error) => {
      loginError = error;
      running.abort();
      throw error;
    });
    refused.catch(() => {});
    try {
      await lease.acquire(signal, (error) => {
        leaseLost = error;
        running.abort();
      });
      await Promise.race([this.sessions(running.signal), refused]);
    } finally {
      signal.removeEventListener('abort', stop);
      if (!loginError) await lease.release();
    }
    if (leaseLost) throw leaseLost;
  }

  /** Sessions from the slot, one after another, until the signal aborts or the work is finished (copy mode). */
  private async sessions(signal: AbortSignal): Promise<void> {
    let failures = 0;
    while (!signal.aborted) {
      try {
        const finished = await this.session(signal);
        if (finished) return;
        failures = 0;
      } catch (error) {
        const fatal = refusal(error);
        if (fatal) throw fatal;
        if (signal.aborted) return;
        failures++;
        tally.restarts++;
        if (isConnectionLoss(error)) {
          // Postgres restarting, failing over or down: retried every few seconds, said once.
          const delay = Math.min(5_000, 250 * 2 ** Math.min(failures, 5));
          await this.lostPostgres(error, delay);
          await sleep(delay, undefined, { signal }).catch(() => {});
          continue;
        }
        if (error instanceof RedisLostError) this.redisLost = true;
        const delay = error instanceof RedisLostError || error instanceof RecopyRequestedError ? 0 : Math.min(30_000, 500 * 2 ** Math.min(failures, 6));
        log.warn({ err: errorMessage(error), retryInMs: delay, ...redisFullHint(error) }, 'producer session ended; restarting from the slot');
        await sleep(delay, undefined, { signal }).catch(() => {});
      }
    }
  }

  /** The first failure of an outage is logged and recorded (status, metrics); its retries only at debug level. */
  private async lostPostgres(error: unknown, retryInMs: number): Promise<void> {
    if (this.outage) {
      log.debug({ err: errorMessage(error), retryInMs }, 'Postgres still unreachable');
      return;
    }
    this.outage = { since: Date.now(), error: errorMessage(error) };
    source.connected = false;
    log.warn(
      { err: this.outage.error },
      "lost the connection to Postgres: reconnecting with backoff, then streaming from the slot's confirmed position (logged again once it is back)",
    );
    await this.recordSource();
  }

  /** Postgres answers again (a session has its slot): the outage, if any, is over. */
  private async reachedPostgres(): Promise<void> {
    source.connected = true;
    if (!this.outage) return;
    log.info({ unreachableForMs: Date.now() - this.outage.since }, 'Postgres is reachable again: streaming from the slot');
    this.outage = undefined;
    await this.recordSource();
  }

  /** What `status` shows of the producer's connection to Postgres. */
  private async recordSource(): Promise<void> {
    const state = this.outage ? { state: 'reconnecting', since: new Date(this.outage.since).toISOString(), error: this.outage.error } : { state: 'connected' };
    await this.redis.hset(keys.state(this.options.pipeline), 'postgres', JSON.stringify(state)).catch(() => {});
  }

  /**
   * The slot this session streams from, as found: invalidated, or missing after the pipeline
   * streamed from it, is a loss a human must decide on (exit 2), never papered over by a new slot.
   */
  private async checkSlot(slot: SlotInfo | undefined, previous: PipelineState | undefined, recopy: boolean): Promise<void> {
    const { options } = this;
    if (recopy) return;
    if (slot?.walStatus === 'lost') {
      throw new UserError(
        `Replication slot ${options.slot} was invalidated by Postgres (wal_status = lost): the WAL it still needed was removed (max_slot_wal_keep_size, or idle_replication_slot_timeout). ${SLOT_RECOVERY}`,
      );
    }
    // Streamed before: this process did, or the pipeline's record names this slot with its copy enqueued (cdc: any record).
    const streamedBefore =
      this.streamed || (previous?.slot === options.slot && (options.mode === 'cdc' || previous.copy === 'enqueued' || previous.copy === 'done'));
    if (!slot && streamedBefore) {
      const acknowledged = this.position.lsn > 0n ? ` (acknowledged up to ${formatLsn(this.position.lsn)})` : '';
      throw new UserError(
        `Replication slot ${options.slot} no longer exists, but pipeline ${options.pipeline} streamed from it${acknowledged}: it was dropped, or lost in a failover (a promoted standby has no logical slots unless they are failover slots). ${SLOT_RECOVERY}`,
      );
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
    // `pg-replicate resync --all`: every table copied again under a new slot (cdc: a new slot).
    const recopy = previous?.copy === 'requested';
    if (recopy) this.copyApplied = false;
    let slot = await inactiveSlot(options.pgUrl, options.slot, signal);
    await this.checkSlot(slot, previous, recopy);
    if (recopy && slot && options.mode === 'cdc') {
      await dropSlot(options.pgUrl, options.slot);
      slot = undefined;
    }
    if (!slot) this.copyApplied = false;
    if (previous && previous.partitions !== options.partitions) {
      throw new UserError(
        `Pipeline ${options.pipeline} was created with ${previous.partitions} partitions; it cannot change to ${options.partitions} while its queues exist. Pass --partitions ${previous.partitions}, or start a new pipeline id.`,
      );
    }
    const copyApplied = this.copyApplied || (previous?.copy === 'done' && previous.slot === options.slot);
    const needsCopy = options.mode === 'copy' || (options.mode === 'both' && (!slot || !copyApplied));
    // A copy interrupted by a restart (its slot still at the copy's LSN, its progress in Redis) continues.
    const interrupted =
      needsCopy && slot && previous?.slot === options.slot && (previous.copy === 'started' || previous.copy === 'enqueued')
        ? await readCopyProgress(this.redis, options.pipeline)
        : undefined;
    // After Redis lost writes, chunks recorded as enqueued may be gone: the copy starts again.
    const resume = interrupted && interrupted.size > 0 && !this.redisLost ? interrupted : undefined;
    if (needsCopy && slot && !resume && options.mode === 'both' && !recopy) {
      log.warn(
        this.redisLost
          ? 'Redis lost writes before every destination applied the copy: copying every table again under a new slot'
          : 'Redis holds no record of a finished copy for this slot (was Redis wiped?): copying every table again under a new slot',
      );
    }
    // Destinations named on the command line but new to a running pipeline join like a consumer
    // that registers itself: with a copy of their own, beside the stream.
    // Without Redis' record (it lost its data) the destinations this process fed are kept: their
    // stores still hold what they applied, and the slot resumes where the slowest one stopped.
    const known = previous?.destinations ?? this.registered;
    const registered = needsCopy ? [...new Set([...known, ...options.destinations])] : known;
    this.registered = registered;
    for (const name of options.destinations.filter((name) => !registered.includes(name))) {
      await this.redis.rpush(keys.requests(options.pipeline), encodeRequest({ addDestination: name }));
    }

    const queues = await BatchQueues.open(this.redis, options.pipeline, registered, options.partitions);
    const replication = await ReplicationConnection.open(options.pgUrl, `pg-replicate ${options.pipeline}`);
    await this.reachedPostgres();
    const ended = new AbortController();
    const stop = () => ended.abort();
    signal.addEventListener('abort', stop);
    let failure: Error | undefined;
    const fail = (error: Error) => {
      failure ??= error;
      ended.abort();
    };
    replication.on('error', fail);
    let catalogClient: pg.Client | undefined;
    try {
      await queues.limitToOneWorker();
      await writePipelineState(this.redis, options.pipeline, {
        slot: options.slot,
        publication: options.publication,
        partitions: options.partitions,
        destinations: registered,
        epoch,
        ...(copyApplied && !needsCopy ? { copy: 'done' as const } : {}),
      });
      await this.redis.hdel(keys.state(options.pipeline), 'gap');
      await queues.releaseOrphanedChunks(epoch);
      const sequencer = new Sequencer(options.partitions);
      const tracker = new AckTracker(epoch);
      const watcher = new AppliedWatcher(
        this.redis,
        options,
        epoch,
        queues,
        tracker,
        () => (this.copyApplied = true),
        () => this.position.lsn,
      );
      const session: Session = {
        options,
        redis: this.redis,
        epoch,
        sequencer,
        tracker,
        queues,
        watcher,
        signal: ended.signal,
        largestRowBytes: this.largestRowBytes,
      };
      showSession(session, this.position);

      if (needsCopy && resume && slot) {
        this.copyApplied = false;
        this.position.lsn = slot.confirmedFlush;
        await writePipelineState(this.redis, options.pipeline, { copy: 'started' });
        const copied = await withExportedSnapshot(options.pgUrl, (snapshot) =>
          copyTables(session, this.redis, snapshot, { progress: resume, slotLsn: slot.confirmedFlush }),
        );
        this.tables = new Set(copied);
        await writePipelineState(this.redis, options.pipeline, { copy: 'enqueued', tables: copied });
      } else if (needsCopy) {
        this.copyApplied = false;
        if (slot) await dropSlot(options.pgUrl, options.slot);
        // The copy covers every table for every destination: copies beside an earlier stream are moot.
        await this.redis.del(keys.copyProgress(options.pipeline), keys.copyApplied(options.pipeline), keys.tableSyncs(options.pipeline));
        this.tableSyncs.clear();
        await writePipelineState(this.redis, options.pipeline, { copy: 'started' });
        const created = await replication.createSlot(options.slot, true);
        this.position.lsn = created.consistentPoint;
        log.info({ slot: options.slot, snapshotLsn: formatLsn(created.consistentPoint) }, 'created replication slot; copying tables');
        const copied = await copyTables(session, this.redis, { name: created.snapshotName!, lsn: created.consistentPoint });
        this.tables = new Set(copied);
        await writePipelineState(this.redis, options.pipeline, { copy: 'enqueued', tables: copied });
      } else if (!slot) {
        const created = await replication.createSlot(options.slot, false);
        this.position.lsn = created.consistentPoint;
        log.info({ slot: options.slot, lsn: formatLsn(created.consistentPoint) }, 'created replication slot (no copy: cdc mode)');
        if (recopy) await this.redis.hdel(keys.state(options.pipeline), 'copy');
      } else {
        this.position.lsn = slot.confirmedFlush;
      }

      if (options.mode === 'copy') {
        while (!tracker.isIdle) {
          await watcher.poll(() => {});
          await sleep(COPY_DONE_POLL_MS, undefined, { signal: ended.signal });
        }
        log.info('copy applied by every destination');
        return true;
      }
      const client = (catalogClient = await connectPostgres(options.pgUrl, 'pg-replicate catalog', PRODUCER_SESSION_SETTINGS, fail));
      const catalog = new Catalog(client);
      const publication: PublicationReader = {
        memberships: () => publicationMemberships(client, options.publication),
        departed: (oids, published) => departedTables(client, oids, published),
      };
      // Tables every destination has a copy of: Redis' record, else what this process knew, else
      // (a fresh process after Redis lost its data) today's publication.
      const state = await readPipelineState(this.redis, options.pipeline);
      if (state?.tables) this.tables = new Set(state.tables);
      for (const [oid, membership] of Object.entries(state?.memberships ?? {})) this.memberships.set(Number(oid), membership);
      if (this.tables.size === 0 || this.memberships.size === 0) {
        const now = await publication.memberships();
        if (!state?.tables && this.tables.size === 0) this.tables = new Set(now.keys());
        if (this.memberships.size === 0) for (const [oid, membership] of now) this.memberships.set(oid, membership);
      }
      await writePipelineState(this.redis, options.pipeline, { tables: [...this.tables], memberships: Object.fromEntries(this.memberships) });
      const changes = destinationChanges(session, this.redis, (names) => (this.registered = names));
      const tableSync = new TableSync(session, this.tables, this.tableSyncs, this.memberships, changes, fail);
      const lagGuard = new LagGuard(
        session,
        () => currentWalLsn(client),
        (name, reason) => changes.remove(name, reason),
      );
      // Without Redis' record (it lost its data, and the chunks with it) copies restart from scratch.
      // After Redis lost writes (all, or its newest), copies not yet applied everywhere restart from scratch.
      // Redis' records, and after it lost writes also those only this process still remembers.
      const syncs = previous ? new Map([...(this.redisLost ? this.tableSyncs : []), ...(await readTableSyncs(this.redis, options.pipeline))]) : this.tableSyncs;
      const unfinished = this.redisLost || !previous ? new Map([...syncs].map(([oid, { progress: _, ...record }]) => [oid, record])) : syncs;
      this.redisLost = false;
      await tableSync.resume(unfinished);
      this.streamed = true;
      await streamSlot(
        session,
        replication,
        this.position,
        (relation, previous) => catalog.enrich(relation, previous),
        { tableSync, lagGuard, publication },
        fail,
      );
      if (failure) throw failure;
      return false;
    } catch (error) {
      throw failure ?? error;
    } finally {
      // Whatever ended the session, its work in the background (table syncs) stops with it: a
      // batch it enqueued after Redis lost the ones before would let destinations skip those
      // when the next session sends them again.
      ended.abort();
      hideSession();
      signal.removeEventListener('abort', stop);
      await replication.close();
      await queues.close();
      await catalogClient?.end().catch(() => {});
    }
  }
}
