import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage, UserError } from '../../shared/errors.js';
import { qualifiedName, type Relation } from '../../shared/events.js';
import { log } from '../../shared/log.js';
import { type Destination, PermanentError, type Step, type StoredTable, stateFromRow, statesOf, type TableListing, type TableState } from '../destination.js';
import { withDistinctColumnNamesIn } from '../names.js';
import { ident, literal, Script, type Shape, segmentsOf } from './script.js';
import { bigQueryTableName } from './types.js';
import { type BigQueryOptions, Warehouse } from './warehouse.js';

const STATE_TABLE = '_pg_replicate_tables';
const STAGE_PREFIX = '_pg_replicate_stage_';
const STATE_COLUMNS =
  'table_oid, source_schema, source_table, table_name, columns, CAST(copy_lsn AS STRING) AS copy_lsn, copy_chunk, copy_done, CAST(applied_lsn AS STRING) AS applied_lsn, applied_ordinal, quarantine';
/** The marker of the stale-state check, which the warehouse turns into a plain retry. */
const STALE = 'pg-replicate: stale table state (another consumer process applied this batch meanwhile)';

/**
 * The BigQuery destination. Each batch is applied with one load job and one script: the rows go
 * as JSON lines into a staging table of STRING columns; the script then makes the schema
 * changes (idempotent DDL), and in one multi-statement transaction checks that the table states
 * are still those the batch was planned against, applies every table's changes set-wise
 * (delete every key touched, insert the final images, typed by CAST), and writes the new table
 * states. The states live in the dataset beside the tables, so any consumer process with this
 * destination's name can take over a partition, and a re-delivered batch is skipped.
 */
export class BigQueryDestination implements Destination {
  /** The states as last read, by table OID: the basis the runner planned the batch against. */
  private readonly stored = new Map<number, StoredTable<Shape>>();

  private constructor(private readonly warehouse: Warehouse) {}

  /**
   * Opens the dataset and the state table. A refusal a human must fix (credentials, access)
   * ends the consumer (exit 2); a BigQuery that is unavailable or rate-limits is waited for,
   * with backoff, as during a run.
   */
  static async open(options: BigQueryOptions): Promise<BigQueryDestination> {
    const warehouse = new Warehouse(options);
    for (let attempt = 1; ; attempt++) {
      try {
        await warehouse.ensureDataset();
        await warehouse.query(
          `CREATE TABLE IF NOT EXISTS ${ident(`${options.dataset}.${STATE_TABLE}`)} (
             table_oid INT64 NOT NULL, source_schema STRING, source_table STRING, table_name STRING, columns STRING,
             copy_lsn INT64, copy_chunk INT64, copy_done BOOL, applied_lsn INT64, applied_ordinal INT64, updated_at TIMESTAMP,
             PRIMARY KEY (table_oid) NOT ENFORCED)`,
        );
        await warehouse.query(`ALTER TABLE ${ident(`${options.dataset}.${STATE_TABLE}`)} ADD COLUMN IF NOT EXISTS quarantine STRING`);
        const destination = new BigQueryDestination(warehouse);
        // Every table's state, for status (each batch reads its own tables' states afresh).
        destination.remember(await warehouse.query(`SELECT ${STATE_COLUMNS} FROM ${destination.table(STATE_TABLE)}`));
        if (attempt > 1) log.info({ attempts: attempt }, 'BigQuery answers again');
        return destination;
      } catch (error) {
        if (error instanceof PermanentError) throw new UserError(error.message);
        const delay = Math.min(30_000, 500 * 2 ** Math.min(attempt, 6));
        (attempt === 1 ? log.warn : log.debug).call(
          log,
          { err: errorMessage(error), retryInMs: delay },
          'BigQuery is not available yet: retrying with backoff',
        );
        await sleep(delay);
      }
    }
  }

  tables(): TableListing[] {
    return [...this.stored.values()].map(({ shape, state }) => ({ source: qualifiedName(shape), place: shape.table, quarantine: state.quarantine }));
  }

  private get dataset(): string {
    return this.warehouse.options.dataset;
  }

  private table(name: string): string {
    return ident(`${this.dataset}.${name}`);
  }

  async tableStates(relations: Relation[]): Promise<Map<number, TableState>> {
    const oids = [...new Set(relations.map((relation) => relation.oid))];
    if (oids.length === 0) return new Map();
    const rows = await this.warehouse.query(`SELECT ${STATE_COLUMNS} FROM ${this.table(STATE_TABLE)} WHERE table_oid IN (${oids.join(', ')})`);
    for (const oid of oids) this.stored.delete(oid);
    this.remember(rows);
    return statesOf(this.stored, oids);
  }

  /** Keeps state rows as read: the basis the next batch of their tables is planned on. */
  private remember(rows: Record<string, unknown>[]): void {
    for (const row of rows) {
      const state = stateFromRow(row);
      this.stored.set(Number(row.table_oid), {
        state,
        shape: { table: String(row.table_name), schema: String(row.source_schema), name: String(row.source_table), columns: JSON.parse(String(row.columns)) },
      });
    }
  }

  async apply(given: Step[], states: Map<number, TableState>): Promise<void> {
    // BigQuery's column names ignore case: "ID" beside "id" are named apart first.
    const steps = withDistinctColumnNamesIn(given);
    const shapes = finalShapes(steps);
    for (const oid of states.keys()) {
      const stored = this.stored.get(oid)?.shape;
      if (!shapes.has(oid) && stored) shapes.set(oid, stored);
    }
    const stage = `${STAGE_PREFIX}${randomUUID().replace(/-/g, '')}`;
    const script = new Script(this.dataset, stage, shapes);
    // A table a fresh copy replaces is created again in its new shape: no type change to make in place.
    const recreated = new Set(steps.flatMap((step) => (step.kind === 'copy' && step.replace && !step.merge ? [step.relation.oid] : [])));
    for (const [oid, shape] of shapes)
      script.schemaChanges(recreated.has(oid) ? undefined : this.stored.get(oid)?.shape, shape, this.stored.get(oid)?.shape.table);
    script.begin(this.staleCheck(states));
    for (const segment of segmentsOf(steps)) script.segment(segment);
    script.writeStates(states, this.table(STATE_TABLE), shapes);
    try {
      if (script.stageRows.length > 0) await this.warehouse.loadStaging(stage, script.stageFields(), script.stageRows);
      await this.warehouse.query(script.text());
    } catch (error) {
      if (script.stageRows.length > 0) await this.warehouse.dropTable(stage);
      for (const oid of states.keys()) this.stored.delete(oid);
      throw error;
    }
    for (const [oid, state] of states) this.stored.set(oid, { state, shape: shapes.get(oid)! });
  }

  /**
   * The states this batch was planned against must still be the stored ones: otherwise another
   * process (one thought dead, whose job BigQuery still ran) applied it meanwhile.
   */
  private staleCheck(states: Map<number, TableState>): string {
    const known: string[] = [];
    const unknown: number[] = [];
    for (const oid of states.keys()) {
      const basis = this.stored.get(oid)?.state;
      if (!basis) unknown.push(oid);
      else {
        known.push(
          `(table_oid = ${oid} AND copy_lsn = ${basis.copyLsn} AND copy_chunk = ${basis.copyChunk} AND copy_done = ${basis.copyDone} AND applied_lsn = ${basis.applied.lsn} AND applied_ordinal = ${basis.applied.ordinal})`,
        );
      }
    }
    const conditions = [
      ...(known.length > 0 ? [`(SELECT COUNT(*) FROM ${this.table(STATE_TABLE)} WHERE ${known.join(' OR ')}) = ${known.length}`] : []),
      ...(unknown.length > 0 ? [`(SELECT COUNT(*) FROM ${this.table(STATE_TABLE)} WHERE table_oid IN (${unknown.join(', ')})) = 0`] : []),
    ];
    return conditions.length > 0 ? `ASSERT ${conditions.join(' AND ')} AS ${literal(STALE)}` : '';
  }

  async close(): Promise<void> {}
}

/** Each table's shape after the batch: the last relation the batch carries for it. */
function finalShapes(steps: Step[]): Map<number, Shape> {
  const shapes = new Map<number, Shape>();
  for (const step of steps) {
    for (const relation of step.kind === 'truncate' ? step.relations : [step.relation]) {
      shapes.set(relation.oid, {
        table: bigQueryTableName(relation),
        schema: relation.schema,
        name: relation.name,
        columns: relation.columns,
        replicaIdentity: relation.replicaIdentity,
      });
    }
  }
  return shapes;
}
