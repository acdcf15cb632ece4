import type pg from 'pg';
import type { Column, Relation, ReplicaIdentity } from '../shared/events.js';
import { type Lsn, parseLsn } from '../shared/lsn.js';
import { PgType } from '../shared/pgtypes.js';

const REPLICA_IDENTITIES: Record<string, ReplicaIdentity> = { d: 'default', n: 'nothing', f: 'full', i: 'index' };

export interface TableName {
  schema: string;
  name: string;
}

/** A published table, with the publication's column list and row filter (Postgres 15+), which the copy must honour as pgoutput does. */
export interface PublishedTable extends TableName {
  oid: number;
  /** pg_class.relkind: 'r' for a plain table (only those have CTIDs to cut a copy by), 'p' for a partitioned one. */
  kind: string;
  columns: string[] | null;
  rowFilter: string | null;
}

export async function publicationTables(client: pg.ClientBase, publication: string): Promise<PublishedTable[]> {
  const version = Number((await client.query('SHOW server_version_num')).rows[0].server_version_num);
  const extra = version >= 150000 ? 'p.attnames::text[] AS columns, p.rowfilter AS "rowFilter"' : 'NULL AS columns, NULL AS "rowFilter"';
  const result = await client.query(
    `SELECT p.schemaname AS schema, p.tablename AS name, c.oid::int8 AS oid, c.relkind AS kind, ${extra}
       FROM pg_publication_tables p
       JOIN pg_namespace n ON n.nspname = p.schemaname
       JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
      WHERE p.pubname = $1 ORDER BY 1, 2`,
    [publication],
  );
  return result.rows.map((row) => ({ ...row, oid: Number(row.oid) }));
}

/**
 * Each published table's membership of the publication now: the catalog rows that put it
 * there (its own or an ancestor's pg_publication_rel row, its schema's
 * pg_publication_namespace row), or 'all'. A table dropped from the publication and added
 * again gets new rows: Postgres sends none of its changes in between, so its destinations
 * need a fresh copy.
 */
export async function publicationMemberships(client: pg.ClientBase, publication: string): Promise<Map<number, string>> {
  const version = Number((await client.query('SHOW server_version_num')).rows[0].server_version_num);
  const tree = 'a.oid = c.oid OR a.oid IN (SELECT relid FROM pg_partition_ancestors(c.oid))';
  const bySchema =
    version >= 150000
      ? `(SELECT string_agg('n' || pn.oid::text, ',' ORDER BY pn.oid) FROM pg_publication_namespace pn
            WHERE pn.pnpubid = pub.oid AND pn.pnnspid IN (SELECT a.relnamespace FROM pg_class a WHERE ${tree}))`
      : 'NULL';
  const result = await client.query(
    `SELECT c.oid::int8 AS oid, CASE WHEN pub.puballtables THEN 'all' ELSE concat_ws(',',
              (SELECT string_agg('r' || pr.oid::text, ',' ORDER BY pr.oid) FROM pg_publication_rel pr
                WHERE pr.prpubid = pub.oid AND pr.prrelid IN (SELECT a.oid FROM pg_class a WHERE ${tree})),
              ${bySchema}) END AS membership
       FROM pg_publication_tables p
       JOIN pg_publication pub ON pub.pubname = p.pubname
       JOIN pg_namespace n ON n.nspname = p.schemaname
       JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
      WHERE p.pubname = $1`,
    [publication],
  );
  return new Map(result.rows.map((row) => [Number(row.oid), row.membership as string]));
}

/**
 * A table no longer published: its name (absent when it was dropped) and, when its rows are
 * published under another table of its partition tree now (publish_via_partition_root was
 * changed), which: its root, or its partitions.
 */
export interface DepartedTable {
  oid: number;
  name?: string;
  publishedAs?: { root: string } | { partitions: string[] };
}

/** `published`: the OIDs the publication holds now. */
export async function departedTables(client: pg.ClientBase, oids: number[], published: number[]): Promise<DepartedTable[]> {
  const { rows } = await client.query(
    `SELECT c.oid::int8 AS oid, c.oid::regclass::text AS name,
            CASE WHEN c.relispartition AND pg_partition_root(c.oid) = ANY($2::oid[]) THEN pg_partition_root(c.oid)::regclass::text END AS root,
            CASE WHEN c.relkind = 'p' THEN (SELECT array_agg(t.relid::regclass::text ORDER BY 1) FROM pg_partition_tree(c.oid) t
                                             WHERE t.relid <> c.oid AND t.relid = ANY($2::oid[])) END AS partitions
       FROM pg_class c WHERE c.oid = ANY($1::oid[])`,
    [oids, published],
  );
  const found = new Map(rows.map((row) => [Number(row.oid), row]));
  return oids.map((oid) => {
    const row = found.get(oid);
    if (!row) return { oid };
    const publishedAs = row.root ? { root: row.root as string } : row.partitions ? { partitions: row.partitions as string[] } : undefined;
    return { oid, name: row.name, ...(publishedAs ? { publishedAs } : {}) };
  });
}

/** What TableSync asks Postgres about the publication. */
export interface PublicationReader {
  memberships(): Promise<Map<number, string>>;
  departed(oids: number[], published: number[]): Promise<DepartedTable[]>;
}

interface TypeRow {
  typtype: string;
  typbasetype: number;
  typtypmod: number;
  typelem: number;
  typcategory: string;
}

/**
 * What pgoutput does not say about a relation, read from the catalog: each column's number
 * (to tell a rename from a drop and an add), its built-in base type (domains, enums), array
 * element type and dimensions, and the value older rows have for a column added with a default.
 */
export class Catalog {
  private readonly types = new Map<number, TypeRow>();

  constructor(private readonly client: pg.ClientBase) {}

  /**
   * The relation as pgoutput described it, plus what the catalog adds. The catalog is read now,
   * possibly after later DDL: a column renamed since is found through the previous description
   * of the relation (by name, then by position and type).
   */
  async enrich(relation: Relation, previous?: Relation): Promise<Relation> {
    const result = await this.client.query(
      `SELECT a.attname, a.attnum, a.attndims, a.atttypid,
              CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END AS missing
         FROM pg_attribute a
        WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
        ORDER BY a.attnum`,
      [relation.oid],
    );
    const attributes = new Map(result.rows.map((row) => [row.attname as string, row]));
    const columns: Column[] = [];
    const names = new Set(relation.columns.map((column) => column.name));
    // Without an earlier description of this table in the stream (the first one after a
    // restart), the catalog as it is now stands in: a column renamed since keeps its position.
    const reference =
      previous?.columns ?? result.rows.map((row) => ({ name: row.attname as string, attnum: Number(row.attnum), typeOid: Number(row.atttypid) }));
    for (const [index, column] of relation.columns.entries()) {
      const attribute = attributes.get(column.name);
      const enriched: Column = { ...column };
      if (attribute) {
        enriched.attnum = Number(attribute.attnum);
        if (attribute.missing !== null) enriched.missingValue = attribute.missing;
      } else {
        const atPosition = reference[index];
        const before =
          reference.find((candidate) => candidate.name === column.name) ??
          (atPosition && !names.has(atPosition.name) && atPosition.typeOid === column.typeOid ? atPosition : undefined);
        if (before?.attnum !== undefined) enriched.attnum = before.attnum;
      }
      const { base, element, modifier } = await this.resolve(column.typeOid);
      if (base !== column.typeOid) enriched.baseTypeOid = base;
      // A domain column carries no modifier of its own: numeric(10,2) is on the domain.
      if (column.typeModifier === -1 && modifier !== undefined && modifier !== -1) enriched.typeModifier = modifier;
      if (element !== undefined) {
        enriched.elementTypeOid = element;
        enriched.dimensions = Math.max(1, Number(attribute?.attndims ?? 1));
      }
      columns.push(enriched);
    }
    return { ...relation, columns };
  }

  /** A type's built-in base (through domains; text for enums) and, for arrays, its element's. */
  private async resolve(typeOid: number, depth = 0): Promise<{ base: number; element?: number; modifier?: number }> {
    const type = await this.type(typeOid);
    if (!type || depth > 16) return { base: typeOid };
    if (type.typtype === 'd') {
      const resolved = await this.resolve(type.typbasetype, depth + 1);
      return { ...resolved, modifier: type.typtypmod !== -1 ? type.typtypmod : resolved.modifier };
    }
    if (type.typtype === 'e') return { base: PgType.text };
    if (type.typcategory === 'A' && type.typelem !== 0) {
      const element = await this.resolve(type.typelem, depth + 1);
      return { base: typeOid, element: element.base };
    }
    return { base: typeOid };
  }

  private async type(typeOid: number): Promise<TypeRow | undefined> {
    if (!this.types.has(typeOid)) {
      // Built-in and user types together are a few hundred rows: load them all, again on a miss.
      const result = await this.client.query('SELECT oid, typtype, typbasetype, typtypmod, typelem, typcategory FROM pg_type');
      for (const row of result.rows) {
        this.types.set(Number(row.oid), {
          typtype: row.typtype,
          typbasetype: Number(row.typbasetype),
          typtypmod: Number(row.typtypmod),
          typelem: Number(row.typelem),
          typcategory: row.typcategory,
        });
      }
    }
    return this.types.get(typeOid);
  }
}

/**
 * pg_stats' n_distinct as a share of the rows: below zero it is one already (negated), above zero
 * a count of values; zero, or no statistics at all (never analyzed), says nothing.
 */
function distinctShare(nDistinct: number | null, rows: number): number | undefined {
  if (nDistinct === null || nDistinct === 0) return undefined;
  if (nDistinct < 0) return Math.round(-nDistinct * 100) / 100;
  return rows > 0 ? Math.round(Math.min(1, nDistinct / rows) * 100) / 100 : undefined;
}

/**
 * A table as pgoutput would describe it: the columns it publishes (not dropped, not generated),
 * and which of them identify a row for UPDATE and DELETE.
 */
export async function describeTable(client: pg.ClientBase, table: PublishedTable, catalog: Catalog): Promise<Relation> {
  const result = await client.query(
    `SELECT c.oid, c.relreplident,
            a.attname, a.atttypid, a.atttypmod,
            CASE c.relreplident
              WHEN 'f' THEN true
              WHEN 'n' THEN false
              WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident AND a.attnum = ANY (i.indkey))
              ELSE EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY (i.indkey))
            END AS is_key,
            (SELECT s.n_distinct FROM pg_stats s
              WHERE s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = a.attname
              ORDER BY s.inherited LIMIT 1) AS n_distinct,
            c.reltuples
       FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
      WHERE n.nspname = $1 AND c.relname = $2
      ORDER BY a.attnum`,
    [table.schema, table.name],
  );
  if (result.rows.length === 0) throw new Error(`table ${table.schema}.${table.name} has no columns or does not exist`);
  const published = table.columns ? new Set(table.columns) : undefined;
  const columns: Column[] = result.rows
    .filter((row) => !published || published.has(row.attname))
    .map((row) => {
      const column: Column = { name: row.attname, typeOid: Number(row.atttypid), typeModifier: Number(row.atttypmod), isKey: row.is_key };
      const share = distinctShare(row.n_distinct, row.reltuples);
      if (share !== undefined) column.distinctShare = share;
      return column;
    });
  const relation: Relation = {
    oid: Number(result.rows[0].oid),
    schema: table.schema,
    name: table.name,
    replicaIdentity: REPLICA_IDENTITIES[result.rows[0].relreplident] ?? 'default',
    columns,
  };
  return catalog.enrich(relation);
}

/** The server's current WAL position (on a standby, what it has replayed). */
export async function currentWalLsn(client: pg.ClientBase): Promise<Lsn> {
  const row = (await client.query('SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text AS lsn')).rows[0];
  return parseLsn(row.lsn);
}
