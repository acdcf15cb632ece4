import type { Redis } from 'ioredis';
import { keys } from '../shared/keys.js';
import { formatLsn, type Lsn } from '../shared/lsn.js';
import { readApplied, writePipelineState } from '../shared/redis.js';
import type { AckTracker, AppliedMark } from './acks.js';
import { tally } from './metrics.js';
import { MAX_PENDING_ADDS, MAX_PENDING_BYTES, type ProducerOptions } from './options.js';
import type { BatchQueues } from './queues.js';
import { headroomBytes, RedisMemoryGuard } from './redismemory.js';

/** How often queues are checked for batches Redis lost (empty while a mark is behind). */
const QUEUE_CHECK_MS = 3_000;
/** How often the rows a copy has applied are published. */
const COPY_PUBLISH_MS = 500;

/** Redis no longer holds what this run enqueued (FLUSHALL, a restart without persistence). */
export class RedisLostError extends Error {}

/** `pg-replicate resync --all` asked for every table to be copied again: the session ends and the next one copies. */
export class RecopyRequestedError extends Error {}

/**
 * Reads what every destination has applied, moves the ack tracker, and notices when Redis
 * has lost this run's data (the epoch field is gone or replaced).
 */
export class AppliedWatcher {
  /** Unapplied batches and bytes of the slowest destination. */
  backlog = 0;
  backlogBytes = 0;
  /** An operator paused reading the slot (`serve`'s API): nothing is read or copied until resumed. */
  paused = false;
  /** Per destination, the LSN before which it has applied everything (as last published for status). */
  readonly appliedLsns = new Map<string, Lsn>();
  /** The destinations' marks as last read: for copies beside the stream, which stay recorded until applied. */
  marks = new Map<string, Map<number, AppliedMark>>();
  private lastQueueCheck = Date.now();
  private publishing?: Promise<unknown>;
  private publishAgain = false;
  private lastCopyPublish = 0;
  private lastChangesPublish = 0;
  private changesRead = 0;
  /** Copied rows applied everywhere, by table OID, as last published. */
  private readonly copyApplied = new Map<number, number>();
  private readonly memory: RedisMemoryGuard;

  constructor(
    private readonly redis: Redis,
    private readonly options: ProducerOptions,
    private readonly epoch: number,
    private readonly queues: BatchQueues,
    private readonly tracker: AckTracker,
    private readonly onCopyApplied: () => void,
    private readonly acknowledged: () => Lsn,
  ) {
    this.memory = new RedisMemoryGuard(redis, headroomBytes(options));
  }

  /** Returns true when the acknowledgeable LSN moved. */
  async poll(onAck: (lsn: Lsn) => void): Promise<boolean> {
    // On a quiet stream no next enqueue would surface it.
    this.queues.throwIfFailed();
    const [epoch, copy, gap, paused] = await this.redis.hmget(keys.state(this.options.pipeline), 'epoch', 'copy', 'gap', 'paused');
    this.paused = paused === '1';
    if (epoch !== String(this.epoch)) {
      throw new RedisLostError(`Redis no longer holds this producer run (epoch ${this.epoch}, found ${epoch ?? 'nothing'}): re-reading from the slot`);
    }
    if (copy === 'requested') throw new RecopyRequestedError('resync --all requested: copying every table again under a new slot');
    const found = gap ? (JSON.parse(gap) as { epoch: number; destination: string; partition: number; missing: [number, number] }) : undefined;
    if (found?.epoch === this.epoch) {
      throw new RedisLostError(
        `destination ${found.destination} found batches ${found.missing[0]}–${found.missing[1]} of partition ${found.partition} missing: Redis lost recent writes; re-reading from the slot (copies not yet applied everywhere start again)`,
      );
    }
    const applied = await this.readMarks();
    this.marks = applied;
    await this.checkQueuesHoldUnapplied(applied);
    this.measureBacklog(applied);
    await this.memory.sample();
    await this.publishAppliedLsns(applied);
    this.publishProgress();
    const { ackLsn, copyConfirmed } = this.tracker.advance(applied);
    if (copyConfirmed) {
      this.publishProgress(true);
      this.onCopyApplied();
      await writePipelineState(this.redis, this.options.pipeline, { copy: 'done' });
    }
    if (ackLsn === undefined) return false;
    onAck(ackLsn);
    return true;
  }

  /**
   * Measures the backlog afresh, without moving anything: for a table copy, which enqueues
   * chunks of many megabytes between the stream's polls (or before the stream starts).
   */
  async measure(): Promise<void> {
    this.paused = (await this.redis.hget(keys.state(this.options.pipeline), 'paused')) === '1';
    this.measureBacklog(await this.readMarks());
    await this.memory.sample(true);
    this.publishProgress();
  }

  /**
   * Publishes what the terminal view and status show of the copy and the stream, off the
   * poll's path: nothing of the stream waits on it, and one publication runs at a time.
   */
  private publishProgress(now = false): void {
    if (this.publishing) {
      // The copy's last figures are published once the one in flight is done.
      this.publishAgain ||= now;
      return;
    }
    this.publishing = Promise.all([this.publishCopyApplied(now), this.publishChangesRead()])
      .catch(() => {})
      .finally(() => {
        this.publishing = undefined;
        if (this.publishAgain) {
          this.publishAgain = false;
          this.publishProgress(true);
        }
      });
  }

  /** For the live summary: the changes read from the slot so far in this run (at most twice a second). */
  private async publishChangesRead(): Promise<void> {
    const read = tally.changes.insert + tally.changes.update + tally.changes.delete + tally.changes.truncate;
    if (read === this.changesRead || Date.now() - this.lastChangesPublish < COPY_PUBLISH_MS) return;
    this.lastChangesPublish = Date.now();
    this.changesRead = read;
    await this.redis.hset(keys.state(this.options.pipeline), 'changesRead', String(read));
  }

  private async readMarks(): Promise<Map<string, Map<number, AppliedMark>>> {
    const applied = new Map<string, Map<number, AppliedMark>>();
    for (const destination of this.queues.destinations) {
      applied.set(destination, await readApplied(this.redis, this.options.pipeline, destination));
    }
    return applied;
  }

  /**
   * A destination's partition whose queue is empty while its mark is behind the last batch sent
   * to it: Redis lost its newest batches (nothing follows them to show the gap to a consumer).
   * Looked at every few seconds, and only where a mark is behind. The queue is counted before
   * the mark is read: a consumer records its mark before its job leaves the queue.
   */
  private async checkQueuesHoldUnapplied(applied: Map<string, Map<number, AppliedMark>>): Promise<void> {
    if (Date.now() - this.lastQueueCheck < QUEUE_CHECK_MS || this.queues.pendingAdds > 0) return;
    this.lastQueueCheck = Date.now();
    for (const [destination, marks] of applied) {
      for (let partition = 0; partition < this.options.partitions; partition++) {
        const sent = this.queues.lastSentTo(destination, partition);
        const mark = marks.get(partition);
        if (sent === 0 || (mark?.epoch === this.epoch && mark.seq >= sent)) continue;
        if ((await this.queues.queuedFor(destination, partition)) > 0) continue;
        const now = (await readApplied(this.redis, this.options.pipeline, destination)).get(partition);
        if (this.queues.pendingAdds > 0 || (now?.epoch === this.epoch && now.seq >= sent)) continue;
        throw new RedisLostError(
          `the queue of destination ${destination}, partition ${partition}, is empty, but it applied only up to batch ${now?.epoch === this.epoch ? now.seq : 0} of ${sent}: Redis lost recent writes; re-reading from the slot (copies not yet applied everywhere start again)`,
        );
      }
    }
  }

  /** For progress bars and status: each copied table's rows applied by the slowest destination, when they changed (at most twice a second). */
  private async publishCopyApplied(now = false): Promise<void> {
    if (!now && Date.now() - this.lastCopyPublish < COPY_PUBLISH_MS) return;
    this.lastCopyPublish = Date.now();
    const fields: Record<string, string> = {};
    for (const [oid, rows] of this.queues.copyRowsApplied()) {
      if (this.copyApplied.get(oid) !== rows) fields[String(oid)] = String(rows);
      this.copyApplied.set(oid, rows);
    }
    if (Object.keys(fields).length > 0) await this.redis.hset(keys.copyApplied(this.options.pipeline), fields);
  }

  /** For status: each destination's applied LSN (what the slot could confirm if it were the only one). */
  private async publishAppliedLsns(applied: Map<string, Map<number, AppliedMark>>): Promise<void> {
    const fields: Record<string, string> = {};
    for (const [destination, marks] of applied) {
      const lsn = this.tracker.appliedBy(marks) ?? this.acknowledged();
      if (this.appliedLsns.get(destination) !== lsn) fields[`applied:${destination}`] = formatLsn(lsn);
      this.appliedLsns.set(destination, lsn);
    }
    if (Object.keys(fields).length > 0) await this.redis.hset(keys.state(this.options.pipeline), fields);
  }

  /** Whether a copy must wait: the backlog is full, or Redis near its maxmemory. */
  get isFull(): boolean {
    return this.backlogFull || this.redisFull;
  }

  /** Redis is near its maxmemory (whatever fills it). */
  get redisFull(): boolean {
    return this.memory.full;
  }

  /** Paused by an operator, or too many batches (or bytes) unapplied by the slowest destination, or not yet in Redis. */
  get backlogFull(): boolean {
    return (
      this.paused ||
      this.queues.pendingAdds > MAX_PENDING_ADDS ||
      this.queues.pendingBytes > MAX_PENDING_BYTES ||
      this.backlog > this.options.maxBacklogBatches ||
      this.backlogBytes > this.options.maxBacklogBytes
    );
  }

  private measureBacklog(applied: Map<string, Map<number, AppliedMark>>): void {
    // A mark of an earlier run says nothing about this run's batches.
    const seqOf = (marks: Map<number, AppliedMark>) => (partition: number) => {
      const mark = marks.get(partition);
      return mark && mark.epoch === this.epoch ? mark.seq : 0;
    };
    const { batches, bytes } = this.queues.unapplied(new Map([...applied].map(([destination, marks]) => [destination, seqOf(marks)])));
    this.backlog = batches;
    this.backlogBytes = bytes;
  }
}
