import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import pg from 'pg';
import { errorMessage, UserError } from '../shared/errors.js';
import { log } from '../shared/log.js';
import type { ProducerOptions } from './options.js';
import { largestRowBytes } from './oversize.js';
import { fitToRedisMemory, parseRedisMemory, type RedisMemoryReading } from './redismemory.js';

/**
 * Postgres cannot be reached or dropped the connection (it is down, restarting, failing over, or
 * terminated our backend): worth retrying with backoff, unlike a UserError.
 */
export class PostgresUnavailableError extends Error {
  override name = 'PostgresUnavailableError';
}

// Socket-level failures and the server-side reasons a healthy setup loses a connection:
// class 08 (connection exception), admin/crash shutdown and "starting up" (57P01-03), too many
// connections while a restart settles (53300).
const TRANSIENT_CODES = /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|EHOSTUNREACH|ENETUNREACH|EAI_AGAIN|08...|57P0[123]|53300)$/;
const TRANSIENT_MESSAGES =
  /Connection terminated|connection timeout|terminating connection|server closed the connection|connection error|the database system is (starting up|shutting down|in recovery mode)/i;

/** Whether the error means the connection to Postgres was lost or could not be made (retry), rather than a refusal. */
export function isConnectionLoss(error: unknown): boolean {
  if (error instanceof PostgresUnavailableError) return true;
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  return (typeof code === 'string' && TRANSIENT_CODES.test(code)) || (typeof message === 'string' && TRANSIENT_MESSAGES.test(message));
}

/**
 * The failures a human must fix, as UserErrors with the fix: credentials, a missing database,
 * missing privileges, a missing publication, a slot Postgres invalidated. Undefined for anything
 * else (which a producer retries).
 */
export function refusal(error: unknown): UserError | undefined {
  if (error instanceof UserError) return error;
  const { code } = (error ?? {}) as { code?: unknown };
  const message = errorMessage(error);
  const data = dataRefusal(error);
  if (data) return data;
  switch (code) {
    case '28P01':
    case '28000':
      return new UserError(
        `Postgres refused the login (${message}). Check the user and password in --pg-url / PG_URL (a password past its VALID UNTIL is refused the same way), and pg_hba.conf on the server.`,
      );
    case '3D000':
      return new UserError(`${message}. Check the database name in --pg-url / PG_URL.`);
    case '42501':
      return new UserError(
        `Postgres denied a privilege the producer needs (${message}). Grant it to the replication user (GRANT SELECT ON the published tables, GRANT USAGE ON their schemas), then start the producer again.`,
      );
    case '42704':
      if (/publication/i.test(message))
        return new UserError(`${message}. Re-create the publication (CREATE PUBLICATION …) or pass the right --publication, then start the producer again.`);
      return undefined;
    case '53400':
      if (/replication slots/i.test(message)) {
        return new UserError(
          `Postgres has no replication slot left for this pipeline (${message}). Drop the slots nothing uses any more (SELECT slot_name, active, wal_status FROM pg_replication_slots; then SELECT pg_drop_replication_slot('…') for each), or raise max_replication_slots (a restart of Postgres), then start the producer again.`,
        );
      }
      return undefined;
    case '55000':
      if (/replication slot/i.test(message)) return new UserError(`${message}. ${SLOT_RECOVERY}`);
      return undefined;
    case '0A000':
      // The URL leads to a standby (PostgreSQL 15 and older cannot decode on one): each try fails alike.
      if (/while in recovery/i.test(message)) return new UserError(`Postgres refuses logical decoding here (${message}). ${ON_STANDBY}`);
      return undefined;
    default:
      return undefined;
  }
}

/**
 * A data exception (SQLSTATE class 22) Postgres met in a value it was decoding or copying: it
 * fails again on every try. `table`: the value's table, where known (a copy).
 */
export function dataRefusal(error: unknown, table?: string): UserError | undefined {
  const { code } = (error ?? {}) as { code?: unknown };
  if (typeof code !== 'string' || !code.startsWith('22')) return undefined;
  const value = table ? `a value of ${table}` : 'a value';
  const cause = `${errorMessage(error)}${lsnOf(error)}`;
  // Only a SQL_ASCII database holds text that is not UTF-8 (every other encoding converts).
  if (code === '22021') return new UserError(`Postgres cannot send ${value} as UTF-8 (${cause}). ${NOT_UTF8}`);
  return new UserError(`Postgres failed on ${value} it was to send (${cause}). ${DATA_ERROR}`);
}

/** Where a failed change is in the WAL, from the walsender's error context. */
function lsnOf(error: unknown): string {
  const where = String((error as { where?: unknown }).where ?? '');
  const lsn = /associated LSN ([0-9A-F]+\/[0-9A-F]+)/i.exec(where)?.[1];
  return lsn ? `, in the change at LSN ${lsn}` : '';
}

/** What to do about text that is not UTF-8 (SQL_ASCII databases store any bytes). */
const NOT_UTF8 =
  "A value that is not UTF-8 stops the producer (exit 2), naming its table when it is copied: correct such values (write them in UTF-8; Latin-1 text, say, with UPDATE … SET col = convert_from(convert(convert_to(col, 'SQL_ASCII'), 'LATIN1', 'UTF8'), 'SQL_ASCII') WHERE …), then start the producer again. A change already in the WAL cannot be sent: after correcting the values, run `pg-replicate resync --all` (every table copied again under a new slot, past that change).";

/** What to do about a value Postgres fails on as it decodes or copies it (a row filter dividing by zero, say). */
const DATA_ERROR =
  "This does not pass by itself: correct the value, or the publication's row filter that fails on it, then start the producer again. A change already in the WAL cannot be sent: after correcting, run `pg-replicate resync --all` (every table copied again under a new slot, past that change).";

const ON_STANDBY =
  'The server at --pg-url / PG_URL is a standby (in recovery). Point --pg-url at the primary; if this server is being promoted, start the producer again once the promotion is done.';

/** What to do once the slot is gone or invalidated: the changes since its last position cannot be streamed again. */
export const SLOT_RECOVERY =
  'Changes committed since its last confirmed position cannot be streamed again, so every destination may lack some. Recover with `pg-replicate resync --all` (every table copied again for every destination under a new slot; with --mode cdc, a new slot at the current position, the gap left as it is), then start the producer again.';

/**
 * Connects to Postgres. A refusal a human must fix is a UserError; a server that cannot be
 * reached is a PostgresUnavailableError (retried by a running producer). `onError` hears the
 * connection's later failures (a terminated backend): without a listener they would end the process.
 */
export async function connectPostgres(
  pgUrl: string,
  applicationName: string,
  options?: string,
  onError: (error: Error) => void = () => {},
): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: pgUrl,
    application_name: applicationName,
    connectionTimeoutMillis: 10_000,
    ...(options ? { options } : {}),
  });
  client.on('error', onError);
  try {
    await client.connect();
  } catch (error) {
    await client.end().catch(() => {});
    throw refusal(error) ?? new PostgresUnavailableError(`Cannot connect to Postgres (${errorMessage(error)})`);
  }
  return client;
}

/** How long the producer, starting, waits for a Postgres that is restarting or recovering. */
export const STARTUP_PATIENCE_MS = 30_000;

/**
 * connectPostgres for a command that starts (the producer's checks, status, resync): a server
 * that cannot be reached is the user's to fix (UserError). The producer first waits up to
 * `patienceMs` for one that is restarting or recovering (refused, "starting up", "not yet
 * accepting connections"): a supervisor may restart it in the middle of a Postgres restart,
 * and a wrong host or port looks the same.
 */
export async function connectPostgresOnce(pgUrl: string, applicationName: string, patienceMs = 0): Promise<pg.Client> {
  const until = Date.now() + patienceMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await connectPostgres(pgUrl, applicationName);
    } catch (error) {
      if (!(error instanceof PostgresUnavailableError)) throw error;
      if (Date.now() >= until) {
        throw new UserError(
          `${error.message}. Check --pg-url / PG_URL: host, port, database, user and password, and that the server accepts connections from here.`,
        );
      }
      if (attempt === 1) log.warn({ err: error.message }, `Postgres is not reachable yet: trying again for up to ${patienceMs / 1000} s`);
      await sleep(1_000);
    }
  }
}

/** Checks that the source can do logical replication of this publication. */
/**
 * Everything checked before the producer takes its lease: Postgres and the publication, Redis
 * (its eviction policy, its maxmemory, the largest value it takes). Returns the options fitted
 * to Redis and the largest row Redis takes in one value.
 */
export async function preflight(client: pg.Client, redis: Redis, options: ProducerOptions): Promise<{ options: ProducerOptions; largestRowBytes: number }> {
  await checkSource(client, options.publication);
  const fitted = fitToRedisMemory(options, await checkRedis(redis));
  const largest = await largestRowBytes(redis);
  if (fitted.maxBatchBytes > largest) {
    throw new UserError(
      `--max-batch-bytes ${fitted.maxBatchBytes} is more than Redis takes in one value (proto-max-bulk-len allows about ${largest} bytes): lower it, or raise proto-max-bulk-len.`,
    );
  }
  const keep = (await client.query('SHOW max_slot_wal_keep_size').catch(() => ({ rows: [{}] }))).rows[0].max_slot_wal_keep_size;
  if (keep === '-1' && fitted.maxDestinationLagBytes <= 0) {
    log.warn(
      "neither Postgres (max_slot_wal_keep_size = -1) nor pg-replicate (--max-destination-lag-bytes) bounds the WAL a stopped destination makes Postgres keep: set --max-destination-lag-bytes (detaches such a destination, which is copied afresh when it returns) so that it cannot fill the primary's disk",
    );
  }
  return { options: fitted, largestRowBytes: largest };
}

async function checkSource(client: pg.Client, publication: string): Promise<void> {
  const walLevel = (await client.query('SHOW wal_level')).rows[0].wal_level;
  if (walLevel !== 'logical') {
    throw new UserError(
      `Postgres has wal_level=${walLevel}, but logical replication needs wal_level=logical. Set it (ALTER SYSTEM SET wal_level = logical, or -c wal_level=logical) and restart Postgres.`,
    );
  }
  const server = (await client.query("SELECT pg_is_in_recovery() AS standby, current_setting('server_version_num')::int AS version")).rows[0];
  // PostgreSQL 16 decodes on a standby; before it, creating or reading a slot there fails, on every try.
  if (server.standby && server.version < 160000) {
    throw new UserError(`PostgreSQL ${Math.floor(server.version / 10000)} cannot decode logical replication on a standby. ${ON_STANDBY}`);
  }
  const found = await client.query(
    'SELECT pubinsert AS insert, pubupdate AS update, pubdelete AS delete, pubtruncate AS truncate FROM pg_publication WHERE pubname = $1',
    [publication],
  );
  if (found.rowCount === 0) {
    throw new UserError(
      `Publication "${publication}" does not exist in this database. Create it first, e.g. CREATE PUBLICATION ${publication} FOR TABLE my_table; (or FOR ALL TABLES), or pass the right --publication.`,
    );
  }
  // Kept as it is (an append-only history is a choice), but said: the destinations will not mirror the tables.
  const unpublished = Object.entries(found.rows[0]).flatMap(([operation, published]) => (published ? [] : [operation]));
  if (unpublished.length > 0) {
    log.warn(
      `publication ${publication} does not publish ${unpublished.join(', ')}: Postgres never sends those changes, so the destinations keep rows that Postgres has changed or removed. If they should mirror the tables: ALTER PUBLICATION ${publication} SET (publish = 'insert, update, delete, truncate'), then run \`pg-replicate resync --all\` (the changes not sent until then cannot be streamed again)`,
    );
  }
  await checkPublishedTables(client, publication);
  if ((await client.query('SHOW server_encoding')).rows[0].server_encoding === 'SQL_ASCII') {
    log.warn(`this database's encoding is SQL_ASCII: Postgres stores its text without checking it, and sends it as UTF-8 only where it is. ${NOT_UTF8}`);
  }
  const role = (await client.query('SELECT rolreplication OR rolsuper AS ok FROM pg_roles WHERE rolname = current_user')).rows[0];
  if (!role?.ok) {
    throw new UserError(
      'The Postgres user lacks the REPLICATION attribute. Run ALTER ROLE <user> REPLICATION; as a superuser, or connect as a user that has it.',
    );
  }
}

/**
 * The published tables (or those of `tableOids`) this user cannot read — an error naming each
 * table and the GRANT to run, before any slot exists or any copy begins — and those without a
 * replica identity, a warning with the fix (Postgres rejects their UPDATEs and DELETEs).
 */
export async function checkPublishedTables(client: pg.ClientBase, publication: string, tableOids?: number[]): Promise<void> {
  const tables = (
    await client.query(
      `SELECT quote_ident(n.nspname) AS schema, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name,
              has_schema_privilege(n.oid, 'USAGE') AS usable, has_table_privilege(c.oid, 'SELECT') AS readable,
              c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)) AS unidentified,
              CASE WHEN current_setting('server_version_num')::int < 180000 THEN ARRAY(
                SELECT quote_ident(a.attname) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attgenerated <> '' AND NOT a.attisdropped ORDER BY a.attnum
              ) ELSE '{}' END AS generated
         FROM pg_publication_tables p
         JOIN pg_namespace n ON n.nspname = p.schemaname
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
        WHERE p.pubname = $1 AND ($2::oid[] IS NULL OR c.oid = ANY($2::oid[]))
        ORDER BY 2`,
      [publication, tableOids ?? null],
    )
  ).rows as { schema: string; name: string; usable: boolean; readable: boolean; unidentified: boolean; generated: string[] }[];
  const unreadable = tables.filter((table) => !table.usable || !table.readable);
  if (unreadable.length > 0) {
    const grants = [
      ...new Set(unreadable.filter((table) => !table.usable).map((table) => `GRANT USAGE ON SCHEMA ${table.schema} TO CURRENT_USER;`)),
      ...unreadable.filter((table) => !table.readable).map((table) => `GRANT SELECT ON ${table.name} TO CURRENT_USER;`),
    ];
    const user = (await client.query('SELECT quote_ident(current_user) AS name')).rows[0].name as string;
    throw new UserError(
      `The Postgres user ${user} cannot read ${unreadable.length === 1 ? 'this published table' : 'these published tables'}: ${unreadable.map((table) => table.name).join(', ')}. As the tables' owner or a superuser, run: ${grants.map((grant) => grant.replace('CURRENT_USER', user)).join(' ')} Then start the producer again.`,
    );
  }
  const unidentified = tables.filter((table) => table.unidentified);
  if (unidentified.length > 0) {
    log.warn(
      { tables: unidentified.map((table) => table.name) },
      `these tables have no replica identity, so Postgres cannot publish their UPDATEs and DELETEs (it rejects them while they are in the publication); inserts and the copy replicate. Fix each with: ${unidentified.map((table) => `ALTER TABLE ${table.name} REPLICA IDENTITY FULL;`).join(' ')} (or add a primary key)`,
    );
  }
  // Before PostgreSQL 18, logical replication never carries generated columns: say so rather than drop them unseen.
  const generated = tables.flatMap((table) => table.generated.map((column) => `${table.name}.${column}`));
  if (generated.length > 0) {
    log.warn(
      { columns: generated },
      'these generated columns are not sent by Postgres (logical replication leaves them out before PostgreSQL 18), so the destinations do not have them: compute them there (a view over the table) if they are needed',
    );
  }
}

/** Redis answers and does not evict; returns its memory, as `INFO memory` gave it. */
async function checkRedis(redis: Redis): Promise<RedisMemoryReading> {
  let memory: string;
  try {
    memory = await Promise.race([redis.info('memory'), new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no answer within 5 s')), 5_000))]);
  } catch (error) {
    throw new UserError(`Cannot reach Redis (${errorMessage(error)}). Check --redis-url / REDIS_URL and that Redis is running.`);
  }
  // Evicting a queued batch or a mark loses it (the producer would find the gap and re-read
  // from the slot, over and over while memory stays short): only keys with a TTL may go.
  const policy = /^maxmemory_policy:(\S+)/m.exec(memory)?.[1];
  if (policy?.startsWith('allkeys-')) {
    throw new UserError(
      `Redis' maxmemory-policy is ${policy}: under memory pressure it evicts queued batches and marks. Set it to noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf), and leave room for --max-backlog-bytes.`,
    );
  }
  return parseRedisMemory(memory);
}
