import { Socket, type SocketConstructorOpts } from 'node:net';

/** Protocol message types the readers look at. */
export const COPY_DATA = 0x64; // 'd'
const HEADER = 5;

interface PgConnection {
  stream: Socket;
  query(text: string): void;
}

/** How much one read off a copy connection's socket takes, at most (Node's own reads take 64 kB). */
const READ_BYTES = 256 * 1024;

/** A socket whose reads land in one buffer, reused: see inPlaceSocket. */
interface InPlaceSocket extends Socket {
  /** While a CopyDataReader reads the connection: it gets each read in place. */
  inPlaceReader?: (data: Buffer) => void;
}

/**
 * The socket for a copy connection (`pg`'s `stream` option): the kernel writes every read into
 * one buffer, reused, where Node would allocate a fresh one per read, which V8 counts as external
 * memory (a major collection of the heap for every 64 MB of it: a copy's whole size, again).
 * A CopyDataReader attached to it parses each read in place and is done with it when it
 * returns; otherwise pg gets a copy, as it keeps what it is given. With TLS (pg passes its
 * connection's settings), a plain socket.
 */
export function inPlaceSocket(config?: { ssl?: unknown }): Socket {
  if (config?.ssl) return new Socket();
  const socket: InPlaceSocket = new Socket({
    onread: {
      buffer: Buffer.allocUnsafe(READ_BYTES),
      callback: (length: number, buffer: Uint8Array) => {
        const data = Buffer.from(buffer.buffer, buffer.byteOffset, length);
        if (socket.inPlaceReader) socket.inPlaceReader(data);
        else socket.emit('data', Buffer.from(data));
        return true;
      },
    },
    // Node reads `onread` here (net.connect passes its options on); its types list it only for connect().
  } as SocketConstructorOpts);
  socket.inPlaceReader = undefined;
  return socket;
}

/**
 * A `pg` query (submit it with `client.query(reader)`) whose CopyData messages are read straight
 * off the connection's socket, not through pg's parser: while it runs, the socket's data goes
 * to parse(); once the copy ends, detach() hands the rest back to pg, which finishes the query.
 * Message headers split across socket reads are gathered here; the subclass handles the bodies.
 */
export abstract class CopyDataReader {
  protected connection?: PgConnection;
  private pgDataHandler?: (data: Buffer) => void;
  private readonly onData = (data: Buffer) => this.parse(data);
  /** Bytes of a message header split across socket reads. */
  private partialHeader = Buffer.alloc(0);

  constructor(private readonly text: string) {}

  /** Called by `pg` when the query's turn comes. */
  submit(connection: PgConnection): void {
    this.connection = connection;
    const stream = connection.stream as InPlaceSocket;
    if (stream instanceof Socket && 'inPlaceReader' in stream) {
      stream.inPlaceReader = this.onData;
      connection.query(this.text);
      return;
    }
    const listeners = stream.listeners('data') as ((data: Buffer) => void)[];
    if (listeners.length !== 1) throw new Error('cannot read the copy off the connection: it has an unexpected data listener');
    this.pgDataHandler = listeners[0];
    stream.removeListener('data', this.pgDataHandler);
    stream.on('data', this.onData);
    connection.query(this.text);
  }

  protected abstract parse(data: Buffer): void;

  /** Type and body length of the header readHeader() read last (fields, not an object: this runs once per row). */
  protected messageType = 0;
  protected messageLength = 0;
  /** That header's bytes, when it was gathered from two reads. */
  private gatheredHeader?: Buffer;

  /** Reads the header of the message at `position`; returns where its body starts, or -1 when this read ends inside the header (the rest comes with the next). */
  protected readHeader(data: Buffer, position: number): number {
    if (this.partialHeader.length === 0 && data.length - position >= HEADER) {
      this.messageType = data[position];
      this.messageLength = data.readUInt32BE(position + 1) - 4;
      this.gatheredHeader = undefined;
      return position + HEADER;
    }
    const needed = HEADER - this.partialHeader.length;
    const header = Buffer.concat([this.partialHeader, data.subarray(position, position + needed)]);
    if (header.length < HEADER) {
      this.partialHeader = header;
      return -1;
    }
    this.partialHeader = Buffer.alloc(0);
    this.messageType = header[0];
    this.messageLength = header.readUInt32BE(1) - 4;
    this.gatheredHeader = header;
    return position + needed;
  }

  /** The message just read (its body at `body`), from its first byte to the read's end: what pg gets back when the reader lets go. */
  protected fromMessageStart(data: Buffer, body: number): Buffer {
    return this.gatheredHeader ? Buffer.concat([this.gatheredHeader, data.subarray(body)]) : data.subarray(body - HEADER);
  }

  /** Gives the connection back to pg, with what it has not read yet. */
  protected detach(rest: Buffer): void {
    const stream = this.connection!.stream as InPlaceSocket;
    if (this.pgDataHandler) {
      stream.removeListener('data', this.onData);
      stream.on('data', this.pgDataHandler);
    } else stream.inPlaceReader = undefined;
    // A copy: the read it is part of may be overwritten by the next.
    if (rest.length > 0) stream.emit('data', Buffer.from(rest));
    stream.resume();
  }
}
