import { setTimeout as sleep } from 'node:timers/promises';
import { log } from '../shared/log.js';
import { type Lsn, formatLsn, maxLsn } from '../shared/lsn.js';
import { Batcher } from './batcher.js';
import { Heartbeat } from './heartbeat.js';
import { type AckPosition, MAX_PENDING_ADDS, type Session } from './options.js';
import { decodePgoutput } from './pgoutput.js';
import type { ReplicationConnection } from './replication.js';

/**
 * Streams the slot until the session ends: decodes pgoutput, batches changes by partition,
 * tracks each transaction until every destination applied it, and tells Postgres so.
 */
export async function streamSlot(session: Session, replication: ReplicationConnection, position: AckPosition, fail: (error: Error) => void): Promise<void> {
  const { options, epoch, sequencer, tracker, queues, watcher, signal } = session;
  const limits = { maxChanges: options.maxBatchChanges, maxBytes: options.maxBatchBytes };
  const batcher = new Batcher(options.pipeline, epoch, options.partitions, limits, sequencer, (batch) => queues.enqueue(batch));
  let commitLsn: Lsn = 0n;
  let ordinal = 0;
  let paused = false;
  let lastStatus = 0;
  let lastActivity = Date.now();

  const sendStatus = (replyRequested = false) => {
    replication.sendStatus(position.lsn, replyRequested);
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
      if (tracker.isIdle && batcher.isEmpty && walEnd > position.lsn) {
        position.lsn = walEnd;
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
  log.info({ slot: options.slot, from: formatLsn(position.lsn), epoch }, 'streaming');
  const heartbeat = new Heartbeat(options.pgUrl);
  try {
    while (!signal.aborted) {
      batcher.flushAll();
      const advanced = await watcher.poll((ackLsn) => {
        position.lsn = maxLsn(position.lsn, ackLsn);
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
