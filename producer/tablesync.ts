import { setTimeout as sleep } from 'node:timers/promises';
import { qualifiedName, type Relation } from '../shared/events.js';
import { keys } from '../shared/keys.js';
import { log } from '../shared/log.js';
import { formatLsn, type Lsn } from '../shared/lsn.js';
import { type TableCopyProgress, type TableSyncRecord, writePipelineState } from '../shared/redis.js';
import { parseRequest } from '../shared/requests.js';
import type { PendingEntry } from './acks.js';
import { Catalog, type DepartedTable, describeTable, type PublicationReader, publicationTables } from './catalog.js';
import { copyInRanges, mendsByKey, openSnapshotConnections, planRanges, scansCtidRanges, TableCopy, withExportedSnapshot } from './copy.js';
import { POLL_MS } from './options.js';
import { checkPublishedTables } from './preflight.js';
import type { Session } from './session.js';

/**
 * Copies tables beside the running stream, at one exact LSN: a temporary slot's exported
 * snapshot is its consistent point S, so the copy holds exactly the changes committed before
 * S. The caller holds the tables' streamed changes meanwhile and releases them once each table's
 * copy is enqueued (onCopied; without a copy when the table left the publication). A table
 * given the progress of an interrupted copy continues it, as the initial copy does: its
 * remaining ranges are read at S but keep the earlier copy's version, and rows converge by key
 * (a keyless table is copied anew). `record` keeps each table's progress (ranges planned, then
 * each range whose rows are all in Redis).
 */
export async function copyTablesAtNewSnapshot(
  session: Session,
  tables: Map<number, TableCopyProgress | undefined>,
  destinations: string[] | undefined,
  waitForRoom: () => Promise<void>,
  record: (tableOid: number, progress: TableCopyProgress) => Promise<void>,
  onCopied: (tableOid: number, copied?: CopiedTable) => Promise<void>,
): Promise<void> {
  const { options, redis, queues } = session;
  await withExportedSnapshot(options.pgUrl, async (snapshot) => {
    const connections = await openSnapshotConnections(options.pgUrl, snapshot.name, options.copyConnections);
    try {
      const client = connections[0];
      // Chunk numbers above every earlier run's: a continued copy's follow its first run's.
      const run = await redis.hincrby(keys.state(options.pipeline), 'copyRun', 1);
      const published = await publicationTables(client, options.publication);
      const catalog = new Catalog(client);
      // Tables added to the publication are checked as those at start were: readable (or the
      // producer stops, naming the GRANT), and with a replica identity (or a warning).
      const added = [...tables].filter(([oid, earlier]) => !earlier && published.some((table) => table.oid === oid)).map(([oid]) => oid);
      if (added.length > 0) await checkPublishedTables(client, options.publication, added);
      const copies: TableCopy[] = [];
      const rangeScans = await scansCtidRanges(client);
      const done = (copy: TableCopy) =>
        onCopied(copy.relation.oid, { snapshotLsn: copy.snapshotLsn, relation: copy.relation, rows: copy.rows, lastBatch: copy.lastBatch });
      for (const [tableOid, earlier] of tables) {
        const table = published.find((candidate) => candidate.oid === tableOid);
        if (!table) {
          await onCopied(tableOid);
          continue;
        }
        const relation = await describeTable(client, table, catalog);
        const continued = earlier && mendsByKey(relation) ? earlier : undefined;
        const progress = continued ?? (await planRanges(client, table, snapshot.lsn, options.copyRangeBlocks, rangeScans));
        if (!continued) await record(tableOid, progress);
        const copy = new TableCopy(session, relation, table.rowFilter, progress, { run, merge: !!continued, destinations, room: waitForRoom });
        // Every range was in the queues before the restart: only the release was missing.
        if (copy.remainingRanges().length === 0) await done(copy);
        else copies.push(copy);
      }
      await copyInRanges(
        connections,
        copies,
        () => {},
        async (copy, range, rows) => {
          // Recorded only once its rows are in Redis: a restart then never skips rows it lacks.
          await queues.settle();
          await record(copy.relation.oid, copy.rangeDone(range, rows));
          if (copy.finished) await done(copy);
        },
        { msg: 'table sync: copying', resumed: [...tables.values()].some((earlier) => earlier !== undefined) },
      );
    } finally {
      await Promise.all(connections.map((client) => client.end().catch(() => {})));
    }
  });
}

/** A table whose copy is in the queues; `lastBatch` holds its last chunk (absent when an earlier run sent it). */
export interface CopiedTable {
  snapshotLsn: Lsn;
  relation: Relation;
  rows: number;
  lastBatch?: { partition: number; seq: number };
}

/** A streamed change held back while its table is copied, and how to put it in its batch later. */
interface HeldChange {
  entry: PendingEntry;
  enqueue: () => { partition: number; seq: number };
  /** Its size on the wire, for the memory bound. */
  bytes: number;
}

/** Held changes (all tables), in number and bytes, above which reading the slot pauses until a copy finishes. */
const MAX_HELD = 100_000;
const MAX_HELD_BYTES = 32 * 1024 * 1024;
const PUBLICATION_POLL_MS = 5_000;

/**
 * Online table sync: copies a table beside the stream — when it joins the publication, on
 * request (`pg-replicate resync`), or for a new destination — with invariant 4 of the design:
 * the table's streamed changes are held while its copy is enqueued, then released behind it,
 * so its partition sees the copy first and then the changes. Released changes older than the
 * copy are skipped by the destinations (their version is below the copy's), so nothing is
 * dropped here, and a resync for some destinations leaves the others' stream whole.
 *
 * Each copy is recorded in Redis before it starts, with its ranges as they are done, and the
 * record is deleted once its last chunk is in the queues. A restarted producer continues the
 * recorded copies before it reads the slot, holding their tables' changes from the first one
 * it reads again (the slot never passed a held change): a copy interrupted half-way — a
 * resync's first chunk has already replaced the table at the destination — is completed, not
 * forgotten, and a large one does not start over.
 */
export class TableSync {
  private readonly holds = new Map<number, HeldChange[]>();
  /** Copies in the queues, by table, until every destination they are for has applied their last chunk. */
  private readonly applying = new Map<number, { partition: number; seq: number; destinations?: string[] }>();
  private heldCount = 0;
  private heldBytes = 0;
  private lastPublicationPoll = Date.now();

  constructor(
    private readonly session: Session,
    /** Tables every destination has a copy of, by OID. */
    private readonly known: Set<number>,
    /** The copies in progress, as recorded in Redis (kept here too: survives Redis losing its data). */
    private readonly records: Map<number, TableSyncRecord>,
    /** Each published table's membership of the publication when last looked at (catalog publicationMemberships). */
    private readonly memberships: Map<number, string>,
    private readonly destinations: { add(name: string): Promise<void>; remove(name: string, detached?: string): Promise<void> },
    private readonly fail: (error: Error) => void,
  ) {}

  isHeld(tableOid: number): boolean {
    return this.holds.has(tableOid);
  }

  hold(tableOid: number, change: HeldChange): void {
    this.holds.get(tableOid)!.push(change);
    this.heldCount++;
    this.heldBytes += change.bytes;
  }

  /** Whether reading the slot must wait for a copy to finish (held changes use memory). */
  get isFull(): boolean {
    return this.heldCount > MAX_HELD || this.heldBytes > MAX_HELD_BYTES;
  }

  /**
   * Continues the copies an earlier session recorded and did not finish. Call before reading
   * the slot: their tables' changes are held from the first one on.
   */
  async resume(unfinished: Map<number, TableSyncRecord>): Promise<void> {
    const groups = new Map<string, { destinations?: string[]; reason: string; tables: Map<number, TableCopyProgress | undefined> }>();
    for (const [tableOid, record] of unfinished) {
      // A destination removed since needs nothing more.
      const destinations = record.destinations?.filter((name) => this.session.queues.destinations.includes(name));
      if (destinations?.length === 0) {
        await this.forget(tableOid);
        continue;
      }
      const key = JSON.stringify([destinations, record.reason]);
      if (!groups.has(key)) groups.set(key, { destinations, reason: record.reason, tables: new Map() });
      groups.get(key)!.tables.set(tableOid, record.progress);
    }
    for (const { destinations, reason, tables } of groups.values()) {
      for (const tableOid of tables.keys()) this.holds.set(tableOid, []);
      log.info({ tableOids: [...tables.keys()], destinations: destinations ?? 'all', reason }, 'table sync: continuing the copies a restart interrupted');
      this.copy(tables, destinations, reason);
    }
  }

  /** A relation message: a table we have not copied has joined the publication. */
  noticeRelation(tableOid: number): void {
    if (!this.known.has(tableOid) && !this.holds.has(tableOid)) this.start([tableOid], undefined, 'added to the publication').catch(this.fail);
  }

  /**
   * Called from the stream's loop: requests (resync, destinations added or removed), and tables
   * added to the publication without changes yet. A request is taken off the list once it is
   * recorded: a restart in between handles it again, which is harmless. A new destination waits
   * until no copy is in progress (a copy's chunks go to the destinations there were when it
   * began), and a resync of a table being copied until that copy is done.
   */
  async tick(publication: PublicationReader): Promise<void> {
    await this.forgetApplied();
    const requests = keys.requests(this.session.options.pipeline);
    for (;;) {
      const text = await this.session.redis.lindex(requests, 0);
      if (!text) break;
      const parsed = await parseRequest(text);
      if ('error' in parsed) {
        await this.refuse(text, parsed.error);
        continue;
      }
      const { request } = parsed;
      if ('tableOid' in request && !(await publication.memberships()).has(request.tableOid)) {
        await this.refuse(text, `table OID ${request.tableOid} is not in publication ${this.session.options.publication}`);
        continue;
      }
      if ('tableOid' in request) {
        if (this.holds.has(request.tableOid)) break;
        await this.start([request.tableOid], request.destinations, 'resync requested');
      } else if ('addDestination' in request) {
        const name = request.addDestination;
        if (this.holds.size > 0) break;
        if (!this.session.queues.destinations.includes(name)) await this.start([...this.known], [name], 'new destination', () => this.destinations.add(name));
      } else if ('removeDestination' in request) {
        await this.destinations.remove(request.removeDestination);
      }
      await this.session.redis.lpop(requests);
    }
    if (Date.now() - this.lastPublicationPoll < PUBLICATION_POLL_MS) return;
    this.lastPublicationPoll = Date.now();
    const published = await publication.memberships();
    for (const [oid, membership] of published) {
      const before = this.memberships.get(oid);
      // Dropped from the publication and added again since the last look: Postgres sent none of its changes in between.
      if (before !== undefined && before !== membership && this.known.has(oid) && !this.holds.has(oid)) {
        await this.start([oid], undefined, 'dropped from the publication and added again');
      } else this.noticeRelation(oid);
    }
    const departed = [...this.known].filter((oid) => !published.has(oid));
    if (departed.length > 0) {
      for (const oid of departed) this.known.delete(oid);
      await writePipelineState(this.session.redis, this.session.options.pipeline, { tables: [...this.known] });
      sayDeparted(await publication.departed(departed, [...published.keys()]), this.session.options.publication);
    }
    if (published.size !== this.memberships.size || [...published].some(([oid, membership]) => this.memberships.get(oid) !== membership)) {
      this.memberships.clear();
      for (const [oid, membership] of published) this.memberships.set(oid, membership);
      await writePipelineState(this.session.redis, this.session.options.pipeline, { memberships: Object.fromEntries(published) });
    }
  }

  /** Moves a request that cannot be carried out aside, with the reason: it is not tried again. */
  private async refuse(text: string, error: string): Promise<void> {
    const { redis, options } = this.session;
    log.error({ request: text.slice(0, 500), error, refusedRequests: keys.refusedRequests(options.pipeline) }, 'control request refused and moved aside');
    await redis
      .multi()
      .rpush(keys.refusedRequests(options.pipeline), JSON.stringify({ request: text, error, at: new Date().toISOString() }))
      .lpop(keys.requests(options.pipeline))
      .exec();
  }

  /**
   * Holds the tables' changes at once (the next one read is held), records the copies, runs
   * `beforeCopy`, and starts copying. Resolves once the copies are recorded.
   */
  private async start(tableOids: number[], destinations: string[] | undefined, reason: string, beforeCopy = async () => {}): Promise<void> {
    for (const oid of tableOids) {
      this.holds.set(oid, []);
      this.applying.delete(oid);
    }
    log.info({ tableOids, destinations: destinations ?? 'all', reason }, "table sync: holding the tables' changes and copying them");
    for (const oid of tableOids) await this.remember(oid, { ...(destinations ? { destinations } : {}), reason });
    await beforeCopy();
    if (this.session.signal.aborted) return;
    this.copy(new Map(tableOids.map((oid) => [oid, undefined])), destinations, reason);
  }

  private copy(tables: Map<number, TableCopyProgress | undefined>, destinations: string[] | undefined, reason: string): void {
    const { session } = this;
    const waitForRoom = async () => {
      await session.watcher.measure();
      while (session.watcher.isFull && !session.signal.aborted) await sleep(POLL_MS);
    };
    // Once the session has ended, a copy still finishing touches nothing: the next session
    // continues it from its record, and the held changes are read again from the slot.
    const record = async (oid: number, progress: TableCopyProgress) => {
      if (!session.signal.aborted) await this.remember(oid, { ...(destinations ? { destinations } : {}), reason, progress });
    };
    const copied = async (oid: number, copy?: CopiedTable) => {
      if (session.signal.aborted) return;
      this.release(oid);
      if (copy) {
        this.known.add(oid);
        await writePipelineState(session.redis, session.options.pipeline, { tables: [...this.known] });
        log.info(
          { table: qualifiedName(copy.relation), rows: copy.rows, snapshotLsn: formatLsn(copy.snapshotLsn) },
          'table sync: copy enqueued, changes released',
        );
      }
      // Recorded until applied: should Redis lose its chunks before then, the next session copies again.
      if (copy?.lastBatch) this.applying.set(oid, { ...copy.lastBatch, ...(destinations ? { destinations } : {}) });
      else await this.forget(oid);
    };
    copyTablesAtNewSnapshot(session, tables, destinations, waitForRoom, record, copied).catch(this.fail);
  }

  /** Forgets the copies every destination they are for has applied (its mark of this run reached their last chunk). */
  private async forgetApplied(): Promise<void> {
    const { epoch, queues, watcher } = this.session;
    for (const [oid, { partition, seq, destinations }] of this.applying) {
      const applied = (destinations ?? queues.destinations).every((name) => {
        const mark = watcher.marks.get(name)?.get(partition);
        return !queues.destinations.includes(name) || (mark?.epoch === epoch && mark.seq >= seq);
      });
      if (!applied) continue;
      this.applying.delete(oid);
      await this.forget(oid);
    }
  }

  private async remember(tableOid: number, record: TableSyncRecord): Promise<void> {
    this.records.set(tableOid, record);
    await this.session.redis.hset(keys.tableSyncs(this.session.options.pipeline), String(tableOid), JSON.stringify(record));
  }

  private async forget(tableOid: number): Promise<void> {
    this.records.delete(tableOid);
    await this.session.redis.hdel(keys.tableSyncs(this.session.options.pipeline), String(tableOid));
  }

  /** Puts the held changes into batches, in their stream order, behind the copy. */
  private release(tableOid: number): void {
    const held = this.holds.get(tableOid) ?? [];
    this.holds.delete(tableOid);
    this.heldCount -= held.length;
    for (const change of held) this.heldBytes -= change.bytes;
    for (const change of held) this.session.tracker.release(change.entry, change.enqueue());
  }
}

/**
 * Tables no longer published: Postgres sends nothing of them, and every destination keeps them
 * as they were. Said so the operator can drop them there or publish them again (a table added
 * back is copied afresh). Where publish_via_partition_root was changed, the tables that now
 * publish their rows are copied as tables of their own, and the ones named here are left behind.
 */
function sayDeparted(departed: DepartedTable[], publication: string): void {
  const dropped = departed.filter((table) => table.name === undefined).map((table) => table.oid);
  if (dropped.length > 0) log.info({ tableOids: dropped }, 'tables dropped in Postgres: every destination keeps them as they were');
  const moved = departed.filter((table) => table.publishedAs);
  if (moved.length > 0) {
    log.warn(
      { tables: moved.map((table) => table.name), publishedAs: moved.map((table) => table.publishedAs) },
      `publication ${publication} now publishes these tables' rows under other tables of their partition trees (publish_via_partition_root was changed): those are copied to every destination as tables of their own, and these are no longer updated there; drop them at the destinations`,
    );
  }
  const left = departed.filter((table) => table.name !== undefined && !table.publishedAs);
  if (left.length > 0) {
    log.warn(
      { tables: left.map((table) => table.name) },
      `tables left publication ${publication}: their changes are no longer replicated, and every destination keeps their rows as they were; add them back to the publication to replicate them again (they are copied afresh), or drop them at the destinations`,
    );
  }
}
