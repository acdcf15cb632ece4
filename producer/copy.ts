import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import copyStreams from 'pg-copy-streams';
import type { Batch, Relation } from '../shared/events.js';
import { partitionOf } from '../shared/keys.js';
import { log } from '../shared/log.js';
import type { Lsn } from '../shared/lsn.js';
import { VALUE_TEXT_SETTINGS } from '../shared/pgconn.js';
import { Catalog, describeTable, publicationTables } from './catalog.js';
import { CsvRowCutter } from './copycsv.js';
import { POLL_MS, type Session } from './options.js';
import { quoteIdent } from './replication.js';

/**
 * Copies every table of the publication under the slot's exported snapshot, as chunk batches
 * in each table's partition, and records the whole copy as one entry for the ack tracker.
 */
export async function copyTables(session: Session, snapshotName: string, snapshotLsn: Lsn): Promise<number[]> {
  const { options, tracker, queues } = session;
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
    const catalog = new Catalog(connections[0]);
    const relations: Relation[] = [];
    const rowFilters = new Map<Relation, string | null>();
    for (const table of tables) {
      const relation = await describeTable(connections[0], table, catalog);
      relations.push(relation);
      rowFilters.set(relation, table.rowFilter);
    }
    tracker.begin();
    const pending = [...relations];
    let rows = 0;
    const worker = async (client: pg.Client) => {
      for (let relation = pending.shift(); relation; relation = pending.shift()) {
        const copied = await copyTable(session, client, relation, rowFilters.get(relation) ?? null, snapshotLsn, (batch) => tracker.touch(batch.partition, batch.seq));
        rows += copied;
        log.info({ table: `${relation.schema}.${relation.name}`, rows: copied }, 'table copied');
      }
    };
    await Promise.all(connections.map(worker));
    await queues.settle();
    tracker.commit(snapshotLsn, true);
    log.info({ tables: relations.length, rows }, 'copy enqueued');
    return relations.map((relation) => relation.oid);
  } finally {
    await Promise.all(connections.map((client) => client.end().catch(() => {})));
  }
}

/** Streams one table with COPY into chunk batches; never holds more than one chunk. */
/**
 * Streams one table with COPY (CSV) into chunk batches of whole rows, passed through as they
 * come from Postgres; never holds more than one chunk. A chunk is held back until the next
 * one starts, so the table's last chunk can be marked as such.
 */
export async function copyTable(
  session: Session,
  client: pg.Client,
  relation: Relation,
  rowFilter: string | null,
  snapshotLsn: Lsn,
  onBatch: (batch: { partition: number; seq: number }) => void,
  destinations?: string[],
  room: () => Promise<void> = () => waitForRoom(session),
): Promise<number> {
  const { options, epoch, sequencer, queues } = session;
  const partition = partitionOf(relation.oid, options.partitions);
  const columns = relation.columns.map((column) => quoteIdent(column.name)).join(', ');
  const where = rowFilter ? ` WHERE ${rowFilter}` : '';
  const stream = client.query(copyStreams.to(`COPY (SELECT ${columns} FROM ${quoteIdent(relation.schema)}.${quoteIdent(relation.name)}${where}) TO STDOUT (FORMAT csv)`));
  const cutter = new CsvRowCutter();
  let chunk = 0;
  let total = 0;
  let parts: Buffer[] = [];
  let bytes = 0;
  let rows = 0;
  let held: { csv: string; rows: number } | undefined;
  const send = (ready: { csv: string; rows: number }, last: boolean) => {
    const seq = sequencer.next(partition);
    const batch: Batch = {
      pipeline: options.pipeline,
      partition,
      epoch,
      seq,
      relations: [relation],
      changes: [],
      copy: { relation: 0, snapshotLsn, chunk: chunk++, last, rows: ready.rows, csv: ready.csv },
    };
    queues.enqueue(batch, ready.csv.length, destinations);
    onBatch({ partition, seq });
    total += ready.rows;
  };
  const cut = () => {
    const ready = { csv: Buffer.concat(parts, bytes).toString('utf8'), rows };
    parts = [];
    bytes = 0;
    rows = 0;
    return ready;
  };
  for await (const data of stream as AsyncIterable<Buffer>) {
    if (session.signal.aborted) throw new Error('the producer session ended during a table copy');
    const complete = cutter.push(data);
    if (!complete) continue;
    parts.push(complete.rows);
    bytes += complete.rows.length;
    rows += complete.count;
    if (rows >= options.copyChunkRows || bytes >= options.maxBatchBytes) {
      if (held) send(held, false);
      held = cut();
      await room();
    }
  }
  cutter.end();
  const rest = cut();
  if (held && rest.rows > 0) {
    send(held, false);
    held = rest;
  }
  send(held ?? rest, true);
  return total;
}

/** Waits while Redis or the destinations are behind: the copy never floods the queues. */
export async function waitForRoom({ watcher, signal }: Session): Promise<void> {
  while (watcher.isFull) {
    await sleep(POLL_MS, undefined, { signal });
    await watcher.poll(() => {});
  }
}
