import type { Socket } from 'node:net';

/** Protocol message types this reader looks at. */
const COPY_DATA = 0x64; // 'd'
const COPY_DONE = 0x63; // 'c'
const ERROR_RESPONSE = 0x45; // 'E'
const HEADER = 5;

/** A run of whole rows of COPY output, and how many. */
export interface CopyChunk {
  data: Buffer;
  rows: number;
}

interface PgConnection {
  stream: Socket;
  query(text: string): void;
}

/**
 * `COPY … TO STDOUT` read straight off a `pg` connection, one CopyData message at a time.
 * Postgres sends each row as its own message, so chunks end on row boundaries and rows are
 * counted without looking at the data (no CSV scanning), and each row's bytes are copied
 * once, into its chunk. Submit it with `client.query(copyOut)`, then iterate the chunks; the
 * socket is paused while a chunk waits to be taken, so memory stays at about two chunks.
 *
 * While the copy runs, the connection's data goes to this reader instead of `pg`'s parser;
 * from CopyDone (or an error) on, the rest goes back to `pg`, which finishes the query.
 */
export class CopyOut {
  private connection?: PgConnection;
  private pgDataHandler?: (data: Buffer) => void;
  private readonly onData = (data: Buffer) => this.parse(data);
  /** Bytes of a message header split across socket reads. */
  private partialHeader = Buffer.alloc(0);
  /** What remains of the message being read, and whether it is a row. */
  private remaining = 0;
  private inRow = false;
  private chunk: Buffer;
  private used = 0;
  private rows = 0;
  private readonly ready: CopyChunk[] = [];
  private finished = false;
  private failure?: Error;
  private wake?: () => void;

  constructor(
    private readonly text: string,
    /** A chunk is handed out once it holds this many bytes or rows. */
    private readonly chunkBytes: number,
    private readonly chunkRows: number,
  ) {
    this.chunk = Buffer.allocUnsafe(chunkBytes);
  }

  /** Called by `pg` when the query's turn comes. */
  submit(connection: PgConnection): void {
    this.connection = connection;
    const stream = connection.stream;
    const listeners = stream.listeners('data') as ((data: Buffer) => void)[];
    if (listeners.length !== 1) throw new Error('cannot read COPY output: the connection has an unexpected data listener');
    this.pgDataHandler = listeners[0];
    stream.removeListener('data', this.pgDataHandler);
    stream.on('data', this.onData);
    connection.query(this.text);
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

  async *[Symbol.asyncIterator](): AsyncGenerator<CopyChunk> {
    for (;;) {
      const next = this.ready.shift();
      if (next) {
        if (this.ready.length === 0) this.connection?.stream.resume();
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

  private parse(data: Buffer): void {
    let position = 0;
    while (position < data.length) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, data.length - position);
        if (this.inRow) this.append(data, position, take);
        position += take;
        this.remaining -= take;
        if (this.remaining === 0 && this.inRow) this.endRow();
        continue;
      }
      // A message header: its type byte and length, possibly split across reads.
      let header: Buffer | undefined;
      let type: number;
      let length: number;
      if (this.partialHeader.length === 0 && data.length - position >= HEADER) {
        type = data[position];
        length = data.readUInt32BE(position + 1) - 4;
        position += HEADER;
      } else {
        const needed = HEADER - this.partialHeader.length;
        this.partialHeader = Buffer.concat([this.partialHeader, data.subarray(position, position + needed)]);
        position += Math.min(needed, data.length - position);
        if (this.partialHeader.length < HEADER) return;
        header = this.partialHeader;
        this.partialHeader = Buffer.alloc(0);
        type = header[0];
        length = header.readUInt32BE(1) - 4;
      }
      if (type === COPY_DONE || type === ERROR_RESPONSE) {
        // The rest (CommandComplete, ReadyForQuery, or the error) is pg's to handle.
        if (this.rows > 0) this.flush();
        const rest = type === COPY_DONE ? data.subarray(position + length) : header ? Buffer.concat([header, data.subarray(position)]) : data.subarray(position - HEADER);
        this.detach(rest);
        return;
      }
      this.inRow = type === COPY_DATA;
      this.remaining = length;
      if (length === 0 && this.inRow) this.endRow();
    }
  }

  private append(data: Buffer, start: number, length: number): void {
    if (this.used + length > this.chunk.length) {
      // One row larger than what is left: grow this chunk to hold it.
      const grown = Buffer.allocUnsafe(Math.max(this.chunk.length * 2, this.used + length));
      this.chunk.copy(grown, 0, 0, this.used);
      this.chunk = grown;
    }
    data.copy(this.chunk, this.used, start, start + length);
    this.used += length;
  }

  private endRow(): void {
    this.rows++;
    if (this.rows >= this.chunkRows || this.used >= this.chunkBytes) this.flush();
  }

  private flush(): void {
    this.ready.push({ data: this.chunk.subarray(0, this.used), rows: this.rows });
    this.chunk = Buffer.allocUnsafe(this.chunkBytes);
    this.used = 0;
    this.rows = 0;
    // Backpressure: stop reading until the chunk is taken.
    this.connection?.stream.pause();
    this.signal();
  }

  private detach(rest: Buffer): void {
    const stream = this.connection!.stream;
    stream.removeListener('data', this.onData);
    stream.on('data', this.pgDataHandler!);
    if (rest.length > 0) this.pgDataHandler!(rest);
    stream.resume();
  }
}
