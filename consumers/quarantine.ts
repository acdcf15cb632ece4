import type { Redis } from 'ioredis';
import { errorMessage } from '../shared/errors.js';
import { type Batch, qualifiedName, type Relation } from '../shared/events.js';
import { keys } from '../shared/keys.js';
import { log } from '../shared/log.js';
import { type Destination, type Quarantine, RefusedError, type Step, type TableState } from './destination.js';
import { planBatches } from './plan.js';

/** What `status` shows of a quarantined table: why, since when, and what to run once the cause is fixed. */
export interface QuarantineReport extends Quarantine {
  fix: string;
}

/**
 * A destination's quarantined tables (DESIGN invariant 3): a batch the destination refuses is
 * applied table by table, and each table it still refuses is marked quarantined in the
 * destination's own table state, in one transaction with nothing else, so that its later
 * changes are skipped and the partition's other tables go on. A fresh copy of the table
 * releases it. The destination's state is the truth; Redis holds a report of it for `status`,
 * written when a table is quarantined or released, and from the destination at start.
 */
export class Quarantines {
  /** Source table → its quarantine, as this process knows it (for metrics). */
  readonly tables = new Map<string, Quarantine>();

  constructor(
    private readonly redis: Redis,
    private readonly pipeline: string,
    private readonly name: string,
    private readonly destination: Destination,
  ) {}

  /** Reports the tables the destination holds quarantined (after a restart, or Redis lost its report). */
  async reportStored(): Promise<void> {
    for (const table of this.destination.tables?.() ?? []) {
      if (table.quarantine) await this.report(table.source, table.quarantine);
    }
  }

  /** Notes the tables an applied batch released: quarantined before it, and not after. */
  async noteReleased(before: Map<number, TableState>, after: Map<number, TableState>, relations: Relation[]): Promise<void> {
    for (const [oid, state] of after) {
      if (!before.get(oid)?.quarantine || state.quarantine) continue;
      const relation = relations.find((each) => each.oid === oid);
      if (!relation) continue;
      const table = qualifiedName(relation);
      this.tables.delete(table);
      await this.redis.hdel(keys.quarantined(this.pipeline, this.name), table);
      log.info({ destination: this.name, table }, 'table released from quarantine: a fresh copy replaced it');
    }
  }

  /**
   * Applies a batch the destination refused, table by table (tables are independent: their
   * order within the batch does not matter). Each table whose own steps are refused again is
   * quarantined with its state after the batch, so a re-delivery finds it done. Errors other
   * than refusals are thrown: the batch is retried in place.
   */
  async applyTableByTable(batch: Batch): Promise<string[]> {
    const states = await this.destination.tableStates(batch.relations);
    const plan = planBatches([batch], states);
    const quarantined: string[] = [];
    for (const [oid, state] of plan.states) {
      const relation = batch.relations.find((each) => each.oid === oid)!;
      try {
        await this.destination.apply(stepsOf(plan.steps, oid), new Map([[oid, state]]));
      } catch (error) {
        if (!(error instanceof RefusedError)) throw error;
        const quarantine = { error: errorMessage(error), since: new Date().toISOString() };
        // A table the destination has never held is made known by an empty step (created empty).
        const known = states.has(oid) ? [] : [{ kind: 'changes', relation, changes: [] } satisfies Step];
        await this.destination.apply(known, new Map([[oid, { ...state, quarantine }]]));
        const table = qualifiedName(relation);
        await this.report(table, quarantine);
        log.error(
          { destination: this.name, table, err: quarantine.error, fix: this.fix(table) },
          "the destination refuses this table's data: table quarantined (its changes are skipped until it is copied afresh); the partition's other tables go on",
        );
        quarantined.push(table);
      }
    }
    return quarantined;
  }

  private async report(table: string, quarantine: Quarantine): Promise<void> {
    this.tables.set(table, quarantine);
    const report: QuarantineReport = { ...quarantine, fix: this.fix(table) };
    await this.redis.hset(keys.quarantined(this.pipeline, this.name), table, JSON.stringify(report));
  }

  private fix(table: string): string {
    return `fix the cause (the error says what the destination refuses), then run: pg-replicate resync --table ${table} --destination ${this.name}`;
  }
}

/** A table's own steps of a batch (a truncate of several tables narrowed to it). */
function stepsOf(steps: Step[], oid: number): Step[] {
  return steps.flatMap((step): Step[] => {
    if (step.kind !== 'truncate') return step.relation.oid === oid ? [step] : [];
    const relations = step.relations.filter((relation) => relation.oid === oid);
    return relations.length > 0 ? [{ ...step, relations }] : [];
  });
}
