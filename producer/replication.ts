import pg from 'pg';
import { type Lsn, formatLsn, parseLsn } from '../shared/lsn.js';
import { VALUE_TEXT_SETTINGS } from '../shared/pgconn.js';

/** Milliseconds between the Unix epoch and Postgres' epoch (2000-01-01), which replication timestamps count from. */
export const PG_EPOCH_MS = 946_684_800_000;

export interface StreamHandlers {
  /** One pgoutput message, with the WAL position the server had sent up to. The buffer is valid only during the call. */
  onData(message: Buffer, walEnd: Lsn): void;
  /** A primary keepalive: the server's WAL end, and whether it wants an answer now. */
  onKeepalive(walEnd: Lsn, replyRequested: boolean): void;
}

export interface CreatedSlot {
  consistentPoint: Lsn;
  snapshotName: string | null;
}

/**
 * A walsender connection (replication=database). pg parses the wire protocol; the streaming
 * protocol on top of it (XLogData, keepalives, standby status updates) is ours, so that we
 * decide exactly which LSN is acknowledged and when.
 */
export class ReplicationConnection {
  private readonly client: pg.Client;
  private streaming: Promise<unknown> | undefined;

  private constructor(pgUrl: string, applicationName: string) {
    this.client = new pg.Client({
      connectionString: pgUrl,
      replication: 'database',
      application_name: applicationName,
      options: VALUE_TEXT_SETTINGS,
    } as pg.ClientConfig);
  }

  static async open(pgUrl: string, applicationName: string): Promise<ReplicationConnection> {
    const connection = new ReplicationConnection(pgUrl, applicationName);
    await connection.client.connect();
    return connection;
  }

  /** Creates the slot; with exportSnapshot, the snapshot lives until this connection runs its next command. */
  async createSlot(slot: string, exportSnapshot: boolean): Promise<CreatedSlot> {
    const snapshot = exportSnapshot ? 'EXPORT_SNAPSHOT' : 'NOEXPORT_SNAPSHOT';
    const result = await this.client.query(`CREATE_REPLICATION_SLOT ${quoteIdent(slot)} LOGICAL pgoutput ${snapshot}`);
    const row = result.rows[0];
    return { consistentPoint: parseLsn(row.consistent_point), snapshotName: row.snapshot_name ?? null };
  }

  /**
   * Streams the slot from startLsn (0 means "from the slot's confirmed position"). The returned
   * promise settles when the stream ends: by close(), or by an error from the server.
   */
  start(slot: string, publication: string, startLsn: Lsn, handlers: StreamHandlers): Promise<unknown> {
    const connection = (this.client as unknown as { connection: ConnectionInternals }).connection;
    connection.on('copyData', ({ chunk }: { chunk: Buffer }) => {
      const kind = chunk[0];
      if (kind === 0x77 /* w: XLogData */) {
        // A view into pg's read buffer, which it reuses for later socket data: the handler must
        // take what it needs before returning.
        handlers.onData(chunk.subarray(25), chunk.readBigUInt64BE(9));
      } else if (kind === 0x6b /* k: keepalive */) {
        handlers.onKeepalive(chunk.readBigUInt64BE(1), chunk[17] === 1);
      }
    });
    const options = `proto_version '1', publication_names '${publication.replace(/'/g, "''")}'`;
    this.streaming = this.client.query(`START_REPLICATION SLOT ${quoteIdent(slot)} LOGICAL ${formatLsn(startLsn)} (${options})`);
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

interface ConnectionInternals {
  on(event: 'copyData', listener: (message: { chunk: Buffer }) => void): void;
  sendCopyFromChunk(chunk: Buffer): void;
  stream: { pause(): void; resume(): void };
}

export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
