import { COPY_DATA, CopyDataReader } from './wire.js';

const COPY_DONE = 0x63; // 'c'
const ERROR_RESPONSE = 0x45; // 'E'
/** Pieces waiting to be taken before the socket is paused. */
const MAX_QUEUED_BYTES = 1024 * 1024;

/** Whole rows of COPY output, how many, and whether they complete a chunk. */
export interface CopyPiece {
  data: Buffer;
  rows: number;
  endsChunk: boolean;
}

/** How large a chunk may grow: it ends at exactly `rows` rows, or at the row that brings it to `bytes`. */
export interface ChunkLimits {
  rows: number;
  bytes: number;
}

/**
 * `COPY … TO STDOUT` read straight off a `pg` connection. Postgres sends each row as its own
 * CopyData message; each socket read is turned, in place, into one piece of whole rows by
 * moving the rows over the message headers between them, so rows are counted without looking
 * at the data (no CSV scanning) and nothing is allocated per row. A row split across reads is
 * gathered on its own and handed out as a piece of one row. Pieces are also cut where a chunk
 * reaches its row limit, so chunks hold exact row counts: DuckDB, for one, stores rows in
 * groups of 122,880 and rewrites a table's partial groups at its next checkpoint. Submit it with
 * `client.query(copyOut)`, then iterate the pieces; the socket is paused while more than about
 * a megabyte of pieces waits to be taken.
 *
 * While the copy runs, the connection's data goes to this reader instead of `pg`'s parser;
 * from CopyDone (or an error) on, the rest goes back to `pg`, which finishes the query.
 */
export class CopyOut extends CopyDataReader {
  /** What remains of a message begun in an earlier read; a row's bytes so far are in `split`. */
  private remaining = 0;
  private split?: { row: Buffer; used: number };
  private readonly ready: CopyPiece[] = [];
  private chunk = { rows: 0, bytes: 0 };
  private readyBytes = 0;
  private finished = false;
  private failure?: Error;
  private wake?: () => void;

  constructor(
    text: string,
    private readonly limits: ChunkLimits = { rows: Infinity, bytes: Infinity },
  ) {
    super(text);
  }

  /** `pg` reports the query's end (after the copy) and its errors here. */
  handleError(error: Error): void {
    this.failure ??= error;
    this.signal();
  }

  handleReadyForQuery(): void {
    this.finished = true;
    this.signal();
  }

  handleCommandComplete(): void {}

  async *[Symbol.asyncIterator](): AsyncGenerator<CopyPiece> {
    for (;;) {
      const next = this.ready.shift();
      if (next) {
        this.readyBytes -= next.data.length;
        if (this.readyBytes < MAX_QUEUED_BYTES) this.connection?.stream.resume();
        yield next;
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.finished) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  private signal(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  protected parse(data: Buffer): void {
    let position = 0;
    // Whole rows of this read are moved down to data[start, end): the piece being gathered.
    let start = 0;
    let end = 0;
    let rows = 0;
    while (position < data.length) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, data.length - position);
        const split = this.split;
        if (split) {
          data.copy(split.row, split.used, position, position + take);
          split.used += take;
        }
        position += take;
        this.remaining -= take;
        if (this.remaining === 0 && split) {
          this.split = undefined;
          this.push(split.row, 1, this.countRow(split.row.length));
        }
        continue;
      }
      const body = this.readHeader(data, position);
      if (body < 0) break;
      const type = this.messageType;
      const length = this.messageLength;
      position = body;
      if (type === COPY_DONE || type === ERROR_RESPONSE) {
        // The rest (CommandComplete, ReadyForQuery, or the error) is pg's to handle.
        if (rows > 0) this.push(data.subarray(start, end), rows, false);
        this.detach(type === COPY_DONE ? data.subarray(position + length) : this.fromMessageStart(data, body));
        return;
      }
      const available = data.length - position;
      if (type !== COPY_DATA) {
        // Not a row (a notice, say): skipped.
        this.remaining = Math.max(0, length - available);
        position += Math.min(length, available);
      } else if (length <= available) {
        if (end !== position) data.copyWithin(end, position, position + length);
        end += length;
        rows++;
        position += length;
        if (this.countRow(length)) {
          this.push(data.subarray(start, end), rows, true);
          start = end;
          rows = 0;
        }
      } else {
        // The row goes on in the next read: gathered on its own, after this read's rows.
        if (rows > 0) this.push(data.subarray(start, end), rows, false);
        start = end = 0;
        rows = 0;
        this.split = { row: Buffer.allocUnsafe(length), used: available };
        data.copy(this.split.row, 0, position);
        this.remaining = length - available;
        position = data.length;
      }
    }
    if (rows > 0) this.push(data.subarray(start, end), rows, false);
  }

  /** Counts a row into the current chunk; true when that completes the chunk (the next one starts). */
  private countRow(length: number): boolean {
    const chunk = this.chunk;
    chunk.rows++;
    chunk.bytes += length;
    if (chunk.rows < this.limits.rows && chunk.bytes < this.limits.bytes) return false;
    chunk.rows = chunk.bytes = 0;
    return true;
  }

  private push(data: Buffer, rows: number, endsChunk: boolean): void {
    this.ready.push({ data, rows, endsChunk });
    this.readyBytes += data.length;
    // Backpressure: stop reading while the pieces wait to be taken.
    if (this.readyBytes >= MAX_QUEUED_BYTES) this.connection?.stream.pause();
    this.signal();
  }

}
