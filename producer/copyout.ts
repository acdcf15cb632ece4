import { PIECE_BYTES } from '../shared/chunks.js';
import { COPY_DATA, CopyDataReader } from './wire.js';

const COPY_DONE = 0x63; // 'c'
const ERROR_RESPONSE = 0x45; // 'E'
/** Pieces waiting to be taken before the socket is paused. */
const MAX_QUEUED_BYTES = 2 * 1024 * 1024;
/**
 * Gathering buffers come back here once their piece is written (recycle()): a copy then reuses
 * a few megabytes instead of allocating a fresh one per piece, which V8 counts as external
 * memory (a major collection every 64 MB of it) and the kernel must zero.
 */
const spareBuffers: Buffer[] = [];
const MAX_SPARE_BUFFERS = 32;

/** Whole rows of COPY output, how many, the longest, and whether they complete a chunk. */
export interface CopyPiece {
  data: Buffer;
  rows: number;
  longestRow: number;
  endsChunk: boolean;
  /** The gathering buffer `data` is part of, for recycle(). */
  gathered?: Buffer;
}

/** The piece's buffer may be reused: nothing refers to its bytes any more. */
export function recycle(piece: CopyPiece): void {
  if (piece.gathered && spareBuffers.length < MAX_SPARE_BUFFERS) spareBuffers.push(piece.gathered);
  piece.gathered = undefined;
}

/** How large a chunk may grow: it ends at exactly `rows` rows, or at the row that brings it to `bytes`. */
export interface ChunkLimits {
  rows: number;
  bytes: number;
}

/**
 * `COPY … TO STDOUT` read straight off a `pg` connection. Postgres sends each row as its own
 * CopyData message; the rows of each socket read are moved, in place, over the message headers
 * between them, so rows are counted without looking at the data (no CSV scanning) and nothing
 * is allocated per row, then copied into a gathering buffer: the read itself is done with when
 * parse() returns (on an inPlaceSocket the next read overwrites it). A row split across reads
 * is gathered on its own first. Pieces end where a chunk reaches its row limit, so chunks hold
 * exact row counts: DuckDB, for one, stores rows in groups of 122,880 and rewrites a table's
 * partial groups at its next checkpoint. Submit it with `client.query(copyOut)`, then iterate
 * the pieces (recycle() each once written); the socket is paused while two megabytes of pieces
 * wait to be taken.
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
  /** The piece being gathered. */
  private gathered?: Buffer;
  private gatheredBytes = 0;
  private gatheredRows = 0;
  private gatheredLongest = 0;
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
    // Whole rows of this read are moved down to data[start, end).
    let start = 0;
    let end = 0;
    let rows = 0;
    let longest = 0;
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
          this.gather(split.row, 0, split.row.length, 1, split.row.length);
          if (this.countRow(split.row.length)) this.endPiece(true);
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
        this.gather(data, start, end, rows, longest);
        this.endPiece(false);
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
        if (length > longest) longest = length;
        position += length;
        if (this.countRow(length)) {
          this.gather(data, start, end, rows, longest);
          this.endPiece(true);
          start = end;
          rows = longest = 0;
        }
      } else {
        // The row goes on in the next read: gathered on its own, after this read's rows.
        this.gather(data, start, end, rows, longest);
        start = end = rows = longest = 0;
        this.split = { row: Buffer.allocUnsafe(length), used: available };
        data.copy(this.split.row, 0, position);
        this.remaining = length - available;
        position = data.length;
      }
    }
    this.gather(data, start, end, rows, longest);
  }

  /** Adds whole rows, source[from, to), to the piece being gathered: copied, or as a piece of their own when larger than one. */
  private gather(source: Buffer, from: number, to: number, rows: number, longest: number): void {
    const bytes = to - from;
    if (rows === 0) return;
    if (this.gatheredBytes + bytes > PIECE_BYTES) this.endPiece(false);
    if (bytes > PIECE_BYTES) {
      // Only a row split across reads is this large, and it is a buffer of its own already.
      this.push({ data: source.subarray(from, to), rows, longestRow: longest, endsChunk: false });
      return;
    }
    this.gathered ??= spareBuffers.pop() ?? Buffer.allocUnsafe(PIECE_BYTES);
    source.copy(this.gathered, this.gatheredBytes, from, to);
    this.gatheredBytes += bytes;
    this.gatheredRows += rows;
    this.gatheredLongest = Math.max(this.gatheredLongest, longest);
  }

  /** Hands out the piece gathered so far, if any (and marks a chunk's end on the last piece of it). */
  private endPiece(endsChunk: boolean): void {
    const gathered = this.gathered;
    if (gathered && this.gatheredRows > 0) {
      this.push({ data: gathered.subarray(0, this.gatheredBytes), rows: this.gatheredRows, longestRow: this.gatheredLongest, endsChunk, gathered });
      this.gathered = undefined;
      this.gatheredBytes = this.gatheredRows = this.gatheredLongest = 0;
    } else if (endsChunk) {
      // The chunk's last row was a piece of its own (larger than a piece), handed out just now.
      this.ready[this.ready.length - 1].endsChunk = true;
    }
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

  private push(piece: CopyPiece): void {
    this.ready.push(piece);
    this.readyBytes += piece.data.length;
    // Backpressure: stop reading while the pieces wait to be taken.
    if (this.readyBytes >= MAX_QUEUED_BYTES) this.connection?.stream.pause();
    this.signal();
  }
}
