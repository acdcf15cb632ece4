import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { type Relation, qualifiedName } from '../shared/events.js';
import { keys } from '../shared/keys.js';
import { log } from '../shared/log.js';
import { type Lsn, formatLsn } from '../shared/lsn.js';
import { writePipelineState } from '../shared/redis.js';
import type { PendingEntry } from './acks.js';
import { Catalog, describeTable, publicationTables } from './catalog.js';
import { TableCopy, copyInRanges, openSnapshotConnections, planRanges, scansCtidRanges, withExportedSnapshot } from './copy.js';
import { POLL_MS, type Session } from './options.js';

/**
 * Copies tables beside the running stream, at one exact LSN: a temporary slot's exported
 * snapshot is its consistent point S, so the copy holds exactly the changes committed before
 * S. The caller holds the tables' streamed changes meanwhile and releases them once each table's
 * copy is enqueued (onCopied; without a copy when the table left the publication).
 */
export async function copyTablesAtNewSnapshot(
  session: Session,
  tableOids: number[],
  destinations: string[] | undefined,
  waitForRoom: () => Promise<void>,
  onCopied: (tableOid: number, copied?: { snapshotLsn: Lsn; relation: Relation; rows: number }) => void,
): Promise<void> {
  const { options } = session;
  await withExportedSnapshot(options.pgUrl, async (snapshot) => {
    const connections = await openSnapshotConnections(options.pgUrl, snapshot.name, options.copyConnections);
    try {
      const client = connections[0];
      const published = await publicationTables(client, options.publication);
      const catalog = new Catalog(client);
      const copies: TableCopy[] = [];
      const rangeScans = await scansCtidRanges(client);
      for (const tableOid of tableOids) {
        const table = published.find((candidate) => candidate.oid === tableOid);
        if (!table) {
          onCopied(tableOid);
          continue;
        }
        const relation = await describeTable(client, table, catalog);
        const ranges = await planRanges(client, table, snapshot.lsn, options.copyRangeBlocks, rangeScans);
        copies.push(new TableCopy(session, relation, table.rowFilter, ranges, { run: 0, merge: false, destinations, room: waitForRoom }));
      }
      await copyInRanges(
        connections,
        copies,
        () => {},
        async (copy) => {
          if (copy.finished) onCopied(copy.relation.oid, { snapshotLsn: snapshot.lsn, relation: copy.relation, rows: copy.rows });
        },
        { msg: 'table sync: copying' },
      );
    } finally {
      await Promise.all(connections.map((client) => client.end().catch(() => {})));
    }
  });
}

/** What `pg-replicate resync`, a starting consumer and `destinations remove` ask of the producer. */
export type Request = { tableOid: number; destinations?: string[] } | { addDestination: string } | { removeDestination: string };

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
 * Online table sync: copies a table beside the stream — when it joins the publication, or on
 * request (`pg-replicate resync`) — with invariant 4 of the design: the table's streamed
 * changes are held while its copy is enqueued, then released behind it, so its partition sees
 * the copy first and then the changes. Released changes older than the copy are skipped by
 * the destinations (their version is below the copy's), so nothing is dropped here, and a
 * resync for some destinations leaves the others' stream whole.
 */
export class TableSync {
  private readonly holds = new Map<number, HeldChange[]>();
  private heldCount = 0;
  private heldBytes = 0;
  private lastPublicationPoll = Date.now();

  constructor(
    private readonly session: Session,
    private readonly redis: Redis,
    /** Tables every destination has a copy of, by OID. */
    private readonly known: Set<number>,
    private readonly destinations: { add(name: string): Promise<boolean>; added(name: string): Promise<void>; remove(name: string): Promise<void> },
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

  get syncing(): number {
    return this.holds.size;
  }

  /** A relation message: a table we have not copied has joined the publication. */
  noticeRelation(tableOid: number): void {
    if (!this.known.has(tableOid) && !this.holds.has(tableOid)) this.start([tableOid], undefined, 'added to the publication');
  }

  /** Called from the stream's loop: requests (resync, destinations added or removed), and tables added to the publication without changes yet. */
  async tick(publicationTables: () => Promise<number[]>): Promise<void> {
    for (;;) {
      const text = await this.redis.lpop(keys.requests(this.session.options.pipeline));
      if (!text) break;
      const request = JSON.parse(text) as Request;
      if ('tableOid' in request) {
        if (!this.holds.has(request.tableOid)) this.start([request.tableOid], request.destinations, 'resync requested');
      } else if ('addDestination' in request) {
        const name = request.addDestination;
        if (await this.destinations.add(name)) this.start([...this.known].filter((oid) => !this.holds.has(oid)), [name], 'new destination', () => this.destinations.added(name));
      } else if ('removeDestination' in request) {
        await this.destinations.remove(request.removeDestination);
      }
    }
    if (Date.now() - this.lastPublicationPoll < PUBLICATION_POLL_MS) return;
    this.lastPublicationPoll = Date.now();
    const published = new Set(await publicationTables());
    for (const oid of published) this.noticeRelation(oid);
    for (const oid of this.known) if (!published.has(oid)) this.known.delete(oid);
  }

  private start(tableOids: number[], destinations: string[] | undefined, reason: string, done = async () => {}): void {
    for (const oid of tableOids) this.holds.set(oid, []);
    log.info({ tableOids, destinations: destinations ?? 'all', reason }, 'table sync: holding the tables\' changes and copying them');
    const waitForRoom = async () => {
      await this.session.watcher.measure();
      while (this.session.watcher.isFull && !this.session.signal.aborted) await sleep(POLL_MS);
    };
    const copied = (oid: number, copy?: { snapshotLsn: Lsn; relation: Relation; rows: number }) => {
      this.release(oid);
      if (!copy) return;
      this.known.add(oid);
      log.info({ table: qualifiedName(copy.relation), rows: copy.rows, snapshotLsn: formatLsn(copy.snapshotLsn) }, 'table sync: copy enqueued, changes released');
    };
    copyTablesAtNewSnapshot(this.session, tableOids, destinations, waitForRoom, copied)
      .then(() => writePipelineState(this.redis, this.session.options.pipeline, { tables: [...this.known] }))
      .then(done)
      .catch((error: Error) => this.fail(error));
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
