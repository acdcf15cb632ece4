import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { errorMessage, redact, UserError } from '../../shared/errors.js';
import { qualifiedName, type Relation } from '../../shared/events.js';
import { NO_TIMEOUTS } from '../../shared/pgconn.js';
import {
  type Destination,
  PermanentError,
  RefusedError,
  type Step,
  type StoredTable,
  stateFromRow,
  statesOf,
  type TableListing,
  type TableState,
} from '../destination.js';
import { type Shape, Tables } from './tables.js';
import { ident } from './types.js';
import { writeChanges, writeMergedCopy } from './writes.js';

/** pg-replicate's own schema in the target database. */
export const STATE_SCHEMA = '_pg_replicate';

export interface PostgresOptions {
  url: string;
  /** Put before each source schema's name at the target (`--schema-prefix replica_`: public → replica_public). */
  schemaPrefix?: string;
}

/**
 * The Postgres destination: every table mirrored with the source's column types, the rows
 * moved set-wise (copy chunks straight into the table with COPY, a run of changes as COPY into a
 * staging table, then one DELETE … USING and one INSERT … SELECT), and each table's state in
 * _pg_replicate.tables, written in the same transaction as its rows. Applies run on a pool, one
 * connection each; a state row locked and compared at the start of each apply keeps several
 * consumer processes of one destination from applying a batch twice.
 */
export class PostgresDestination implements Destination {
  /** The states as last read, by table OID: the basis the runner planned the batch against. */
  private readonly stored = new Map<number, StoredTable<Shape>>();

  private constructor(
    private readonly pool: pg.Pool,
    private readonly targets: Tables,
  ) {}

  static async open(options: PostgresOptions): Promise<PostgresDestination> {
    // A role's or database's timeouts are off for these sessions: a large batch's statements
    // take as long as they take, and one cut short would be retried for ever.
    const pool = new pg.Pool({ connectionString: options.url, max: 4, application_name: 'pg-replicate destination', options: NO_TIMEOUTS });
    pool.on('error', () => {});
    try {
      await pool.query(`CREATE SCHEMA IF NOT EXISTS ${STATE_SCHEMA}`);
      await pool.query(
        `CREATE TABLE IF NOT EXISTS ${STATE_SCHEMA}.tables (
           table_oid bigint PRIMARY KEY, table_schema text, table_name text, columns jsonb, target_schema text, target_name text,
           copy_lsn numeric, copy_chunk bigint, copy_done boolean, applied_lsn numeric, applied_ordinal integer, quarantine jsonb)`,
      );
    } catch (error) {
      await pool.end().catch(() => {});
      throw new UserError(
        `Cannot prepare the target database (${redact(errorMessage(error))}). Check --url: the user must be able to create schemas and tables there.`,
      );
    }
    const destination = new PostgresDestination(pool, new Tables(options.schemaPrefix ?? '', STATE_SCHEMA));
    destination.remember((await pool.query(`SELECT * FROM ${STATE_SCHEMA}.tables`)).rows);
    return destination;
  }

  async tableStates(relations: Relation[]): Promise<Map<number, TableState>> {
    const oids = [...new Set(relations.map((relation) => relation.oid))];
    if (oids.length === 0) return new Map();
    const { rows } = await this.pool.query(`SELECT * FROM ${STATE_SCHEMA}.tables WHERE table_oid = ANY($1)`, [oids]);
    for (const oid of oids) this.stored.delete(oid);
    this.remember(rows);
    return statesOf(this.stored, oids);
  }

  private remember(rows: Record<string, unknown>[]): void {
    for (const row of rows) {
      const state = stateFromRow(row);
      const shape = { schema: String(row.table_schema), name: String(row.table_name), columns: row.columns as Relation['columns'] };
      this.stored.set(Number(row.table_oid), { state, shape: { ...shape, target: { schema: String(row.target_schema), name: String(row.target_name) } } });
    }
  }

  async apply(steps: Step[], states: Map<number, TableState>): Promise<void> {
    const client = await this.pool.connect();
    const shapes = new Map<number, Shape>();
    try {
      await client.query('BEGIN');
      await this.checkBasis(client, states);
      for (const step of steps) {
        for (const relation of step.kind === 'truncate' ? step.relations : [step.relation]) {
          const held = shapes.get(relation.oid) ?? this.stored.get(relation.oid)?.shape;
          shapes.set(relation.oid, await this.targets.ensure(client, relation, held));
        }
        if (step.kind === 'truncate') {
          for (const relation of step.relations) await client.query(`TRUNCATE ${this.targets.sql(shapes.get(relation.oid)!)}`);
          continue;
        }
        const target = this.targets.sql(shapes.get(step.relation.oid)!);
        // The column types the table was just ensured with (known already: no catalog query).
        const table = { sql: target, relation: step.relation, types: await this.targets.typesOf(client, step.relation) };
        if (step.kind === 'changes') await writeChanges(client, table, step.changes);
        else if (step.merge) await writeMergedCopy(client, table, step.copyText);
        else {
          if (step.replace) await client.query(`TRUNCATE ${target}`);
          const columns = step.relation.columns.map((column) => ident(column.name)).join(', ');
          await pipeline(step.copyText, client.query(copyFrom(`COPY ${target} (${columns}) FROM STDIN`)));
        }
      }
      for (const [oid, state] of states) {
        const shape = shapes.get(oid) ?? this.stored.get(oid)!.shape;
        await client.query(
          `INSERT INTO ${STATE_SCHEMA}.tables VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           ON CONFLICT (table_oid) DO UPDATE SET table_schema = $2, table_name = $3, columns = $4, target_schema = $5, target_name = $6,
             copy_lsn = $7, copy_chunk = $8, copy_done = $9, applied_lsn = $10, applied_ordinal = $11, quarantine = $12`,
          [
            oid,
            shape.schema,
            shape.name,
            JSON.stringify(shape.columns),
            shape.target.schema,
            shape.target.name,
            String(state.copyLsn),
            state.copyChunk,
            state.copyDone,
            String(state.applied.lsn),
            state.applied.ordinal,
            state.quarantine ? JSON.stringify(state.quarantine) : null,
          ],
        );
      }
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      for (const oid of states.keys()) this.stored.delete(oid);
      throw classify(error);
    } finally {
      client.release();
    }
    for (const [oid, state] of states) this.stored.set(oid, { state, shape: shapes.get(oid) ?? this.stored.get(oid)!.shape });
  }

  /**
   * The states this batch was planned against must still be the stored ones, locked until the
   * commit: otherwise another process of this destination applied it meanwhile (retried, then skipped).
   */
  private async checkBasis(client: pg.PoolClient, states: Map<number, TableState>): Promise<void> {
    const oids = [...states.keys()];
    if (oids.length === 0) return;
    const { rows } = await client.query(
      `SELECT table_oid, copy_lsn, copy_chunk, applied_lsn, applied_ordinal FROM ${STATE_SCHEMA}.tables WHERE table_oid = ANY($1) FOR UPDATE`,
      [oids],
    );
    const now = new Map(rows.map((row) => [Number(row.table_oid), `${row.copy_lsn}/${row.copy_chunk}/${row.applied_lsn}/${row.applied_ordinal}`]));
    for (const oid of oids) {
      const basis = this.stored.get(oid)?.state;
      const expected = basis && `${basis.copyLsn}/${basis.copyChunk}/${basis.applied.lsn}/${basis.applied.ordinal}`;
      if (now.get(oid) !== expected) throw new Error('stale table state (another consumer process applied this batch meanwhile): retried');
    }
  }

  tables(): TableListing[] {
    return [...this.stored.values()].map(({ shape, state }) => ({
      source: qualifiedName(shape),
      place: `${shape.target.schema}.${shape.target.name}`,
      quarantine: state.quarantine,
    }));
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

/**
 * Errors about what the batch holds (SQLSTATE classes 22 data exception, 23 integrity
 * constraint, 42 a definition the target refuses) come again on every retry: refusals. A refused
 * login or missing privileges need a human. The rest (connections, resources) pass.
 */
function classify(error: unknown): Error {
  const code = (error as { code?: string }).code ?? '';
  const message = redact(errorMessage(error));
  if (code === '28P01' || code === '28000' || code === '42501')
    return new PermanentError(`The target Postgres refuses: ${message}. Check the user and its privileges in --url.`);
  if (/^(22|23|42)/.test(code)) return new RefusedError(`The target Postgres refuses the rows: ${message}`);
  return error instanceof Error ? error : new Error(message);
}
