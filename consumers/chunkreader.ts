import { isIP, Socket, type SocketConstructorOpts } from 'node:net';
import { connect as connectTls } from 'node:tls';
import { PIECE_BYTES } from '../shared/chunks.js';
import { redisAddress } from '../shared/redistarget.js';

/** How much one read off the connection takes, at most (Node's own reads take 64 kB). */
const READ_BYTES = 256 * 1024;
/** Pieces kept for reuse: two transactions' worth of narrow chunks (JOIN_LIMITS, 24 MiB), one applied and one read ahead; wider chunks (two to a transaction) also take fresh ones. */
const MAX_POOLED_PIECES = 56;
/** Larger buffers (a large batch's change records, one piece of up to --max-batch-bytes) kept for reuse, and the largest kept. */
const MAX_POOLED_LARGE = 4;
const MAX_LARGE_BYTES = 16 * 1024 * 1024;
/** A pool nobody has taken from for this long goes back to the allocator: a consumer streaming changes holds no copy's buffers. */
const POOL_IDLE_MS = 10_000;

/** A reply as the reader needs them: an array of bulk strings (LRANGE), a status, an integer, or nil. */
type Reply = Buffer[] | string | number | null;

/**
 * Reads chunks (Redis lists of pieces: a copy's rows, up to a megabyte each, or a large
 * batch's change records) on a connection of its own,
 * into buffers it reuses: the kernel writes each read into one buffer, the bytes go from there
 * into pieces taken from a pool, and pieces come back (recycle()) once their chunk is applied.
 * Through ioredis every piece was a fresh buffer assembled from fresh 64 kB reads: a copy's
 * whole size again in new memory, which V8 counts as external (a major collection for every
 * 64 MB) and the kernel must fault in and zero.
 *
 * Replies come in the order commands were sent, so reads are pipelined on the one connection.
 * A connection that fails fails every read in flight (the runner retries the batch) and is
 * opened again by the next read.
 */
export class ChunkReader {
  private connection?: Promise<Connection>;
  private readonly pool: Buffer[] = [];
  private readonly largePool: Buffer[] = [];
  /** The pool's own buffers: only they go back to it, and only once while in it. */
  private readonly pooled = new WeakSet<ArrayBufferLike>();
  private readonly inPool = new WeakSet<ArrayBufferLike>();
  private idleTimer?: NodeJS.Timeout;

  constructor(private readonly url: string) {}

  /** The chunk's pieces, in order, or undefined when Redis no longer holds it. */
  async read(key: string): Promise<Buffer[] | undefined> {
    const connection = await this.connect();
    const reply = await connection.send(['LRANGE', key, '0', '-1']);
    if (!Array.isArray(reply)) throw new Error(`Redis answered LRANGE with ${typeof reply}, not a list`);
    return reply.length > 0 ? reply : undefined;
  }

  /** Pieces this reader returned, no longer used by anyone. */
  recycle(pieces: Buffer[]): void {
    for (const piece of pieces) {
      if (!this.pooled.has(piece.buffer) || this.inPool.has(piece.buffer)) continue;
      const large = piece.buffer.byteLength !== PIECE_BYTES;
      const pool = large ? this.largePool : this.pool;
      if (pool.length >= (large ? MAX_POOLED_LARGE : MAX_POOLED_PIECES)) continue;
      this.inPool.add(piece.buffer);
      pool.push(Buffer.from(piece.buffer, 0, piece.buffer.byteLength));
    }
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => (this.pool.length = this.largePool.length = 0), POOL_IDLE_MS).unref();
  }

  close(): void {
    clearTimeout(this.idleTimer);
    this.pool.length = this.largePool.length = 0;
    const connection = this.connection;
    this.connection = undefined;
    connection?.then((open) => open.close()).catch(() => {});
  }

  private connect(): Promise<Connection> {
    if (!this.connection) {
      const opening = Connection.open(
        this.url,
        (size) => this.take(size),
        () => {
          if (this.connection === opening) this.connection = undefined;
        },
      );
      this.connection = opening;
      opening.catch(() => {
        if (this.connection === opening) this.connection = undefined;
      });
    }
    return this.connection;
  }

  /** A buffer for a piece of `size` bytes: from a pool when a pooled one fits. */
  private take(size: number): Buffer {
    if (size > MAX_LARGE_BYTES) return Buffer.allocUnsafeSlow(size);
    let buffer: Buffer | undefined;
    if (size > PIECE_BYTES) {
      const fits = this.largePool.findIndex((pooled) => pooled.length >= size);
      if (fits >= 0) buffer = this.largePool.splice(fits, 1)[0];
    } else buffer = this.pool.pop();
    if (buffer) this.inPool.delete(buffer.buffer);
    else {
      // Large ones in whole megabytes and a few more, so that the next batch's fits too.
      buffer = Buffer.allocUnsafeSlow(size > PIECE_BYTES ? (Math.ceil(size / 2 ** 20) + 1) * 2 ** 20 : PIECE_BYTES);
      this.pooled.add(buffer.buffer);
    }
    return buffer.subarray(0, size);
  }
}

interface Pending {
  resolve: (reply: Reply) => void;
  reject: (error: Error) => void;
}

/** One connection to Redis: commands out, replies parsed as they arrive, in order. */
class Connection {
  private readonly pending: Pending[] = [];
  private readonly parser: ReplyParser;
  private failure?: Error;

  private constructor(
    private readonly socket: Socket,
    take: (size: number) => Buffer,
    private readonly onClose: () => void,
  ) {
    this.parser = new ReplyParser(take, (reply) => this.settle(reply));
    socket.on('error', (error) => this.fail(new Error(`lost the connection to Redis for reading chunks: ${error.message}`)));
    socket.on('close', () => this.fail(new Error('lost the connection to Redis for reading chunks: closed')));
  }

  /** Connects (to Sentinel's master now, for a Sentinel URL), authenticates and selects the URL's database. */
  static async open(url: string, take: (size: number) => Buffer, onClose: () => void): Promise<Connection> {
    const { host, port, tls, username, password, db } = await redisAddress(url);
    const options = { host, port };
    let connection: Connection;
    let socket: Socket;
    if (tls) {
      // TLS decrypts into buffers of its own: only the pieces are reused.
      socket = connectTls({ ...options, ...(isIP(host) ? {} : { servername: host }) });
      connection = new Connection(socket, take, onClose);
      socket.on('data', (data: Buffer) => connection.receive(data));
    } else {
      socket = new Socket({
        onread: {
          buffer: Buffer.allocUnsafe(READ_BYTES),
          callback: (length: number, buffer: Uint8Array) => {
            connection.receive(Buffer.from(buffer.buffer, buffer.byteOffset, length));
            return true;
          },
        },
        // Node reads `onread` here (net.connect passes its options on); its types list it only for connect().
      } as SocketConstructorOpts);
      connection = new Connection(socket, take, onClose);
      socket.connect(options);
    }
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      socket.once(tls ? 'secureConnect' : 'connect', resolve);
      socket.once('error', reject);
    });
    try {
      if (password) await connection.send(username ? ['AUTH', username, password] : ['AUTH', password]);
      if (db !== 0) await connection.send(['SELECT', String(db)]);
    } catch (error) {
      connection.close();
      throw error;
    }
    return connection;
  }

  /** Bytes read off the socket, parsed before the next read overwrites them. */
  receive(data: Buffer): void {
    try {
      this.parser.feed(data);
    } catch (error) {
      this.fail(error as Error);
    }
  }

  send(command: string[]): Promise<Reply> {
    if (this.failure) return Promise.reject(this.failure);
    const parts = [`*${command.length}\r\n`];
    for (const part of command) parts.push(`$${Buffer.byteLength(part)}\r\n${part}\r\n`);
    this.socket.write(parts.join(''));
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  }

  close(): void {
    this.socket.destroy();
  }

  private settle(reply: Reply | Error): void {
    const waiting = this.pending.shift();
    if (!waiting) return this.fail(new Error('Redis sent a reply to no command on the chunk reader connection'));
    if (reply instanceof Error) waiting.reject(reply);
    else waiting.resolve(reply);
  }

  private fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    this.socket.destroy();
    for (const waiting of this.pending.splice(0)) waiting.reject(error);
    this.onClose();
  }
}

/**
 * RESP2 replies, parsed incrementally from reads of any size. Bulk strings are copied straight
 * into buffers from `take` (whole, never assembled from parts); everything else is a short line.
 * Exported for its test.
 */
export class ReplyParser {
  /** A header line split across reads. */
  private partialLine = '';
  /** The array being filled, and how many elements it still lacks. */
  private items?: Buffer[];
  private missingItems = 0;
  /** The bulk string being filled, and how many of its bytes are in. */
  private bulk?: Buffer;
  private bulkFilled = 0;
  /** Bytes of a bulk string's closing CRLF still to pass over. */
  private skip = 0;

  constructor(
    private readonly take: (size: number) => Buffer,
    private readonly emit: (reply: Reply | Error) => void,
  ) {}

  feed(data: Buffer): void {
    let at = 0;
    while (at < data.length) {
      if (this.skip > 0) {
        const skipped = Math.min(this.skip, data.length - at);
        this.skip -= skipped;
        at += skipped;
      } else if (this.bulk) {
        const copied = data.copy(this.bulk, this.bulkFilled, at, Math.min(data.length, at + this.bulk.length - this.bulkFilled));
        this.bulkFilled += copied;
        at += copied;
        if (this.bulkFilled === this.bulk.length) {
          const bulk = this.bulk;
          this.bulk = undefined;
          this.skip = 2;
          this.element(bulk);
        }
      } else {
        const end = data.indexOf(0x0a, at);
        if (end < 0) {
          this.partialLine += data.toString('latin1', at);
          return;
        }
        const line = this.partialLine + data.toString('latin1', at, end);
        this.partialLine = '';
        at = end + 1;
        this.header(line.endsWith('\r') ? line.slice(0, -1) : line);
      }
    }
  }

  private header(line: string): void {
    const value = line.slice(1);
    switch (line[0]) {
      case '*': {
        const count = Number(value);
        if (count <= 0) return this.emit(count === 0 ? [] : null);
        this.items = [];
        this.missingItems = count;
        return;
      }
      case '$': {
        const length = Number(value);
        if (length < 0) return this.items ? this.protocolError(line) : this.emit(null);
        if (length === 0) {
          this.skip = 2;
          return this.element(Buffer.alloc(0));
        }
        this.bulk = this.take(length);
        this.bulkFilled = 0;
        return;
      }
      case '+':
        return this.items ? this.protocolError(line) : this.emit(value);
      case ':':
        return this.items ? this.protocolError(line) : this.emit(Number(value));
      case '-':
        return this.items ? this.protocolError(line) : this.emit(new Error(`Redis: ${value}`));
      default:
        this.protocolError(line);
    }
  }

  /** A complete bulk string: an element of the array being filled, or a reply of its own. */
  private element(bulk: Buffer): void {
    if (!this.items) return this.emit([bulk]);
    this.items.push(bulk);
    if (--this.missingItems > 0) return;
    const items = this.items;
    this.items = undefined;
    this.emit(items);
  }

  private protocolError(line: string): never {
    throw new Error(`unexpected reply from Redis on the chunk reader connection: ${JSON.stringify(line.slice(0, 40))}`);
  }
}
