import pg from 'pg';
import { log } from '../shared/log.js';

/** How long a slot's creation runs before the producer looks for what holds it up, and then how often. */
const FIRST_LOOK_MS = 5_000;
const LOOK_EVERY_MS = 30_000;

interface OpenTransaction {
  pid: number;
  user: string;
  application: string;
  state: string;
  since: string;
}

interface PreparedTransaction {
  gid: string;
  owner: string;
  since: string;
}

/**
 * `creation`, the creation of replication slot `slot`, saying what it waits for while it takes
 * long. Postgres gives a logical slot its starting point only once every transaction that had
 * written when the creation began has ended: a session left idle in a transaction, or a prepared
 * transaction nobody committed, holds the slot — and so the copy and the stream — for as long as
 * it lasts, and Postgres says nothing of it. The producer names those transactions (their
 * backend, user, application and start; never their query text, which may hold secrets) and
 * the way out, every 30 s until the slot exists.
 */
export async function sayingWhatSlotWaitsFor<T>(pgUrl: string, slot: string, creation: Promise<T>): Promise<T> {
  let done = false;
  let client: pg.Client | undefined;
  let timer: NodeJS.Timeout | undefined;
  const look = async () => {
    try {
      if (!client) {
        client = new pg.Client({ connectionString: pgUrl, application_name: 'pg-replicate slot watch' });
        client.on('error', () => {});
        await client.connect();
      }
      const blockers = await openBefore(client, slot);
      if (!done && (blockers.transactions.length > 0 || blockers.prepared.length > 0)) say(slot, blockers);
    } catch {
      // Only advice: the creation itself reports what fails.
    }
    if (!done) timer = setTimeout(look, LOOK_EVERY_MS);
  };
  timer = setTimeout(look, FIRST_LOOK_MS);
  try {
    return await creation;
  } finally {
    done = true;
    clearTimeout(timer);
    await client?.end().catch(() => {});
  }
}

/** Transactions that had written before the slot's creation began: open in a session, or prepared. */
async function openBefore(client: pg.Client, slot: string): Promise<{ transactions: OpenTransaction[]; prepared: PreparedTransaction[] }> {
  const began = `(SELECT min(query_start) FROM pg_stat_activity WHERE backend_type = 'walsender' AND query LIKE 'CREATE_REPLICATION_SLOT %' AND strpos(query, $1) > 0)`;
  const transactions = await client.query(
    `SELECT pid, usename AS user, application_name AS application, state, xact_start::text AS since FROM pg_stat_activity
      WHERE backend_xid IS NOT NULL AND backend_type <> 'walsender' AND pid <> pg_backend_pid() AND xact_start <= ${began}
      ORDER BY xact_start`,
    [slot],
  );
  const prepared = await client.query(`SELECT gid, owner, prepared::text AS since FROM pg_prepared_xacts WHERE prepared <= ${began} ORDER BY prepared`, [slot]);
  return { transactions: transactions.rows, prepared: prepared.rows };
}

function say(slot: string, { transactions, prepared }: { transactions: OpenTransaction[]; prepared: PreparedTransaction[] }): void {
  const ends = [
    ...(transactions.length > 0
      ? [`commit or end the sessions (SELECT pg_terminate_backend(pid) for pid ${transactions.map((open) => open.pid).join(', ')})`]
      : []),
    ...(prepared.length > 0 ? [`COMMIT PREPARED or ROLLBACK PREPARED ${prepared.map((open) => `'${open.gid}'`).join(', ')}`] : []),
  ];
  log.warn(
    { slot, transactions, prepared },
    `creating replication slot ${slot} waits for ${transactions.length + prepared.length} transaction(s) open in Postgres since before it began: Postgres starts a slot only once every transaction that had written by then has ended, and nothing is copied or streamed until it has. To go on, ${ends.join(', and ')}; or wait for them to end.`,
  );
}
