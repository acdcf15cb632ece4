import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import pg from 'pg';
import { COPY_TEXT_OPTIONS } from '../shared/csv.js';
import { type OutgoingBatch, qualifiedName, type Relation } from '../shared/events.js';
import { keys, partitionOf } from '../shared/keys.js';
import { log } from '../shared/log.js';
import { formatLsn, type Lsn, parseLsn } from '../shared/lsn.js';
import { PRODUCER_SESSION_SETTINGS } from '../shared/pgconn.js';
import type { TableCopyProgress } from '../shared/redis.js';
import { Catalog, describeTable, type PublishedTable, publicationTables } from './catalog.js';
import { ChunkWriter } from './chunkwriter.js';
import { CopyOut } from './copyout.js';
import { tally } from './metrics.js';
import { POLL_MS } from './options.js';
import { oversizedCopyRow } from './oversize.js';
import { dataRefusal } from './preflight.js';
import { quoteIdent, ReplicationConnection } from './replication.js';
import type { Session } from './session.js';
import { inPlaceSocket } from './wire.js';

/** A resumed run numbers its chunks above every earlier run's: chunk = run × 2³² + n. */
const RUN_STRIDE = 2 ** 32;

/** Where the copy of the tables comes from: a snapshot's name and the LSN it was taken at. */
export interface CopySnapshot {
  name: string;
  lsn: Lsn;
}

/**
 * The initial copy of every table of the publication under the slot's exported snapshot, or —
 * when `resume` holds an interrupted copy's progress — the rest of it under a new snapshot.
 * Large tables are cut into CTID ranges, copied over several connections; each range is
 * recorded in Redis once its rows are all in the queues, so a restart loses at most the ranges
 * in flight. The whole copy is one entry for the ack tracker. Returns the tables' OIDs.
 */
export async function copyTables(
  session: Session,
  redis: Redis,
  snapshot: CopySnapshot,
  resume?: { progress: Map<number, TableCopyProgress>; slotLsn: Lsn },
): Promise<number[]> {
  const { options, tracker, queues } = session;
  const connections = await openSnapshotConnections(options.pgUrl, snapshot.name, options.copyConnections);
  try {
    const client = connections[0];
    const run = await redis.hincrby(keys.state(options.pipeline), 'copyRun', 1);
    const rangeScans = await scansCtidRanges(client);
    const catalog = new Catalog(client);
    const copies: TableCopy[] = [];
    for (const table of await publicationTables(client, options.publication)) {
      const earlier = resume?.progress.get(table.oid);
      if (resume && !earlier) continue; // joined the publication since: the stream's table sync copies it
      const relation = await describeTable(client, table, catalog);
      let progress: TableCopyProgress;
      if (earlier && mendsByKey(relation)) {
        // Rows of the remaining ranges are read at the new snapshot but keep the copy's version:
        // the stream replays from the copy's LSN, and by key every row converges.
        progress = earlier;
      } else {
        // Keyless tables cannot be mended by key: an unfinished one is copied anew, at the new snapshot.
        if (earlier && earlier.done.length === earlier.ranges) continue;
        progress = await planRanges(client, table, snapshot.lsn, options.copyRangeBlocks, rangeScans);
        await redis.hset(keys.copyProgress(options.pipeline), String(table.oid), JSON.stringify(progress));
      }
      // A resumed copy's rows may have reached the queues before the restart (ranges in flight): they replace by key.
      copies.push(new TableCopy(session, relation, table.rowFilter, progress, { run, merge: progress === earlier }));
    }
    tracker.begin();
    await copyInRanges(
      connections,
      copies,
      (batch) => tracker.touch(batch.partition, batch.seq),
      async (copy, range, rows) => {
        // Recorded only once its rows are in Redis: a restart then never skips rows it lacks.
        await queues.settle();
        await redis.hset(keys.copyProgress(options.pipeline), String(copy.relation.oid), JSON.stringify(copy.rangeDone(range, rows)));
      },
      { msg: resume ? 'resuming the copy' : 'copying tables', resumed: !!resume },
    );
    await queues.settle();
    // A resumed copy is acknowledged at the slot's position, not the new snapshot's: the stream
    // must still replay what lies between them.
    tracker.commit(resume?.slotLsn ?? snapshot.lsn, true);
    log.info({ tables: copies.length, rows: copies.reduce((sum, copy) => sum + copy.rows, 0) }, 'copy enqueued');
    return resume ? [...resume.progress.keys()] : copies.map((copy) => copy.relation.oid);
  } finally {
    await Promise.all(connections.map((client) => client.end().catch(() => {})));
  }
}

/**
 * Copies the tables' remaining ranges over the connections, each taking the next range of any
 * table; `afterRange` runs once a range's rows are handed to the queues.
 */
export async function copyInRanges(
  connections: pg.Client[],
  copies: TableCopy[],
  onBatch: (batch: { partition: number; seq: number }) => void,
  afterRange: (copy: TableCopy, range: number, rows: number) => Promise<void>,
  logged: { msg: string; resumed?: boolean },
): Promise<void> {
  const work = copies.flatMap((copy) => copy.remainingRanges().map((range) => ({ copy, range })));
  log.info({ tables: copies.length, ranges: work.length, resumed: logged.resumed }, logged.msg);
  const worker = async (client: pg.Client) => {
    for (let item = work.shift(); item; item = work.shift()) {
      const rows = await item.copy.copyRange(client, item.range, onBatch);
      await afterRange(item.copy, item.range, rows);
    }
  };
  await Promise.all(connections.map(worker));
}

/**
 * Whether an interrupted copy of the table can be continued: rows of its remaining ranges, read
 * at a later snapshot, replace by key whatever the earlier run delivered, and the stream
 * replayed from the copy's LSN makes every row converge. Keyless tables are copied anew.
 */
export function mendsByKey(relation: Relation): boolean {
  return relation.replicaIdentity !== 'full' && relation.columns.some((column) => column.isKey);
}

/** Whether the server scans CTID ranges directly (Postgres 14+); older ones would read the whole table per range. */
export async function scansCtidRanges(client: pg.Client): Promise<boolean> {
  return Number((await client.query('SHOW server_version_num')).rows[0].server_version_num) >= 140000;
}

/** Cuts a table's copy into CTID ranges of `rangeBlocks` heap blocks (one range without range scans, or for a partitioned table). */
export async function planRanges(
  client: pg.Client,
  table: PublishedTable,
  snapshotLsn: Lsn,
  rangeBlocks: number,
  rangeScans: boolean,
): Promise<TableCopyProgress> {
  const ranges = rangeScans && table.kind === 'r' ? Math.max(1, Math.ceil((await heapBlocks(client, table.oid)) / rangeBlocks)) : 1;
  const estimatedRows = await estimatedRowsOf(client, table.oid);
  return {
    schema: table.schema,
    name: table.name,
    snapshotLsn: formatLsn(snapshotLsn),
    ranges,
    rangeBlocks,
    done: [],
    rows: 0,
    ...(estimatedRows === undefined ? {} : { estimatedRows }),
    startedAt: Date.now(),
  };
}

/** pg_class.reltuples, when Postgres has an estimate (-1 before the first VACUUM or ANALYZE, since Postgres 14). */
async function estimatedRowsOf(client: pg.Client, tableOid: number): Promise<number | undefined> {
  const { rows } = await client.query('SELECT reltuples::float8 AS rows FROM pg_class WHERE oid = $1', [tableOid]);
  const estimate = Number(rows[0]?.rows);
  return estimate >= 0 ? Math.round(estimate) : undefined;
}

/**
 * Connections that all see one exported snapshot. They import it before anything else runs on
 * the exporting connection: the snapshot lives only while that connection stays idle.
 */
export async function openSnapshotConnections(pgUrl: string, snapshotName: string, count: number): Promise<pg.Client[]> {
  const connections: pg.Client[] = [];
  try {
    for (let i = 0; i < Math.max(1, count); i++) {
      const client = new pg.Client({
        connectionString: pgUrl,
        application_name: 'pg-replicate copy',
        options: PRODUCER_SESSION_SETTINGS,
        stream: inPlaceSocket,
      });
      // A lost connection fails its COPY, which ends the session: the event itself needs no more.
      client.on('error', () => {});
      connections.push(client);
      await client.connect();
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      await client.query(`SET TRANSACTION SNAPSHOT '${snapshotName}'`);
    }
    return connections;
  } catch (error) {
    await Promise.all(connections.map((client) => client.end().catch(() => {})));
    throw error;
  }
}

let exported = 0;

/**
 * Runs `body` with a snapshot at an exact LSN: a temporary slot's consistent point, exported.
 * Import it (openSnapshotConnections) before `body` awaits anything else: the exporting
 * connection must stay idle meanwhile, and the slot goes away with it afterwards.
 */
export async function withExportedSnapshot<T>(pgUrl: string, body: (snapshot: CopySnapshot) => Promise<T>): Promise<T> {
  // Losing it loses the snapshot: the copy's connections then fail, and the session with them.
  const replication = await ReplicationConnection.open(pgUrl, 'pg-replicate copy');
  try {
    const created = await replication.createSlot(`pgr_sync_${process.pid}_${++exported}`, true, true);
    return await body({ name: created.snapshotName!, lsn: created.consistentPoint });
  } finally {
    await replication.close();
  }
}

/** The table's size in heap blocks, as of now (rows the snapshot sees are all below it). */
async function heapBlocks(client: pg.Client, tableOid: number): Promise<number> {
  const result = await client.query(`SELECT pg_relation_size(${tableOid}) / current_setting('block_size')::int8 AS blocks`);
  return Number(result.rows[0].blocks);
}

/**
 * One table's copy in this run: its ranges, the numbering of its chunks in queue order, and
 * which chunk is its last (the final chunk of the last range to finish).
 */
export class TableCopy {
  rows = 0;
  private chunks = 0;
  private unfinished = 0;
  /** The copy's identity: its rows carry version (snapshotLsn, 0). */
  readonly snapshotLsn: Lsn;
  /** The batch of the table's last chunk, once sent: the copy is applied where a destination's mark reaches it. */
  lastBatch?: { partition: number; seq: number };
  private readonly room: () => Promise<void>;

  constructor(
    private readonly session: Session,
    readonly relation: Relation,
    private readonly rowFilter: string | null,
    /** Its ranges and those already done (updated as ranges finish). */
    private readonly progress: TableCopyProgress,
    private readonly options: {
      /** This copy run's number: chunk numbers start at run × 2³². */
      run: number;
      /** Rows replace stored rows with their key (a resumed copy). */
      merge: boolean;
      /** Only these destinations (a resync for one); all by default. */
      destinations?: string[];
      room?: () => Promise<void>;
    },
  ) {
    this.snapshotLsn = parseLsn(progress.snapshotLsn);
    this.room = options.room ?? (() => waitForRoom(session));
  }

  remainingRanges(): number[] {
    const progress = this.progress;
    const ranges = Array.from({ length: progress.ranges }, (_, index) => index).filter((index) => !progress.done.includes(index));
    this.unfinished = ranges.length;
    return ranges;
  }

  /** Whether every range of this run has been handed to the queues. */
  get finished(): boolean {
    return this.unfinished === 0;
  }

  /**
   * Streams one range with COPY (in Postgres' text format, shared/csv) into chunks of whole rows,
   * written to Redis as they come from Postgres (producer/chunkwriter) and cut at exactly
   * --copy-chunk-rows rows or at --copy-chunk-bytes. The chunk still open when the table's last range ends is marked as the
   * table's last.
   */
  async copyRange(client: pg.Client, range: number, onBatch: (batch: { partition: number; seq: number }) => void): Promise<number> {
    // Before each range as well as after each full chunk: a range smaller than a chunk ends in
    // a chunk of its own, and ranges of wide rows (1 kB of JSON) never fill one, so without this
    // wait such a copy never paused at the backlog bound (Redis held 1.5 GB against 384 MB).
    await this.room();
    const { relation } = this;
    const columns = relation.columns.map((column) => quoteIdent(column.name)).join(', ');
    const conditions = [this.rowFilter, this.ctidRange(range)].filter((condition) => condition);
    const where = conditions.length > 0 ? ` WHERE ${conditions.map((condition) => `(${condition})`).join(' AND ')}` : '';
    const { copyChunkRows, copyChunkBytes } = this.session.options;
    const copyOut = new CopyOut(
      `COPY (SELECT ${columns} FROM ${quoteIdent(relation.schema)}.${quoteIdent(relation.name)}${where}) TO STDOUT (${COPY_TEXT_OPTIONS})`,
      { rows: copyChunkRows, bytes: copyChunkBytes },
    );
    client.query(copyOut as never);
    const before = this.rows;
    const targets = this.options.destinations ?? this.session.queues.destinations;
    let open: ChunkWriter | undefined;
    try {
      open = await this.writeChunks(copyOut, targets, onBatch);
    } catch (error) {
      throw dataRefusal(error, qualifiedName(relation)) ?? error;
    }
    await open?.seal(targets);
    const lastOfTable = --this.unfinished === 0;
    // The table's last chunk is sent even empty, to complete the copy.
    if (open || lastOfTable) this.send(open, lastOfTable, targets, onBatch);
    return this.rows - before;
  }

  /** The copy's pieces into chunks, each sent once full; returns the chunk still open at the end. */
  private async writeChunks(
    copyOut: CopyOut,
    targets: string[],
    onBatch: (batch: { partition: number; seq: number }) => void,
  ): Promise<ChunkWriter | undefined> {
    const { relation } = this;
    const { pipeline } = this.session.options;
    let open: ChunkWriter | undefined;
    for await (const piece of copyOut) {
      if (this.session.signal.aborted) throw new Error('the producer session ended during a table copy');
      // Pieces are small but for a single long row: one too long for a Redis value is named.
      if (piece.longestRow > this.session.largestRowBytes) throw oversizedCopyRow(relation, piece.data, this.session.largestRowBytes);
      open ??= new ChunkWriter(this.session.redis, pipeline, this.session.epoch, this.partition);
      await open.write(piece);
      if (piece.endsChunk) {
        await open.seal(targets);
        this.send(open, false, targets, onBatch);
        open = undefined;
        await this.room();
      }
    }
    return open;
  }

  /** Marks a range as copied (its rows all in Redis); returns the progress, for the caller to record. */
  rangeDone(range: number, rows: number): TableCopyProgress {
    const progress = this.progress;
    progress.done.push(range);
    progress.rows += rows;
    progress.updatedAt = Date.now();
    return progress;
  }

  private ctidRange(range: number): string | undefined {
    const { ranges, rangeBlocks } = this.progress;
    if (ranges === 1) return undefined;
    const from = `ctid >= '(${range * rangeBlocks},0)'::tid`;
    return range === ranges - 1 ? from : `${from} AND ctid < '(${(range + 1) * rangeBlocks},0)'::tid`;
  }

  private get partition(): number {
    return partitionOf(this.relation.oid, this.session.options.partitions);
  }

  private send(ready: ChunkWriter | undefined, last: boolean, targets: string[], onBatch: (batch: { partition: number; seq: number }) => void): void {
    const { options, epoch, sequencer, queues } = this.session;
    const partition = this.partition;
    const seq = sequencer.next(partition);
    const chunk = this.options.run * RUN_STRIDE + this.chunks++;
    const rows = ready?.rows ?? 0;
    const bytes = ready?.bytes ?? 0;
    const batch: OutgoingBatch = {
      pipeline: options.pipeline,
      partition,
      epoch,
      seq,
      relations: [this.relation],
      records: Buffer.alloc(0),
      copy: {
        relation: 0,
        snapshotLsn: this.snapshotLsn,
        chunk,
        last,
        rows,
        bytes,
        ...(ready ? { id: ready.id, longestRow: ready.longestRow } : {}),
        ...(this.options.merge ? { merge: true } : {}),
      },
    };
    queues.enqueue(batch, targets);
    onBatch({ partition, seq });
    if (last) this.lastBatch = { partition, seq };
    this.rows += rows;
    const table = qualifiedName(this.relation);
    tally.copiedRows.set(table, (tally.copiedRows.get(table) ?? 0) + rows);
  }
}

/** Waits while Redis or the destinations are behind: the copy never floods the queues. */
export async function waitForRoom({ watcher, signal }: Session): Promise<void> {
  await watcher.measure();
  while (watcher.isFull) {
    await sleep(POLL_MS, undefined, { signal });
    await watcher.poll(() => {});
  }
}
