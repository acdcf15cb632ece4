import pg from 'pg';
import type { Redis } from 'ioredis';
import { UserError, errorMessage } from '../shared/errors.js';
import { log } from '../shared/log.js';

/** Connects to Postgres, turning the usual failures into errors that say what to do. */
export async function connectPostgres(pgUrl: string, applicationName: string, options?: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: pgUrl, application_name: applicationName, connectionTimeoutMillis: 10_000, ...(options ? { options } : {}) });
  try {
    await client.connect();
  } catch (error) {
    await client.end().catch(() => {});
    throw new UserError(
      `Cannot connect to Postgres (${errorMessage(error)}). Check --pg-url / PG_URL: host, port, database, user and password, and that the server accepts connections from here.`,
    );
  }
  return client;
}

/** Checks that the source can do logical replication of this publication. */
export async function checkSource(client: pg.Client, publication: string): Promise<void> {
  const walLevel = (await client.query('SHOW wal_level')).rows[0].wal_level;
  if (walLevel !== 'logical') {
    throw new UserError(
      `Postgres has wal_level=${walLevel}, but logical replication needs wal_level=logical. Set it (ALTER SYSTEM SET wal_level = logical, or -c wal_level=logical) and restart Postgres.`,
    );
  }
  const found = await client.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [publication]);
  if (found.rowCount === 0) {
    throw new UserError(
      `Publication "${publication}" does not exist in this database. Create it first, e.g. CREATE PUBLICATION ${publication} FOR TABLE my_table; (or FOR ALL TABLES), or pass the right --publication.`,
    );
  }
  const unidentified = (
    await client.query(
      `SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name, c.relreplident
         FROM pg_publication_tables p
         JOIN pg_namespace n ON n.nspname = p.schemaname
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
        WHERE p.pubname = $1
          AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))`,
      [publication],
    )
  ).rows;
  if (unidentified.length > 0) {
    log.warn(
      { tables: unidentified.map((table) => table.name) },
      `these tables have no replica identity, so Postgres cannot publish their UPDATEs and DELETEs (it rejects them while they are in the publication); inserts and the copy replicate. Fix each with: ${unidentified.map((table) => `ALTER TABLE ${table.name} REPLICA IDENTITY FULL;`).join(' ')} (or add a primary key)`,
    );
  }
  const role = (
    await client.query('SELECT rolreplication OR rolsuper AS ok FROM pg_roles WHERE rolname = current_user')
  ).rows[0];
  if (!role?.ok) {
    throw new UserError('The Postgres user lacks the REPLICATION attribute. Run ALTER ROLE <user> REPLICATION; as a superuser, or connect as a user that has it.');
  }
}

export async function checkRedis(redis: Redis): Promise<void> {
  try {
    await Promise.race([
      redis.ping(),
      new Promise((_, reject) => setTimeout(() => reject(new Error('no answer within 5 s')), 5_000)),
    ]);
  } catch (error) {
    throw new UserError(`Cannot reach Redis (${errorMessage(error)}). Check --redis-url / REDIS_URL and that Redis is running.`);
  }
}
