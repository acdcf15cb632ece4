import pg from 'pg';
import { formatLsn, type Lsn, parseLsn } from '../shared/lsn.js';
import { PRODUCER_SESSION_SETTINGS } from '../shared/pgconn.js';
import { sayingWhatSlotWaitsFor } from './slotwait.js';
import { COPY_DATA, CopyDataReader } from './wire.js';

/** Milliseconds between the Unix epoch and Postgres' epoch (2000-01-01), which replication timestamps count from. */
export const PG_EPOCH_MS = 946_684_800_000;

export interface StreamHandlers {
  /** One pgoutput message: `buffer` from `start` to `end`, a view of the read buffer valid only during the call. */
  onData(buffer: Buffer, start: number, end: number): void;
  /** A primary keepalive: the server's WAL end, and whether it wants an answer now. */
  onKeepalive(walEnd: Lsn, replyRequested: boolean): void;
}

export interface CreatedSlot {
  consistentPoint: Lsn;
  snapshotName: string | null;
}

/**
 * A walsender connection (replication=database). pg runs the connection and its commands; the
 * stream itself is read off the socket here (CopyBothReader), and the streaming protocol on top
 * of it (XLogData, keepalives, standby status updates) is ours, so that we decide exactly which
 * LSN is acknowledged and when.
 */
export class ReplicationConnection {
  private readonly client: pg.Client;
  private streaming: Promise<unknown> | undefined;

  private constructor(
    private readonly pgUrl: string,
    applicationName: string,
  ) {
    this.client = new pg.Client({
      connectionString: pgUrl,
      replication: 'database',
      application_name: applicationName,
      options: PRODUCER_SESSION_SETTINGS,
      // A server that vanished without closing the connection (a failover, a cut network) is noticed.
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      connectionTimeoutMillis: 10_000,
    } as pg.ClientConfig);
  }

  static async open(pgUrl: string, applicationName: string): Promise<ReplicationConnection> {
    const connection = new ReplicationConnection(pgUrl, applicationName);
    // Until the session listens (on), a terminated backend must not end the process.
    connection.client.on('error', () => {});
    await connection.client.connect();
    return connection;
  }

  /**
   * Creates the slot (`temporary`: gone with this connection); with exportSnapshot, the
   * snapshot lives until this connection runs its next command.
   */
  async createSlot(slot: string, exportSnapshot: boolean, temporary = false): Promise<CreatedSlot> {
    const snapshot = exportSnapshot ? 'EXPORT_SNAPSHOT' : 'NOEXPORT_SNAPSHOT';
    const result = await sayingWhatSlotWaitsFor(
      this.pgUrl,
      slot,
      this.client.query(`CREATE_REPLICATION_SLOT ${quoteIdent(slot)}${temporary ? ' TEMPORARY' : ''} LOGICAL pgoutput ${snapshot}`),
    );
    const row = result.rows[0];
    return { consistentPoint: parseLsn(row.consistent_point), snapshotName: row.snapshot_name ?? null };
  }

  /**
   * Streams the slot from startLsn (0 means "from the slot's confirmed position"). The returned
   * promise settles when the stream ends: by close(), or by an error from the server.
   */
  start(slot: string, publication: string, startLsn: Lsn, handlers: StreamHandlers): Promise<unknown> {
    const options = `proto_version '1', publication_names '${publication.replace(/'/g, "''")}'`;
    const stream = new CopyBothReader(`START_REPLICATION SLOT ${quoteIdent(slot)} LOGICAL ${formatLsn(startLsn)} (${options})`, handlers);
    this.client.query(stream as never);
    this.streaming = stream.ended;
    return this.streaming;
  }

  /** Standby status update: written, flushed and applied are all the position every destination has durably applied. */
  sendStatus(acknowledged: Lsn, replyRequested = false): void {
    const message = Buffer.alloc(34);
    message[0] = 0x72; // r
    message.writeBigUInt64BE(acknowledged, 1);
    message.writeBigUInt64BE(acknowledged, 9);
    message.writeBigUInt64BE(acknowledged, 17);
    message.writeBigUInt64BE(BigInt(Date.now() - PG_EPOCH_MS) * 1000n, 25);
    message[33] = replyRequested ? 1 : 0;
    const connection = (this.client as unknown as { connection: ConnectionInternals }).connection;
    connection.sendCopyFromChunk(message);
  }

  /** Stops reading from the server (back-pressure); status updates can still be sent. */
  pause(): void {
    this.socket().pause();
  }

  resume(): void {
    this.socket().resume();
  }

  async close(): Promise<void> {
    this.client.removeAllListeners('error');
    this.client.on('error', () => {});
    await this.client.end().catch(() => {});
    await this.streaming?.catch(() => {});
  }

  on(event: 'error', listener: (error: Error) => void): void {
    this.client.on(event, listener);
  }

  private socket(): { pause(): void; resume(): void } {
    return (this.client as unknown as { connection: ConnectionInternals }).connection.stream;
  }
}

const COPY_BOTH_RESPONSE = 0x57; // 'W'
const NOTICE = 0x4e; // 'N'

/**
 * The replication stream read straight off the connection's socket: each CopyData message is
 * handed to the handlers as a view of the read buffer, without pg's parser making a message
 * object, a buffer and an event of it. A message split across reads is gathered first. From
 * CopyDone, an error or anything else on, the rest goes back to pg, which ends the query.
 * Submitted with `client.query(reader)`; `ended` settles with the query.
 */
export class CopyBothReader extends CopyDataReader {
  readonly ended: Promise<void>;
  private settle!: { resolve: () => void; reject: (error: Error) => void };
  /** A message begun in an earlier read: its length, bytes read so far, and those bytes if it is kept. */
  private split?: { length: number; used: number; message?: Buffer };
  constructor(
    text: string,
    private readonly handlers: StreamHandlers,
  ) {
    super(text);
    this.ended = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
  }

  /** A server error, or the connection's end (then nothing follows). */
  handleError(error: Error): void {
    this.settle.reject(error);
  }

  handleCommandComplete(): void {}

  handleReadyForQuery(): void {
    this.settle.resolve();
  }

  protected parse(data: Buffer): void {
    let position = 0;
    while (position < data.length) {
      const split = this.split;
      if (split) {
        const take = Math.min(split.length - split.used, data.length - position);
        if (split.message) data.copy(split.message, split.used, position, position + take);
        split.used += take;
        position += take;
        if (split.used < split.length) return;
        this.split = undefined;
        if (split.message) this.handle(split.message, 0, split.length);
        continue;
      }
      const body = this.readHeader(data, position);
      if (body < 0) return;
      const type = this.messageType;
      const length = this.messageLength;
      position = body;
      if (type !== COPY_DATA && type !== COPY_BOTH_RESPONSE && type !== NOTICE) {
        // CopyDone, an error, the query's end: pg's to handle, from this message on.
        this.detach(this.fromMessageStart(data, body));
        return;
      }
      const keep = type === COPY_DATA;
      if (data.length - position >= length) {
        if (keep) this.handle(data, position, position + length);
        position += length;
      } else {
        const message = keep ? Buffer.allocUnsafe(length) : undefined;
        if (message) data.copy(message, 0, position);
        this.split = { length, used: data.length - position, message };
        position = data.length;
      }
    }
  }

  /** One CopyData message: XLogData ('w') or a primary keepalive ('k'). */
  private handle(buffer: Buffer, start: number, end: number): void {
    const kind = buffer[start];
    if (kind === 0x77 /* w */) this.handlers.onData(buffer, start + 25, end);
    else if (kind === 0x6b /* k */) this.handlers.onKeepalive(buffer.readBigUInt64BE(start + 1), buffer[start + 17] === 1);
  }
}

interface ConnectionInternals {
  sendCopyFromChunk(chunk: Buffer): void;
  stream: { pause(): void; resume(): void };
}

export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
