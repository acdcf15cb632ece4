import { appendFileSync, existsSync, readFileSync, renameSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { type Destination, joinPieces, parseCopyRows, qualifiedName, type Relation, type Step, type TableState, type Value } from 'pg-replicate';

type Saved = { length: number; tables: Record<string, { copyLsn: string; copyChunk: number; copyDone: boolean; lsn: string; ordinal: number }> };

/**
 * Appends every row copied and every change to a JSON-lines file, exactly once: after the lines,
 * the table states and the file's length are saved atomically (a rename), and on opening, lines
 * past the saved length — a batch whose states were never saved, applied again — are cut off.
 */
export class JsonLinesDestination implements Destination {
  private readonly saved: Saved;

  constructor(private readonly path: string) {
    this.saved = existsSync(`${path}.state`) ? JSON.parse(readFileSync(`${path}.state`, 'utf8')) : { length: 0, tables: {} };
    writeFileSync(path, '', { flag: 'a' });
    truncateSync(path, this.saved.length);
  }

  async tableStates(relations: Relation[]): Promise<Map<number, TableState>> {
    const states = new Map<number, TableState>();
    for (const { oid } of relations) {
      const table = this.saved.tables[oid];
      if (table) states.set(oid, { ...table, copyLsn: BigInt(table.copyLsn), applied: { lsn: BigInt(table.lsn), ordinal: table.ordinal } });
    }
    return states;
  }

  // Synchronous from start to end: applies of different partitions never interleave.
  async apply(steps: Step[], states: Map<number, TableState>): Promise<void> {
    const row = (relation: Relation, values?: Value[]) => values && Object.fromEntries(relation.columns.map((column, i) => [column.name, values[i]]));
    const record = (relation: Relation, op: string, values?: Value[]) => JSON.stringify({ table: qualifiedName(relation), op, row: row(relation, values) });
    const lines = steps.flatMap((step) => {
      if (step.kind === 'truncate') return step.relations.map((relation) => record(relation, 'truncate'));
      if (step.kind === 'copy') return parseCopyRows(joinPieces(step.copyText).toString()).map((row) => record(step.relation, 'copy', row));
      return step.changes.map((change) => record(step.relation, change.op, change.row ?? change.old));
    });
    if (lines.length > 0) appendFileSync(this.path, `${lines.join('\n')}\n`, { flush: true });
    for (const [oid, { copyLsn, copyChunk, copyDone, applied }] of states) {
      this.saved.tables[oid] = { copyLsn: String(copyLsn), copyChunk, copyDone, lsn: String(applied.lsn), ordinal: applied.ordinal };
    }
    this.saved.length = statSync(this.path).size;
    writeFileSync(`${this.path}.state.new`, JSON.stringify(this.saved), { flush: true });
    renameSync(`${this.path}.state.new`, `${this.path}.state`);
  }

  async close(): Promise<void> {}
}
