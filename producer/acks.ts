import type { Lsn } from '../shared/lsn.js';

/** Where a destination has got to in one partition: the producer run and batch number it last applied. */
export interface AppliedMark {
  epoch: number;
  seq: number;
}

/** A transaction (or a whole table copy) waiting to be applied by every destination. */
export interface PendingEntry {
  /** What may be acknowledged to Postgres once this entry and all before it are applied. */
  ackLsn: Lsn;
  epoch: number;
  /** Partition → the last batch holding part of this entry. */
  lastBatch: Map<number, number>;
  /** Changes of this transaction held back (their table is being copied) and not yet released into a batch. */
  held: number;
  isCopy: boolean;
  /** The transactions it stands for: one, or more that committed into the same batches (see commit). */
  transactions: number;
}

/**
 * Decides the LSN the producer may acknowledge: the end of the newest transaction that every
 * destination has durably applied, and every transaction before it. Entries leave strictly in
 * commit order, so a fast partition never lets the ack pass a slow one.
 */
export class AckTracker {
  /** Pending entries from `head` on (a queue: taking from the front of a long array is O(n)). */
  private entries: PendingEntry[] = [];
  private head = 0;
  private open: PendingEntry | undefined;
  /** Transactions in the pending entries. */
  private pending = 0;

  constructor(private readonly epoch: number) {}

  /** A transaction began. */
  begin(): void {
    this.open = this.fresh();
  }

  private fresh(): PendingEntry {
    return { ackLsn: 0n, epoch: this.epoch, lastBatch: new Map(), held: 0, isCopy: false, transactions: 1 };
  }

  /** The open transaction (or copy) put changes into this batch. */
  touch(partition: number, seq: number): void {
    this.open?.lastBatch.set(partition, seq);
  }

  /** The open transaction has a change held back: it cannot be acknowledged until release(). */
  hold(): PendingEntry {
    const entry = this.open!;
    entry.held++;
    return entry;
  }

  /** A held change was released into a batch (or dropped, when the table copy already holds it). */
  release(entry: PendingEntry, batch?: { partition: number; seq: number }): void {
    entry.held--;
    if (batch) entry.lastBatch.set(batch.partition, Math.max(entry.lastBatch.get(batch.partition) ?? 0, batch.seq));
  }

  /**
   * The open transaction committed; its end LSN is what we acknowledge once it is applied. A
   * transaction that put changes only into batches the pending entry before it also waits for
   * (the same open batches, in a stream of small transactions) is applied exactly when that
   * entry is: it joins it, moving its LSN, instead of taking an entry (a Map) of its own. With
   * 100 000 transactions waiting, the entries had been about 30 MB of the producer's heap.
   */
  commit(endLsn: Lsn, isCopy = false): void {
    const entry = this.open ?? this.fresh();
    this.open = undefined;
    entry.ackLsn = endLsn;
    entry.isCopy = isCopy;
    this.pending++;
    const last = this.entries.length > this.head ? this.entries[this.entries.length - 1] : undefined;
    if (last && coveredBy(entry, last)) {
      last.ackLsn = endLsn;
      last.transactions++;
    } else {
      this.entries.push(entry);
    }
  }

  get isIdle(): boolean {
    return this.entries.length === this.head && this.open === undefined;
  }

  /** Transactions (and table copies) read but not yet applied by every destination. */
  get pendingTransactions(): number {
    return this.pending;
  }

  /** The newest LSN one destination has applied everything up to, as far as the pending entries tell. */
  appliedBy(marks: Map<number, AppliedMark>): Lsn | undefined {
    let lsn: Lsn | undefined;
    const one = new Map([['one', marks]]);
    for (let index = this.head; index < this.entries.length && isApplied(this.entries[index], one); index++) lsn = this.entries[index].ackLsn;
    return lsn;
  }

  /**
   * Removes the entries every destination has applied. Returns the LSN now safe to acknowledge
   * (undefined if none moved) and whether a table copy was among them.
   */
  advance(applied: Map<string, Map<number, AppliedMark>>): { ackLsn?: Lsn; copyConfirmed: boolean } {
    let ackLsn: Lsn | undefined;
    let copyConfirmed = false;
    while (this.head < this.entries.length && isApplied(this.entries[this.head], applied)) {
      const entry = this.entries[this.head++];
      this.pending -= entry.transactions;
      ackLsn = entry.ackLsn;
      copyConfirmed ||= entry.isCopy;
    }
    // Drop the taken entries now and then, not on every advance.
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
    return { ackLsn, copyConfirmed };
  }
}

/** Whether `later` is applied once `earlier` is: a stream transaction whose every batch is one `earlier` waits for. */
function coveredBy(later: PendingEntry, earlier: PendingEntry): boolean {
  if (later.isCopy || earlier.isCopy || later.held > 0 || later.epoch !== earlier.epoch) return false;
  for (const [partition, seq] of later.lastBatch) if (earlier.lastBatch.get(partition) !== seq) return false;
  return true;
}

function isApplied(entry: PendingEntry, applied: Map<string, Map<number, AppliedMark>>): boolean {
  if (entry.held > 0) return false;
  for (const marks of applied.values()) {
    for (const [partition, seq] of entry.lastBatch) {
      const mark = marks.get(partition);
      if (!mark) return false;
      if (mark.epoch < entry.epoch || (mark.epoch === entry.epoch && mark.seq < seq)) return false;
    }
  }
  return true;
}
