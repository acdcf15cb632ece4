import { ChangeRecords } from '../shared/codec.js';
import type { OutgoingBatch, Relation, TruncateChange } from '../shared/events.js';
import { partitionOf } from '../shared/keys.js';
import type { Lsn } from '../shared/lsn.js';
import type { RowOp } from '../shared/tupledata.js';

/**
 * Numbers the batches of each partition within one producer run: 1, 2, 3, … A partition's
 * batches reach its queues in the order of their numbers: whoever takes a number (a copy's
 * chunk) first sends the partition's open batch of the stream, which holds the number before.
 */
export class Sequencer {
  private readonly last: number[];
  /** Sends the partition's open batch, if any (the stream's Batcher sets it). */
  beforeTake: (partition: number) => void = () => {};

  constructor(partitions: number) {
    this.last = new Array(partitions).fill(0);
  }

  next(partition: number): number {
    this.beforeTake(partition);
    return ++this.last[partition];
  }

  lastOf(partition: number): number {
    return this.last[partition];
  }
}

const MIN_RECORDS_CAPACITY = 64 * 1024;

interface OpenBatch {
  seq: number;
  relationIndex: Map<number, number>;
  relations: Relation[];
  records: ChangeRecords;
  bytes: number;
  committedAt?: number;
  /** The transaction it was opened in (Batcher.transactions), if it was opened while one was being read. */
  openedIn?: number;
}

export interface BatchLimits {
  maxChanges: number;
  maxBytes: number;
}

/**
 * Groups streamed changes into one open batch per partition and hands a batch on when it is
 * full (or when flushAll is called on a timer). A batch's sequence number is fixed when its
 * first change arrives, so a transaction knows which batches hold it before they are sent.
 */
export class Batcher {
  private readonly relations = new Map<number, Relation>();
  private readonly open = new Map<number, OpenBatch>();
  private readonly partitionByOid = new Map<number, number>();
  private recordsCapacity = MIN_RECORDS_CAPACITY;
  /** Commit time of the transaction being read (ms since the Unix epoch). */
  committedAt: number | undefined;
  /** Transactions begun so far, and the one being read (between its BEGIN and COMMIT), if any. */
  private transactions = 0;
  private reading: number | undefined;

  constructor(
    private readonly pipeline: string,
    private readonly epoch: number,
    private readonly partitions: number,
    private readonly limits: BatchLimits,
    private readonly sequencer: Sequencer,
    private readonly send: (batch: OutgoingBatch, bytes: number) => void,
  ) {
    sequencer.beforeTake = (partition) => this.flush(partition);
  }

  setRelation(relation: Relation): void {
    // Changes already batched refer to the old shape: send them before the shape changes.
    const partition = this.partitionOf(relation);
    if (this.open.get(partition)?.relationIndex.has(relation.oid)) this.flush(partition);
    this.relations.set(relation.oid, relation);
  }

  knownRelation(oid: number): Relation | undefined {
    return this.relations.get(oid);
  }

  relation(oid: number): Relation {
    const relation = this.relations.get(oid);
    if (!relation) throw new Error(`pgoutput sent a change for relation ${oid} before describing it`);
    return relation;
  }

  /**
   * Adds a row change, its images as pgoutput sent them (`message` from `start` to `end`, copied
   * into the batch); returns the partition and the batch it went into. `relation` is the shape
   * the change was made under when that is not the current one (a change held during a copy).
   */
  addRow(
    op: RowOp,
    relationOid: number,
    lsn: Lsn,
    ordinal: number,
    message: Buffer,
    start: number,
    end: number,
    relation = this.relation(relationOid),
  ): { partition: number; seq: number } {
    const partition = this.partitionOf(relation);
    const open = this.open.get(partition);
    const index = open?.relationIndex.get(relation.oid);
    // One batch describes a table one way: a change of another shape starts a new batch.
    if (open && index !== undefined && open.relations[index] !== relation) this.flush(partition);
    const batch = this.openBatch(partition);
    batch.records.row(op, this.indexOf(batch, relation), lsn, ordinal, message, start, end);
    // Its size on the wire: the images, the message's tag and the relation's OID.
    return this.account(partition, batch, end - start + 5);
  }

  /** A TRUNCATE of several tables becomes one truncate per partition involved. */
  addTruncate(change: Omit<TruncateChange, 'relations'>, relationOids: number[]): { partition: number; seq: number }[] {
    const byPartition = new Map<number, Relation[]>();
    for (const oid of relationOids) {
      const relation = this.relation(oid);
      const partition = this.partitionOf(relation);
      byPartition.set(partition, [...(byPartition.get(partition) ?? []), relation]);
    }
    return [...byPartition].map(([partition, relations]) => {
      const batch = this.openBatch(partition);
      batch.records.truncate(
        relations.map((relation) => this.indexOf(batch, relation)),
        change.version,
        change.cascade,
        change.restartIdentity,
      );
      return this.account(partition, batch, 16);
    });
  }

  /** A transaction's BEGIN was read: batches opened until its COMMIT hold nothing else. */
  beginTransaction(): void {
    this.reading = ++this.transactions;
  }

  /** The transaction being read committed. */
  endTransaction(): void {
    this.reading = undefined;
  }

  /**
   * The timer's flush: sends every open batch, so that no committed change waits long, but
   * while the transaction being read is still arriving (`arriving`), a batch opened inside it
   * waits until it is full or the transaction commits. Sent early, it would be applied no
   * sooner (nothing of a transaction is acknowledged before all of it is applied), and a large
   * transaction went out as a batch per tick instead of full ones (a 1 M-row update as 80
   * batches of 5 000–20 000 changes at the walsender's pace, each a scan of the table in the
   * destination). The walsender sends a committed transaction from BEGIN to COMMIT without a
   * pause, so the wait ends by itself; when reading pauses (a bound reached), the transaction
   * stops arriving until destinations apply what is sent, so everything is sent.
   */
  flushAll(arriving: boolean): void {
    for (const [partition, batch] of [...this.open]) if (!arriving || this.reading === undefined || batch.openedIn !== this.reading) this.flush(partition);
  }

  get isEmpty(): boolean {
    return this.open.size === 0;
  }

  partitionOf(relation: Relation): number {
    let partition = this.partitionByOid.get(relation.oid);
    if (partition === undefined) this.partitionByOid.set(relation.oid, (partition = partitionOf(relation.oid, this.partitions)));
    return partition;
  }

  private flush(partition: number): void {
    const batch = this.open.get(partition);
    if (!batch) return;
    this.open.delete(partition);
    const records = batch.records.bytes();
    // The next batch is likely the size of this one (a large transaction fills batch after batch).
    this.recordsCapacity = Math.max(MIN_RECORDS_CAPACITY, Math.ceil(records.length * 1.1));
    this.send(
      {
        pipeline: this.pipeline,
        partition,
        epoch: this.epoch,
        seq: batch.seq,
        relations: batch.relations,
        records,
        ...(batch.committedAt !== undefined ? { committedAt: batch.committedAt } : {}),
      },
      batch.bytes,
    );
  }

  private openBatch(partition: number): OpenBatch {
    let batch = this.open.get(partition);
    if (!batch) {
      batch = {
        seq: this.sequencer.next(partition),
        relationIndex: new Map(),
        relations: [],
        records: new ChangeRecords(this.recordsCapacity),
        bytes: 0,
        openedIn: this.reading,
      };
      this.open.set(partition, batch);
    }
    return batch;
  }

  private indexOf(batch: OpenBatch, relation: Relation): number {
    let index = batch.relationIndex.get(relation.oid);
    if (index === undefined) {
      index = batch.relations.push(relation) - 1;
      batch.relationIndex.set(relation.oid, index);
    }
    return index;
  }

  private account(partition: number, batch: OpenBatch, bytes: number): { partition: number; seq: number } {
    batch.bytes += bytes;
    batch.committedAt ??= this.committedAt;
    const seq = batch.seq;
    if (batch.records.count >= this.limits.maxChanges || batch.bytes >= this.limits.maxBytes) this.flush(partition);
    return { partition, seq };
  }
}
