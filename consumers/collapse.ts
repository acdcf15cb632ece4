import { type RowChange, UNCHANGED, type Value } from '../shared/events.js';

/** A run of row changes to one keyed table, reduced to what the table must look like after it. */
export interface CollapsedChanges {
  /** The final image of each key the run leaves present. */
  rows: Value[][];
  /** Keys the run leaves absent (a key change deletes its old key). */
  deletedKeys: Value[][];
  /**
   * Rows that still hold UNCHANGED (TOASTed values an update did not touch), with the key under
   * which the destination's stored row holds those values.
   */
  lookups: Map<Value[], Value[]>;
}

/**
 * Collapses changes in stream order to one final image (or deletion) per key, so a destination
 * can apply a whole run as one delete of every key touched and one insert of the survivors.
 * Unchanged TOASTed values are filled from an earlier image in the run where there is one.
 */
export function collapseByKey(keyColumns: number[], changes: RowChange[]): CollapsedChanges {
  // Key columns are never NULL (primary key or replica identity index): one column's text is its key.
  const single = keyColumns.length === 1 ? keyColumns[0] : -1;
  const keyOf = (values: Value[]) => (single >= 0 ? (values[single] as string) : JSON.stringify(keyColumns.map((index) => values[index])));
  const keyValues = new Map<string, Value[]>();
  const finalImages = new Map<string, Value[] | null>();
  const lookups = new Map<Value[], Value[]>();
  for (const change of changes) {
    if (change.op === 'delete') {
      const key = keyOf(change.old!);
      keyValues.set(key, change.old!);
      finalImages.set(key, null);
      continue;
    }
    const keepsValues = change.row!.includes(UNCHANGED);
    // Copied only to be filled in: a row without unchanged values is taken as it is.
    const row = keepsValues ? [...change.row!] : change.row!;
    const key = keyOf(row);
    const oldValues = change.op === 'update' && change.old ? change.old : row;
    const oldKey = oldValues === row ? key : keyOf(oldValues);
    if (keepsValues) {
      const previous = finalImages.get(oldKey);
      if (previous) {
        for (let index = 0; index < row.length; index++) if (row[index] === UNCHANGED) row[index] = previous[index];
        // The earlier image may itself still wait for its stored values: look up where it would.
        if (row.includes(UNCHANGED)) lookups.set(row, lookups.get(previous)!);
      } else {
        lookups.set(
          row,
          keyColumns.map((index) => oldValues[index]),
        );
      }
    }
    if (oldKey !== key) {
      keyValues.set(oldKey, oldValues);
      finalImages.set(oldKey, null);
    }
    finalImages.set(key, row);
  }
  const rows: Value[][] = [];
  const deletedKeys: Value[][] = [];
  for (const [key, row] of finalImages) {
    if (row) rows.push(row);
    else deletedKeys.push(keyColumns.map((index) => keyValues.get(key)![index]));
  }
  return { rows, deletedKeys, lookups };
}

/**
 * For tables whose rows need not be unique (no key, or REPLICA IDENTITY FULL): the run as a net
 * count per distinct row image, positive to add copies, negative to remove them. Order within
 * the run no longer matters once it is netted.
 */
export function netRowCounts(changes: RowChange[]): { image: Value[]; count: number }[] {
  const counts = new Map<string, { image: Value[]; count: number }>();
  const add = (image: Value[], delta: number) => {
    const key = JSON.stringify(image);
    const entry = counts.get(key) ?? { image, count: 0 };
    entry.count += delta;
    counts.set(key, entry);
  };
  for (const change of changes) {
    if (change.op !== 'insert') {
      if (!change.old)
        throw new Error(`a table without replica identity sent a ${change.op}: it cannot be applied (ALTER TABLE … REPLICA IDENTITY FULL on the source)`);
      add(change.old, -1);
    }
    if (change.op !== 'delete')
      add(
        change.row!.map((value, index) => (value === UNCHANGED ? (change.old?.[index] ?? null) : value)),
        1,
      );
  }
  return [...counts.values()].filter((entry) => entry.count !== 0);
}
