import type pg from 'pg';
import type { Column, Relation, ReplicaIdentity } from '../shared/events.js';
import { quoteIdent } from './replication.js';

const REPLICA_IDENTITIES: Record<string, ReplicaIdentity> = { d: 'default', n: 'nothing', f: 'full', i: 'index' };

export interface TableName {
  schema: string;
  name: string;
}

export interface TableName {
  schema: string;
  name: string;
}

/** A published table, with the publication's column list and row filter (Postgres 15+), which the copy must honour as pgoutput does. */
export interface PublishedTable extends TableName {
  columns: string[] | null;
  rowFilter: string | null;
}

export async function publicationTables(client: pg.ClientBase, publication: string): Promise<PublishedTable[]> {
  const version = Number((await client.query('SHOW server_version_num')).rows[0].server_version_num);
  const extra = version >= 150000 ? 'attnames::text[] AS columns, rowfilter AS "rowFilter"' : 'NULL AS columns, NULL AS "rowFilter"';
  const result = await client.query(
    `SELECT schemaname AS schema, tablename AS name, ${extra} FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2`,
    [publication],
  );
  return result.rows;
}

/**
 * A table as pgoutput would describe it: the columns it publishes (not dropped, not generated),
 * and which of them identify a row for UPDATE and DELETE.
 */
export async function describeTable(client: pg.ClientBase, table: PublishedTable): Promise<Relation> {
  const result = await client.query(
    `SELECT c.oid, c.relreplident,
            a.attname, a.atttypid, a.atttypmod,
            CASE c.relreplident
              WHEN 'f' THEN true
              WHEN 'n' THEN false
              WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident AND a.attnum = ANY (i.indkey))
              ELSE EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY (i.indkey))
            END AS is_key
       FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
      WHERE n.nspname = $1 AND c.relname = $2
      ORDER BY a.attnum`,
    [table.schema, table.name],
  );
  if (result.rows.length === 0) throw new Error(`table ${table.schema}.${table.name} has no columns or does not exist`);
  const published = table.columns ? new Set(table.columns) : undefined;
  const columns: Column[] = result.rows.filter((row) => !published || published.has(row.attname)).map((row) => ({
    name: row.attname,
    typeOid: Number(row.atttypid),
    typeModifier: Number(row.atttypmod),
    isKey: row.is_key,
  }));
  return {
    oid: Number(result.rows[0].oid),
    schema: table.schema,
    name: table.name,
    replicaIdentity: REPLICA_IDENTITIES[result.rows[0].relreplident] ?? 'default',
    columns,
  };
}

/** Tables whose UPDATEs and DELETEs Postgres cannot identify, and what to run to fix each one. */
export function tablesWithoutIdentity(relations: Relation[]): string[] {
  return relations
    .filter((relation) => !relation.columns.some((column) => column.isKey))
    .map((relation) => {
      const name = `${quoteIdent(relation.schema)}.${quoteIdent(relation.name)}`;
      return `${relation.schema}.${relation.name} (fix: ALTER TABLE ${name} REPLICA IDENTITY FULL, or add a primary key)`;
    });
}
