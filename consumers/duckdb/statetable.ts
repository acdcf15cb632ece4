import type { DuckDBConnection } from '@duckdb/node-api';
import type { StoredTable, TableShape, TableState } from '../destination.js';
import { STATE_SCHEMA, type TargetName } from './places.js';

/** A table's shape as the source had it, and where it is in DuckDB (see places.ts). */
export type Shape = TableShape & { target: TargetName };

export const ident = (name: string) => `"${name.replace(/"/g, '""')}"`;
export const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;

/**
 * pg-replicate's record of each source table in the DuckDB file, keyed by the table's OID: its
 * copy progress, highest applied version, quarantine, source shape and place. It is written
 * in the same transaction as the table's rows.
 */
export class StateTable {
  constructor(private readonly database: string) {}

  private get name(): string {
    return `${ident(this.database)}.${STATE_SCHEMA}.tables`;
  }

  /** Creates it, or adds the columns a file written by an earlier version lacks. */
  async ensure(connection: DuckDBConnection): Promise<void> {
    await connection.run(`CREATE SCHEMA IF NOT EXISTS ${ident(this.database)}.${STATE_SCHEMA}`);
    await connection.run(
      `CREATE TABLE IF NOT EXISTS ${this.name} (
         table_oid UBIGINT PRIMARY KEY, table_schema VARCHAR, table_name VARCHAR, columns JSON,
         copy_lsn UBIGINT, copy_chunk BIGINT, copy_done BOOLEAN, applied_lsn UBIGINT, applied_ordinal INTEGER)`,
    );
    // Where each source table is in DuckDB (files written before these columns: where its source name says).
    await connection.run(`ALTER TABLE ${this.name} ADD COLUMN IF NOT EXISTS target_schema VARCHAR`);
    await connection.run(`ALTER TABLE ${this.name} ADD COLUMN IF NOT EXISTS target_name VARCHAR`);
    await connection.run(`ALTER TABLE ${this.name} ADD COLUMN IF NOT EXISTS quarantine JSON`);
  }

  async read(connection: DuckDBConnection): Promise<Map<number, StoredTable<Shape>>> {
    const reader = await connection.runAndReadAll(
      `SELECT table_oid, table_schema, table_name, CAST(columns AS VARCHAR), copy_lsn, copy_chunk, copy_done, applied_lsn, applied_ordinal,
              coalesce(target_schema, table_schema), coalesce(target_name, table_name), CAST(quarantine AS VARCHAR) FROM ${this.name}`,
    );
    const tables = new Map<number, StoredTable<Shape>>();
    for (const [
      oid,
      schema,
      name,
      columns,
      copyLsn,
      copyChunk,
      copyDone,
      appliedLsn,
      appliedOrdinal,
      targetSchema,
      targetName,
      quarantine,
    ] of reader.getRows()) {
      const state: TableState = {
        copyLsn: BigInt(copyLsn as bigint),
        copyChunk: Number(copyChunk),
        copyDone: Boolean(copyDone),
        applied: { lsn: BigInt(appliedLsn as bigint), ordinal: Number(appliedOrdinal) },
      };
      if (quarantine !== null) state.quarantine = JSON.parse(String(quarantine));
      tables.set(Number(oid), {
        shape: {
          schema: String(schema),
          name: String(name),
          columns: JSON.parse(String(columns)),
          target: { schema: String(targetSchema), name: String(targetName) },
        },
        state,
      });
    }
    return tables;
  }

  async write(connection: DuckDBConnection, oid: number, shape: Shape, state: TableState): Promise<void> {
    const quarantine = state.quarantine ? literal(JSON.stringify(state.quarantine)) : 'NULL';
    await connection.run(
      `INSERT OR REPLACE INTO ${this.name} (table_oid, table_schema, table_name, columns, copy_lsn, copy_chunk, copy_done, applied_lsn, applied_ordinal, target_schema, target_name, quarantine)
       VALUES (${oid}, ${literal(shape.schema)}, ${literal(shape.name)}, ${literal(JSON.stringify(shape.columns))},
         ${state.copyLsn}, ${state.copyChunk}, ${state.copyDone}, ${state.applied.lsn}, ${state.applied.ordinal}, ${literal(shape.target.schema)}, ${literal(shape.target.name)}, ${quarantine})`,
    );
  }

  async delete(connection: DuckDBConnection, oid: number): Promise<void> {
    await connection.run(`DELETE FROM ${this.name} WHERE table_oid = ${oid}`);
  }
}
