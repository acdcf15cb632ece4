import { isUtf8 } from 'node:buffer';
import { setImmediate } from 'node:timers/promises';
import { RecordedRowChange } from '../shared/codec.js';
import type { RowChange } from '../shared/events.js';
import { KIND_NULL, KIND_TEXT, newTupleAt, oldTupleAt, tupleKey } from '../shared/tupledata.js';
import { KeyIndex } from './keyindex.js';

/**
 * The fast path of collapseByKey (consumers/collapse): a run of changes to a keyed table reduced
 * to the final image of each key, written as CSV straight from the changes' pgoutput images.
 * No value becomes a JS string (keys are compared as their bytes), which is most of the cost of
 * applying a large batch the other way.
 *
 * One CSV line per key touched: the row's columns, then `f`; or, for a key the run leaves
 * absent, its old image (the key columns, the rest NULL) and `t`. Quoted values, `""` inside a
 * value, an empty unquoted field for NULL: what a CSV reader told so returns value for value.
 *
 * Undefined when the run needs decoded values instead: a change without images, a final image
 * keeping an unchanged TOASTed value (it must be looked up in the stored row), a key that is
 * NULL or unchanged, images of another width than the table, or text that is not UTF-8.
 */
export function collapseImagesToCsv(keyColumns: number[], width: number, changes: RowChange[]): CollapsedCsv | undefined {
  const collapse = collapsing(keyColumns, width, changes, Number.POSITIVE_INFINITY);
  for (;;) {
    const step = collapse.next();
    if (step.done) return step.value;
  }
}

/** Lines written between two turns of the event loop when collapsing aside. */
const SLICE_LINES = 2_000;

/**
 * collapseImagesToCsv in slices, the event loop turning between them: while DuckDB applies one
 * batch, the next one is collapsed without holding up the current one's next statement.
 */
export async function collapseImagesToCsvAside(
  keyColumns: number[],
  width: number,
  changes: RowChange[],
  sliceLines = SLICE_LINES,
): Promise<CollapsedCsv | undefined> {
  const collapse = collapsing(keyColumns, width, changes, sliceLines);
  for (;;) {
    await setImmediate();
    const step = collapse.next();
    if (step.done) return step.value;
  }
}

/** The collapse, pausing (yielding) after every `sliceLines` lines. */
function* collapsing(keyColumns: number[], width: number, changes: RowChange[], sliceLines: number): Generator<void, CollapsedCsv | undefined> {
  // A run of inserts only: each key appears once (a key is inserted again only after a delete
  // or an update moved it away), so every row is its key's final image and nothing is looked
  // up by key (for a large insert, that lookup was the consumer's largest cost per change).
  const decisive = changes.every((change) => change.op === 'insert') ? changes.map((_, index) => index * 2) : decisiveChanges(keyColumns, changes);
  if (!decisive) return undefined;
  const csv = new CsvLines();
  let sliceLeft = sliceLines;
  // Indexed: a for-of in a generator made an iterator result per line (V8's heap profile).
  for (let index = 0; index < decisive.length; index++) {
    const entry = decisive[index];
    const change = changes[entry >>> 1];
    const buffer = imagesBuffer(change);
    if (!buffer) return undefined;
    const start = imagesStart(change);
    const absent = (entry & 1) === 1;
    if (!csv.line(buffer, absent ? oldTupleAt(buffer, change.op, start) : newTupleAt(buffer, change.op, start), width, absent)) return undefined;
    if (--sliceLeft === 0) {
      yield;
      sliceLeft = sliceLines;
    }
  }
  const bytes = csv.bytes();
  return isUtf8(bytes) ? { csv: bytes, longestLine: csv.longestLine } : undefined;
}

/** The runs' keys, one run at a time (decisiveChanges is synchronous): its tables are kept from run to run. */
const decisiveKeys = new KeyIndex();

/** Per key touched, the change that decides it: its index × 2, plus 1 when it leaves the key absent. */
function decisiveChanges(keyColumns: number[], changes: RowChange[]): number[] | undefined {
  if (!indexDecisive(keyColumns, changes, decisiveKeys)) {
    decisiveKeys.clear();
    return undefined;
  }
  return decisiveKeys.take();
}

/** Fills `decisive` (see decisiveChanges); false when a change cannot be read from its images. */
function indexDecisive(keyColumns: number[], changes: RowChange[], decisive: KeyIndex): boolean {
  for (let index = 0; index < changes.length; index++) {
    const change = changes[index];
    const { op } = change;
    const buffer = imagesBuffer(change);
    if (!buffer) return false;
    const start = imagesStart(change);
    const old = oldTupleAt(buffer, op, start);
    const oldKey = old < 0 ? undefined : tupleKey(buffer, old, keyColumns);
    if (old >= 0 && oldKey === undefined) return false;
    if (op === 'delete') {
      decisive.set(oldKey!, index * 2 + 1);
      continue;
    }
    const key = tupleKey(buffer, newTupleAt(buffer, op, start), keyColumns);
    if (key === undefined) return false;
    // An update that changed the key leaves its old key absent.
    if (oldKey !== undefined && oldKey !== key) decisive.set(oldKey, index * 2 + 1);
    decisive.set(key, index * 2);
  }
  return true;
}

/** The CSV, and the bytes of its longest line (CSV readers limit a line's length unless told). */
export interface CollapsedCsv {
  csv: Buffer;
  longestLine: number;
}

// A change read from a batch has its images in place in the batch's records: read them there
// rather than through a view made per change.
function imagesBuffer(change: RowChange): Buffer | undefined {
  return change instanceof RecordedRowChange ? change.records : change.images;
}

function imagesStart(change: RowChange): number {
  return change instanceof RecordedRowChange ? change.imagesStart : 0;
}

const COMMA = 0x2c;
const QUOTE = 0x22;
const NEWLINE = 0x0a;
const TRUE = 0x74;
const FALSE = 0x66;

/**
 * The buffers of the last runs' lines, once written (recycleCsvLines): the next runs start in
 * them rather than in fresh buffers grown by doubling, new memory for every batch of a large
 * transaction. Two: one batch's lines are written while the next one's are made.
 */
const spareLines: Buffer[] = [];
const MAX_SPARE_LINES = 2;

/** The lines of a run (CollapsedCsv.csv) are no longer needed: their buffer serves a next run. */
export function recycleCsvLines(lines: Buffer): void {
  const whole = Buffer.from(lines.buffer, lines.byteOffset, lines.buffer.byteLength - lines.byteOffset);
  if (spareLines.length < MAX_SPARE_LINES) spareLines.push(whole);
}

/** CSV lines appended into one growing buffer. */
class CsvLines {
  longestLine = 0;
  private buffer: Buffer;
  private length = 0;

  constructor() {
    this.buffer = spareLines.pop() ?? Buffer.allocUnsafe(256 * 1024);
  }

  /** Appends the tuple at `offset` of `images` and the flag; false if it holds a value CSV cannot stand for. */
  line(images: Buffer, offset: number, width: number, flag: boolean): boolean {
    const count = images.readInt16BE(offset);
    if (count !== width) return false;
    const lineStart = this.length;
    let at = offset + 2;
    for (let column = 0; column < count; column++) {
      const kind = images[at++];
      if (kind === KIND_NULL) {
        this.reserve(1);
        this.buffer[this.length++] = COMMA;
        continue;
      }
      if (kind !== KIND_TEXT) return false;
      const size = images.readInt32BE(at);
      at += 4;
      // Every byte may be a quote to double: room for twice the value, its quotes and the comma.
      this.reserve(2 * size + 3);
      const buffer = this.buffer;
      let length = this.length;
      buffer[length++] = QUOTE;
      for (const end = at + size; at < end; at++) {
        const byte = images[at];
        buffer[length++] = byte;
        if (byte === QUOTE) buffer[length++] = QUOTE;
      }
      buffer[length++] = QUOTE;
      buffer[length++] = COMMA;
      this.length = length;
    }
    this.reserve(2);
    this.buffer[this.length++] = flag ? TRUE : FALSE;
    this.buffer[this.length++] = NEWLINE;
    this.longestLine = Math.max(this.longestLine, this.length - lineStart);
    return true;
  }

  bytes(): Buffer {
    return this.buffer.subarray(0, this.length);
  }

  private reserve(bytes: number): void {
    if (this.length + bytes <= this.buffer.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.length + bytes, this.buffer.length * 2));
    this.buffer.copy(grown, 0, 0, this.length);
    this.buffer = grown;
  }
}
