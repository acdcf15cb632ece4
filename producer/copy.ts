import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import copyStreams from 'pg-copy-streams';
import type { Batch, Relation, Value } from '../shared/events.js';
import { partitionOf } from '../shared/keys.js';
import { log } from '../shared/log.js';
import type { Lsn } from '../shared/lsn.js';
import { VALUE_TEXT_SETTINGS } from '../shared/pgconn.js';
import { Catalog, describeTable, publicationTables } from './catalog.js';
import { CopyTextParser } from './copytext.js';
import { MAX_PENDING_ADDS, POLL_MS, type Session } from './options.js';
import { quoteIdent } from './replication.js';

/**
 * Copies every table of the publication under the slot's exported snapshot, as chunk batches
 * in each table's partition, and records the whole copy as one entry for the ack tracker.
 */
export async function copyTables(session: Session, snapshotName: string, snapshotLsn: Lsn): Promise<void> {
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
        const copied = await copyTable(session, client, relation, rowFilters.get(relation) ?? null, snapshotLsn);
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
async function copyTable(session: Session, client: pg.Client, relation: Relation, rowFilter: string | null, snapshotLsn: Lsn): Promise<number> {
  const { options, epoch, sequencer, tracker, queues } = session;
  const partition = partitionOf(relation.oid, options.partitions);
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
        await waitForRoom(session);
      }
    }
  }
  parser.end();
  send(true);
  return total;
}

/** Waits while Redis or the destinations are behind: the copy never floods the queues. */
export async function waitForRoom({ queues, watcher, options, signal }: Session): Promise<void> {
  while (queues.pendingAdds > MAX_PENDING_ADDS || watcher.backlog > options.maxBacklogBatches) {
    await sleep(POLL_MS, undefined, { signal });
    await watcher.poll(() => {});
  }
}
