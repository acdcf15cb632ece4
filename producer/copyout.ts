import { COPY_DATA, CopyDataReader } from './wire.js';

const COPY_DONE = 0x63; // 'c'
const ERROR_RESPONSE = 0x45; // 'E'
/** Pieces waiting to be taken before the socket is paused. */
const MAX_QUEUED_BYTES = 1024 * 1024;

/** Whole rows of COPY output, and how many. */
export interface CopyPiece {
  data: Buffer;
  rows: number;
}

/**
 * `COPY … TO STDOUT` read straight off a `pg` connection. Postgres sends each row as its own
 * CopyData message; each socket read is turned, in place, into one piece of whole rows by
 * moving the rows over the message headers between them, so rows are counted without looking
 * at the data (no CSV scanning) and nothing is allocated per row. A row split across reads is
 * gathered on its own and handed out as a piece of one row. Submit it with
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
  private readyBytes = 0;
  private finished = false;
  private failure?: Error;
  private wake?: () => void;

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
    // Whole rows of this read are moved down to data[0, end).
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
          this.push(split.row, 1);
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
        if (rows > 0) this.push(data.subarray(0, end), rows);
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
      } else {
        // The row goes on in the next read: gathered on its own, after this read's rows.
        if (rows > 0) this.push(data.subarray(0, end), rows);
        end = 0;
        rows = 0;
        this.split = { row: Buffer.allocUnsafe(length), used: available };
        data.copy(this.split.row, 0, position);
        this.remaining = length - available;
        position = data.length;
      }
    }
    if (rows > 0) this.push(data.subarray(0, end), rows);
  }

  private push(data: Buffer, rows: number): void {
    this.ready.push({ data, rows });
    this.readyBytes += data.length;
    // Backpressure: stop reading while the pieces wait to be taken.
    if (this.readyBytes >= MAX_QUEUED_BYTES) this.connection?.stream.pause();
    this.signal();
  }

}
