import { setTimeout as sleep } from 'node:timers/promises';
import type { Relation } from '../shared/events.js';
import { log } from '../shared/log.js';
import { formatLsn, type Lsn, maxLsn } from '../shared/lsn.js';
import type { RowOp } from '../shared/tupledata.js';
import { Batcher } from './batcher.js';
import type { PublicationReader } from './catalog.js';
import { Heartbeat } from './heartbeat.js';
import type { LagGuard } from './lagguard.js';
import { showSession, tally } from './metrics.js';
import { oversizedChange } from './oversize.js';
import { decodePgoutput, type PgoutputMessage, rowOp } from './pgoutput.js';
import { PG_EPOCH_MS, type ReplicationConnection } from './replication.js';
import type { AckPosition, Session } from './session.js';
import type { TableSync } from './tablesync.js';

/** What arrives from the walsender, in order: a decoded pgoutput message, or a keepalive's WAL end. */
type Arrival = { decoded: PgoutputMessage } | { walEnd: Lsn };

/** Arrivals held before reading pauses, and the level at which it resumes. */
const INBOX_HIGH = 4096;
const INBOX_LOW = 512;

/**
 * Streams the slot until the session ends: decodes pgoutput, batches changes by partition,
 * tracks each transaction until every destination applied it, and tells Postgres so.
 * Arrivals go through an inbox processed one at a time, so a message that needs a catalog
 * look-up (a relation) can be awaited without reordering anything behind it.
 */
export async function streamSlot(
  session: Session,
  replication: ReplicationConnection,
  position: AckPosition,
  describe: (relation: Relation, previous?: Relation) => Promise<Relation>,
  { tableSync, lagGuard, publication }: { tableSync: TableSync; lagGuard: LagGuard; publication: PublicationReader },
  fail: (error: Error) => void,
): Promise<void> {
  const { options, epoch, sequencer, tracker, queues, watcher, signal } = session;
  const limits = { maxChanges: options.maxBatchChanges, maxBytes: options.maxBatchBytes };
  const batcher = new Batcher(options.pipeline, epoch, options.partitions, limits, sequencer, (batch) => queues.enqueue(batch));
  const inbox: Arrival[] = [];
  let inboxHead = 0;
  let draining = false;
  let commitLsn: Lsn = 0n;
  let ordinal = 0;
  let lastStatus = 0;
  let lastActivity = Date.now();
  // Set per message, turned into a time by the loop below: Date.now() per row was half a
  // second of the producer's CPU in a 5 M-row transaction.
  let active = false;
  type PauseReason = 'inbox' | 'backlog' | 'redis_memory' | 'held' | 'operator';
  const pauses = new Set<PauseReason>();
  /** The newest WAL position the server reported (keepalives) or we read (commits): for the lag metric. */
  let serverLsn = position.lsn;
  showSession(session, position, { serverLsn: () => serverLsn, pauses: () => pauses });

  const sendStatus = (replyRequested = false) => {
    replication.sendStatus(position.lsn, replyRequested);
    lastStatus = Date.now();
  };
  const setPaused = (reason: PauseReason, shouldPause: boolean) => {
    const wasPaused = pauses.size > 0;
    if (shouldPause) pauses.add(reason);
    else pauses.delete(reason);
    if (wasPaused === pauses.size > 0) return;
    if (pauses.size > 0) replication.pause();
    else replication.resume();
    log.debug({ paused: pauses.size > 0, reason }, 'slot read pause changed');
  };

  /** A row change, its images `message` from `start` to `end` (kept only by copying). */
  const addRow = (op: RowOp, oid: number, message: Buffer, start: number, end: number) => {
    if (end - start > session.largestRowBytes) throw oversizedChange(batcher.relation(oid), op, message, start, end, session.largestRowBytes);
    tally.changes[op]++;
    const lsn = commitLsn;
    const position = ++ordinal;
    if (tableSync.isHeld(oid)) {
      const shape = batcher.relation(oid);
      // Kept past this call: a copy of the images, not a view of the read buffer.
      const kept = Buffer.from(message.subarray(start, end));
      tableSync.hold(oid, { entry: tracker.hold(), enqueue: () => batcher.addRow(op, oid, lsn, position, kept, 0, kept.length, shape), bytes: kept.length });
      if (tableSync.isFull) setPaused('held', true);
    } else {
      const { partition, seq } = batcher.addRow(op, oid, lsn, position, message, start, end);
      tracker.touch(partition, seq);
    }
  };
  /** Too much unapplied: in Redis, or in transactions waiting for their acknowledgement (one batch can hold thousands). */
  const backlogFull = () => watcher.backlogFull || tracker.pendingTransactions > options.maxPendingTransactions;
  const noteActivity = () => {
    active = true;
    if (backlogFull()) setPaused('backlog', true);
    if (watcher.redisFull) setPaused('redis_memory', true);
  };

  const apply = (decoded: PgoutputMessage) => {
    switch (decoded.tag) {
      case 'begin':
        commitLsn = decoded.finalLsn;
        batcher.committedAt = Number(decoded.commitTime / 1000n) + PG_EPOCH_MS;
        ordinal = 0;
        tracker.begin();
        batcher.beginTransaction();
        break;
      case 'insert':
      case 'update':
      case 'delete':
        addRow(decoded.tag, decoded.relation, decoded.images, 0, decoded.images.length);
        break;
      case 'truncate': {
        const version = { lsn: commitLsn, ordinal: ++ordinal };
        const truncate = { op: 'truncate' as const, version, cascade: decoded.cascade, restartIdentity: decoded.restartIdentity };
        tally.changes.truncate++;
        const streamed = decoded.relations.filter((oid) => !tableSync.isHeld(oid));
        for (const oid of decoded.relations.filter((oid) => tableSync.isHeld(oid))) {
          tableSync.hold(oid, { entry: tracker.hold(), enqueue: () => batcher.addTruncate(truncate, [oid])[0], bytes: 16 });
        }
        if (streamed.length > 0) for (const { partition, seq } of batcher.addTruncate(truncate, streamed)) tracker.touch(partition, seq);
        break;
      }
      case 'commit':
        tracker.commit(decoded.endLsn);
        batcher.endTransaction();
        tally.transactions++;
        serverLsn = maxLsn(serverLsn, decoded.endLsn);
        break;
      default:
        break;
    }
  };

  const drain = async () => {
    draining = true;
    try {
      while (inboxHead < inbox.length && !signal.aborted) {
        const arrival = inbox[inboxHead++];
        if ('walEnd' in arrival) {
          // Nothing of ours is in flight: everything up to the server's WAL end is either applied or
          // not for us, so acknowledging it lets Postgres recycle WAL on a quiet publication.
          if (tracker.isIdle && batcher.isEmpty && arrival.walEnd > position.lsn) {
            position.lsn = arrival.walEnd;
            sendStatus();
          }
        } else {
          const { decoded } = arrival;
          if (decoded.tag === 'relation') {
            batcher.setRelation(await describe(decoded, batcher.knownRelation(decoded.oid)));
            tableSync.noticeRelation(decoded.oid);
          } else {
            apply(decoded);
          }
          noteActivity();
        }
        if (inboxHead === inbox.length) {
          inbox.length = 0;
          inboxHead = 0;
        }
        if (inbox.length - inboxHead < INBOX_LOW) setPaused('inbox', false);
      }
    } catch (error) {
      fail(error as Error);
    } finally {
      draining = false;
    }
  };
  const receive = (arrival: Arrival) => {
    // A message that waits behind a catalog look-up outlives the read buffer its images are in.
    if (draining && 'decoded' in arrival && 'images' in arrival.decoded) arrival.decoded.images = Buffer.from(arrival.decoded.images);
    inbox.push(arrival);
    if (inbox.length - inboxHead > INBOX_HIGH) setPaused('inbox', true);
    if (!draining) void drain();
  };

  const streaming = replication.start(options.slot, options.publication, 0n, {
    // Applied at once unless a catalog look-up is pending: the message lies in pg's read
    // buffer, which the next read reuses. A row change (nearly every message) is then batched
    // straight from there, with no object made for it.
    onData: (buffer, start, end) => {
      try {
        const op = rowOp(buffer[start]);
        if (op && !draining && inboxHead === inbox.length) {
          addRow(op, buffer.readUInt32BE(start + 1), buffer, start + 5, end);
          noteActivity();
        } else {
          receive({ decoded: decodePgoutput(buffer.subarray(start, end)) });
        }
      } catch (error) {
        fail(error as Error);
      }
    },
    onKeepalive: (walEnd, replyRequested) => {
      serverLsn = maxLsn(serverLsn, walEnd);
      if (replyRequested) sendStatus();
      receive({ walEnd });
    },
  });
  streaming.then(
    () => fail(new Error('the server ended replication')),
    (error: Error) => fail(error),
  );
  log.info({ slot: options.slot, from: formatLsn(position.lsn), epoch }, 'streaming');
  const heartbeat = new Heartbeat(options.pgUrl);
  try {
    while (!signal.aborted) {
      if (!draining) batcher.flushAll(pauses.size === 0);
      const advanced = await watcher.poll((ackLsn) => {
        position.lsn = maxLsn(position.lsn, ackLsn);
      });
      if (advanced || Date.now() - lastStatus >= options.statusIntervalMs) sendStatus();
      if (watcher.paused !== pauses.has('operator')) {
        setPaused('operator', watcher.paused);
        log.info({ slot: options.slot }, watcher.paused ? 'reading the slot paused by an operator (it holds WAL until resumed)' : 'reading the slot resumed');
      }
      setPaused('backlog', backlogFull());
      setPaused('redis_memory', watcher.redisFull);
      await tableSync.tick(publication);
      await lagGuard.check();
      setPaused('held', tableSync.isFull);
      if (active) {
        lastActivity = Date.now();
        active = false;
      }
      if (tracker.isIdle && inbox.length === 0 && !watcher.paused && Date.now() - lastActivity >= options.heartbeatIntervalMs) {
        lastActivity = Date.now();
        await heartbeat.beat();
      }
      await sleep(options.flushIntervalMs, undefined, { signal }).catch(() => {});
    }
  } finally {
    await heartbeat.close();
  }
}
