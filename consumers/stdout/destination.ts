import type { Writable } from 'node:stream';
import type { Redis } from 'ioredis';
import { joinPieces } from '../../shared/chunks.js';
import { parseCopyRows } from '../../shared/csv.js';
import { qualifiedName, type Relation, UNCHANGED, type Value } from '../../shared/events.js';
import { keys } from '../../shared/keys.js';
import { formatLsn } from '../../shared/lsn.js';
import { jsonFragment } from '../../shared/pgtypes.js';
import type { Destination, Step, TableState } from '../destination.js';

/**
 * The stdout destination: one JSON line per change. A terminal has no transactions, so table
 * states live in Redis and are written after the lines are flushed: re-delivery is skipped,
 * but a crash between the two can print a batch twice (at least once, never lost).
 */
export class StdoutDestination implements Destination {
  constructor(
    private readonly redis: Redis,
    private readonly pipeline: string,
    private readonly name: string,
    private readonly out: Writable = process.stdout,
  ) {}

  async tableStates(relations: Relation[]): Promise<Map<number, TableState>> {
    const states = new Map<number, TableState>();
    if (relations.length === 0) return states;
    const stored = await this.redis.hmget(keys.tableStates(this.pipeline, this.name), ...relations.map((relation) => String(relation.oid)));
    relations.forEach(({ oid }, index) => {
      const text = stored[index];
      if (!text) return;
      const raw = JSON.parse(text);
      states.set(oid, {
        copyLsn: BigInt(raw.copyLsn),
        copyChunk: raw.copyChunk,
        copyDone: raw.copyDone,
        applied: { lsn: BigInt(raw.appliedLsn), ordinal: raw.appliedOrdinal },
        ...(raw.quarantine ? { quarantine: raw.quarantine } : {}),
      });
    });
    return states;
  }

  async apply(steps: Step[], states: Map<number, TableState>): Promise<void> {
    const lines: string[] = [];
    for (const step of steps) {
      if (step.kind === 'copy') {
        const lsn = formatLsn(states.get(step.relation.oid)!.copyLsn);
        for (const row of parseCopyRows(joinPieces(step.copyText).toString())) lines.push(line(step.relation, 'insert', lsn, { row }, true));
      } else if (step.kind === 'truncate') {
        for (const relation of step.relations) lines.push(line(relation, 'truncate', formatLsn(step.version.lsn)));
      } else {
        for (const change of step.changes) {
          lines.push(line(step.relation, change.op, formatLsn(change.version.lsn), { row: change.row, old: change.old }));
        }
      }
    }
    if (lines.length > 0) await write(this.out, `${lines.join('\n')}\n`);
    if (states.size === 0) return;
    const fields: Record<string, string> = {};
    for (const [oid, state] of states) {
      fields[String(oid)] = JSON.stringify({
        copyLsn: String(state.copyLsn),
        copyChunk: state.copyChunk,
        copyDone: state.copyDone,
        appliedLsn: String(state.applied.lsn),
        appliedOrdinal: state.applied.ordinal,
        quarantine: state.quarantine,
      });
    }
    await this.redis.hset(keys.tableStates(this.pipeline, this.name), fields);
  }

  async close(): Promise<void> {}
}

function line(relation: Relation, op: string, lsn: string, images: { row?: Value[]; old?: Value[] } = {}, backfill = false): string {
  let text = `{"table":${JSON.stringify(qualifiedName(relation))},"op":"${op}","lsn":"${lsn}"`;
  if (backfill) text += ',"backfill":true';
  if (images.row) text += `,"row":${object(relation, images.row, false)}`;
  if (images.old) text += `,"old":${object(relation, images.old, relation.replicaIdentity !== 'full')}`;
  const unchanged = images.row ? relation.columns.filter((_, index) => images.row![index] === UNCHANGED).map((column) => column.name) : [];
  if (unchanged.length > 0) text += `,"unchanged":${JSON.stringify(unchanged)}`;
  return `${text}}`;
}

/** The row as a JSON object with typed values; with keysOnly, only the identity columns. */
function object(relation: Relation, values: Value[], keysOnly: boolean): string {
  const fields: string[] = [];
  relation.columns.forEach((column, index) => {
    const value = values[index];
    if (value === UNCHANGED || (keysOnly && !column.isKey)) return;
    fields.push(`${JSON.stringify(column.name)}:${jsonFragment(value ?? null, column.baseTypeOid ?? column.typeOid)}`);
  });
  return `{${fields.join(',')}}`;
}

function write(out: Writable, text: string): Promise<void> {
  return new Promise((resolve, reject) => out.write(text, (error) => (error ? reject(error) : resolve())));
}
