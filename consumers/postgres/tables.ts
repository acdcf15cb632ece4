import type pg from 'pg';
import type { Relation } from '../../shared/events.js';
import type { TableShape } from '../destination.js';
import { columnChanges, keyColumnsOf } from '../schema.js';
import { ident, targetType } from './types.js';

/** A table's shape as the source had it, and where it is at the target. */
export type Shape = TableShape & { target: { schema: string; name: string } };

/**
 * The tables at the target: where each source table goes (its schema behind the prefix), the
 * column types (format_type of the source's type, asked of the target once per type), and the
 * DDL that follows the source's changes of shape, inside the batch's transaction.
 */
export class Tables {
  private readonly typeNames = new Map<string, string>();

  constructor(
    private readonly schemaPrefix: string,
    private readonly stateSchema: string,
  ) {}

  sql(shape: Shape): string {
    return `${ident(shape.target.schema)}.${ident(shape.target.name)}`;
  }

  /** Creates the table on first sight of its OID, or takes it from the shape held to the relation's. */
  async ensure(client: pg.PoolClient, relation: Relation, held: Shape | undefined): Promise<Shape> {
    const schema = `${this.schemaPrefix}${relation.schema}`;
    const wanted: Shape = {
      schema: relation.schema,
      name: relation.name,
      columns: relation.columns,
      // pg-replicate's own schema is never a source table's place.
      target: { schema: schema === this.stateSchema ? `${schema}__source` : schema, name: relation.name },
    };
    if (held && sameShape(held, wanted) && (await this.typesOf(client, held)).join() === (await this.typesOf(client, wanted)).join()) return held;
    const target = this.sql(wanted);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${ident(wanted.target.schema)}`);
    if (!held) {
      const types = await this.typesOf(client, wanted);
      await client.query(`DROP TABLE IF EXISTS ${target}`);
      await client.query(`CREATE TABLE ${target} (${relation.columns.map((column, index) => `${ident(column.name)} ${types[index]}`).join(', ')})`);
      // An index, not a constraint, on the key: the source keeps it unique, and a key that changes later needs no DDL.
      const keys = keyColumnsOf(relation).map((index) => ident(relation.columns[index].name));
      if (keys.length > 0 && relation.replicaIdentity !== 'full') await client.query(`CREATE INDEX ON ${target} (${keys.join(', ')})`);
      return wanted;
    }
    if (held.target.schema !== wanted.target.schema) await client.query(`ALTER TABLE ${this.sql(held)} SET SCHEMA ${ident(wanted.target.schema)}`);
    if (held.target.name !== wanted.target.name) {
      await client.query(`ALTER TABLE ${ident(wanted.target.schema)}.${ident(held.target.name)} RENAME TO ${ident(wanted.target.name)}`);
    }
    const typeOf = new Map<object, string>();
    for (const [index, type] of (await this.typesOf(client, held)).entries()) typeOf.set(held.columns[index], type);
    for (const [index, type] of (await this.typesOf(client, wanted)).entries()) typeOf.set(wanted.columns[index], type);
    for (const change of columnChanges(held.columns, relation.columns, (a, b) => typeOf.get(a) === typeOf.get(b))) {
      if (change.kind === 'drop') await client.query(`ALTER TABLE ${target} DROP COLUMN ${ident(change.column.name)}`);
      else if (change.kind === 'rename') await client.query(`ALTER TABLE ${target} RENAME COLUMN ${ident(change.from.name)} TO ${ident(change.to.name)}`);
      else if (change.kind === 'retype') {
        const [name, type] = [ident(change.to.name), typeOf.get(change.to)];
        // Through text: Postgres converted every live value already, and its text form reads back in the new type.
        await client.query(`ALTER TABLE ${target} ALTER COLUMN ${name} TYPE ${type} USING ${name}::text::${type}`);
      } else {
        const { column } = change;
        const type = typeOf.get(column);
        // Rows older than a column added with a default hold that default (Postgres did not rewrite them).
        const fill = column.missingValue !== undefined ? ` DEFAULT '${column.missingValue.replace(/'/g, "''")}'::${type}` : '';
        await client.query(`ALTER TABLE ${target} ADD COLUMN ${ident(column.name)} ${type}${fill}`);
        if (fill) await client.query(`ALTER TABLE ${target} ALTER COLUMN ${ident(column.name)} DROP DEFAULT`);
      }
    }
    return wanted;
  }

  /** The columns' types at the target, as SQL. */
  async typesOf(client: pg.PoolClient, shape: TableShape): Promise<string[]> {
    return Promise.all(
      shape.columns.map(async (column) => {
        const { oid, typmod, array } = targetType(column);
        const key = `${oid}:${typmod}`;
        let name = this.typeNames.get(key);
        if (name === undefined) {
          name = String((await client.query('SELECT format_type($1::oid, $2::int) AS name', [oid, typmod])).rows[0].name);
          this.typeNames.set(key, name);
        }
        return array ? `${name}${'[]'.repeat(column.dimensions ?? 1)}` : name;
      }),
    );
  }
}

function sameShape(a: Shape, b: Shape): boolean {
  return (
    a.target.schema === b.target.schema &&
    a.target.name === b.target.name &&
    a.columns.length === b.columns.length &&
    a.columns.every((column, index) => column.name === b.columns[index].name)
  );
}
