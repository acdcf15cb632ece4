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

  constructor(private readonly epoch: number) {}

  /** A transaction began. */
  begin(): void {
    this.open = { ackLsn: 0n, epoch: this.epoch, lastBatch: new Map(), held: 0, isCopy: false };
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

  /** The open transaction committed; its end LSN is what we acknowledge once it is applied. */
  commit(endLsn: Lsn, isCopy = false): void {
    const entry = this.open ?? { ackLsn: 0n, epoch: this.epoch, lastBatch: new Map(), held: 0, isCopy: false };
    entry.ackLsn = endLsn;
    entry.isCopy = isCopy;
    this.entries.push(entry);
    this.open = undefined;
  }

  get isIdle(): boolean {
    return this.pendingEntries === 0 && this.open === undefined;
  }

  get pendingEntries(): number {
    return this.entries.length - this.head;
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
