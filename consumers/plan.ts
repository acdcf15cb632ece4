import { compareChangeVersion } from '../shared/codec.js';
import { type Batch, type Change, type CopyChunk, qualifiedName, type Relation } from '../shared/events.js';
import type { Step, TableState } from './destination.js';

/**
 * Turns a batch into the steps a destination still needs, given what it already applied: the
 * heart of "applied once". Changes at or below a table's version are dropped; a copy chunk
 * already applied is dropped; what remains, with the tables' new states, is applied atomically.
 */
export function planBatch(batch: Batch, states: Map<number, TableState>): { steps: Step[]; states: Map<number, TableState> } {
  return batch.copy ? planCopy(batch, states) : planChanges(batch, states);
}

/** Plans batches applied together, in order: each sees the states the ones before it leave. */
export function planBatches(batches: Batch[], states: Map<number, TableState>): { steps: Step[]; states: Map<number, TableState> } {
  const steps: Step[] = [];
  const updated = new Map<number, TableState>();
  for (const batch of batches) {
    const plan = planBatch(batch, updated.size > 0 ? new Map([...states, ...updated]) : states);
    steps.push(...plan.steps);
    for (const [oid, state] of plan.states) updated.set(oid, state);
  }
  return { steps, states: updated };
}

/** Whether a copy chunk still has to be applied to a table in this state (its rows are then read from Redis). */
export function copyIsNew(copy: CopyChunk, state: TableState | undefined): boolean {
  if (!state) return true;
  // A quarantined table takes only a fresh copy, which replaces what it holds and releases it
  // (a resumed copy's chunks would add to rows that missed changes).
  if (state.quarantine) return !copy.merge && copy.snapshotLsn > state.copyLsn;
  if (state.copyLsn > copy.snapshotLsn) return false; // a newer copy superseded this one
  return !(state.copyLsn === copy.snapshotLsn && (state.copyDone || state.copyChunk >= copy.chunk)); // else delivered again
}

function planCopy(batch: Batch, states: Map<number, TableState>) {
  const copy = batch.copy!;
  const relation = batch.relations[copy.relation];
  const state = states.get(relation.oid);
  const updated = new Map<number, TableState>();
  if (!copyIsNew(copy, state)) return { steps: [], states: updated };
  if (copy.rows > 0 && !copy.copyText) throw new Error(`copy chunk ${copy.id} of ${qualifiedName(relation)} was planned before its rows were read`);
  // Chunks of one copy reach a table's partition queue in increasing order, so the first one
  // seen of a copy is its first: it replaces the table.
  const first = !state || state.copyLsn !== copy.snapshotLsn;
  updated.set(relation.oid, {
    copyLsn: copy.snapshotLsn,
    copyChunk: copy.chunk,
    copyDone: copy.last,
    applied: { lsn: copy.snapshotLsn, ordinal: 0 },
  });
  const step: Step = { kind: 'copy', relation, replace: first, merge: copy.merge ?? false, copyText: copy.copyText ?? [], rows: copy.rows };
  if (copy.longestRow !== undefined) step.longestRow = copy.longestRow;
  return { steps: [step], states: updated };
}

function planChanges(batch: Batch, states: Map<number, TableState>) {
  const steps: Step[] = [];
  const stateOf = (oid: number): TableState => states.get(oid) ?? { copyLsn: 0n, copyChunk: -1, copyDone: false, applied: { lsn: 0n, ordinal: 0 } };
  // Each table's last change taken, its version the table's from then on: compared with the
  // changes after it as they are (a change read from a batch makes its version only when asked
  // for, shared/codec.ts), and made once per table at the end, not once per change.
  const taken = new Map<number, Change>();
  // A quarantined table's changes are skipped: the copy that releases it brings them.
  const isNew = (relation: Relation, change: Change) => {
    const last = taken.get(relation.oid);
    if (last) return compareChangeVersion(change, last) > 0;
    const state = stateOf(relation.oid);
    return !state.quarantine && compareChangeVersion(change, state.applied) > 0;
  };

  // Each table's changes go into one step, in their order, up to a TRUNCATE: transactions that
  // touch several tables of a partition (pgbench's do) would otherwise make a step, with its
  // staging and statements, of every change. Order across tables is not kept: tables of
  // different partitions are applied independently anyway.
  const open = new Map<number, Extract<Step, { kind: 'changes' }>>();
  const { changes } = batch;
  for (let index = 0; index < changes.length; index++) {
    const change = changes[index];
    if (change.op === 'truncate') {
      const relations = change.relations.map((index) => batch.relations[index]).filter((relation) => isNew(relation, change));
      if (relations.length === 0) continue;
      for (const relation of relations) taken.set(relation.oid, change);
      steps.push({ kind: 'truncate', relations, version: change.version });
      open.clear();
      continue;
    }
    const relation = batch.relations[change.relation];
    if (!isNew(relation, change)) continue;
    taken.set(relation.oid, change);
    const step = open.get(relation.oid);
    // A table's new shape (a schema change) starts a step of its own, after its earlier ones.
    if (step?.relation === relation) step.changes.push(change);
    else {
      const started: Step = { kind: 'changes', relation, changes: [change] };
      steps.push(started);
      open.set(relation.oid, started);
    }
  }
  const updated = new Map<number, TableState>();
  for (const [oid, change] of taken) updated.set(oid, { ...stateOf(oid), applied: change.version });
  return { steps, states: updated };
}
