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
  private readonly entries: PendingEntry[] = [];
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
    return this.entries.length === 0 && this.open === undefined;
  }

  get pendingEntries(): number {
    return this.entries.length;
  }

  /** The newest LSN one destination has applied everything up to, as far as the pending entries tell. */
  appliedBy(marks: Map<number, AppliedMark>): Lsn | undefined {
    let lsn: Lsn | undefined;
    for (const entry of this.entries) {
      if (!isApplied(entry, new Map([['one', marks]]))) break;
      lsn = entry.ackLsn;
    }
    return lsn;
  }

  /**
   * Removes the entries every destination has applied. Returns the LSN now safe to acknowledge
   * (undefined if none moved) and whether a table copy was among them.
   */
  advance(applied: Map<string, Map<number, AppliedMark>>): { ackLsn?: Lsn; copyConfirmed: boolean } {
    let ackLsn: Lsn | undefined;
    let copyConfirmed = false;
    while (this.entries.length > 0 && isApplied(this.entries[0], applied)) {
      const entry = this.entries.shift()!;
      ackLsn = entry.ackLsn;
      copyConfirmed ||= entry.isCopy;
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
