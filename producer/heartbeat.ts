import pg from 'pg';
import { errorMessage } from '../shared/errors.js';
import { log } from '../shared/log.js';

/**
 * On an idle database the walsender may have nothing to send; a non-transactional logical
 * message writes a little WAL so the slot keeps advancing. Needs EXECUTE on
 * pg_logical_emit_message (superusers have it); without it we say so once and rely on keepalives.
 */
export class Heartbeat {
  private client: pg.Client | undefined;
  private disabled = false;

  constructor(private readonly pgUrl: string) {}

  async beat(): Promise<void> {
    if (this.disabled) return;
    try {
      if (!this.client) {
        const client = new pg.Client({ connectionString: this.pgUrl, application_name: 'pg-replicate heartbeat' });
        this.client = client;
        // A terminated backend: the next beat connects again.
        client.on('error', () => {
          if (this.client === client) this.client = undefined;
          void client.end().catch(() => {});
        });
        await client.connect();
      }
      await this.client.query("SELECT pg_logical_emit_message(false, 'pg_replicate_heartbeat', '')");
    } catch (error) {
      if ((error as { code?: string }).code === '42501') {
        this.disabled = true;
        log.warn(
          'heartbeat disabled: GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) to the replication user to keep the slot moving on an idle database',
        );
      } else {
        log.debug({ err: errorMessage(error) }, 'heartbeat failed');
        await this.close();
      }
    }
  }

  async close(): Promise<void> {
    await this.client?.end().catch(() => {});
    this.client = undefined;
  }
}
