import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../shared/errors.js';
import { log } from '../shared/log.js';
import { type Lsn, parseLsn } from '../shared/lsn.js';
import { connectPostgres } from './preflight.js';

export interface SlotInfo {
  confirmedFlush: Lsn;
  active: boolean;
  activePid: number | null;
  /** Postgres 13+: 'lost' once the slot was invalidated (the WAL it needed is gone). */
  walStatus: string | null;
}

/** The slot, once no other walsender holds it (a previous session's may take a moment to exit). */
export async function inactiveSlot(pgUrl: string, name: string, signal: AbortSignal): Promise<SlotInfo | undefined> {
  for (let attempt = 0; ; attempt++) {
    const slot = await slotInfo(pgUrl, name);
    if (!slot?.active) return slot;
    if (attempt >= 50 || signal.aborted) {
      throw new Error(`replication slot ${name} is in use by another process (pid ${slot.activePid}); only one producer may run per pipeline`);
    }
    await sleep(200);
  }
}

export async function slotInfo(pgUrl: string, name: string): Promise<SlotInfo | undefined> {
  const client = await connectPostgres(pgUrl, 'pg-replicate producer');
  try {
    const result = await client.query(
      `SELECT confirmed_flush_lsn::text AS confirmed, active, active_pid, plugin, database = current_database() AS here, to_jsonb(s) ->> 'wal_status' AS wal_status
         FROM pg_replication_slots s WHERE slot_name = $1`,
      [name],
    );
    const row = result.rows[0];
    if (!row) return undefined;
    if (row.plugin !== 'pgoutput' || !row.here) {
      throw new UserError(
        `Replication slot ${name} exists but is not a pgoutput slot of this database. Choose another --slot, or drop it with SELECT pg_drop_replication_slot('${name}').`,
      );
    }
    return { confirmedFlush: parseLsn(row.confirmed ?? '0/0'), active: row.active, activePid: row.active_pid, walStatus: row.wal_status };
  } finally {
    await client.end();
  }
}

export async function dropSlot(pgUrl: string, name: string): Promise<void> {
  const client = await connectPostgres(pgUrl, 'pg-replicate producer');
  try {
    await client.query('SELECT pg_drop_replication_slot($1)', [name]);
    log.info({ slot: name }, 'dropped replication slot to take a fresh consistent copy');
  } finally {
    await client.end();
  }
}
