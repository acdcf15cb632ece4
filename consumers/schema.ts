import type { Column, Relation } from '../shared/events.js';

/**
 * How a table's columns changed between the shape a destination holds and the source's shape
 * now, in the order to apply them: for each held column, its drop, or its rename and then its
 * new type; then the columns added. A column keeps its identity across a rename by its attnum
 * (by name for shapes stored before attnums were). Destinations turn these into their SQL.
 */
export type ColumnChange =
  | { kind: 'drop'; column: Column }
  | { kind: 'rename'; from: Column; to: Column }
  | { kind: 'retype'; from: Column; to: Column }
  | { kind: 'add'; column: Column };

/** The changes from `held` to `wanted`; `sameType` says whether the destination stores two columns alike. */
export function columnChanges(held: Column[], wanted: Column[], sameType: (a: Column, b: Column) => boolean): ColumnChange[] {
  const changes: ColumnChange[] = [];
  const matched = new Set<Column>();
  for (const column of held) {
    const now = counterpart(column, wanted);
    if (!now) {
      changes.push({ kind: 'drop', column });
      continue;
    }
    matched.add(now);
    if (now.name !== column.name) changes.push({ kind: 'rename', from: column, to: now });
    if (!sameType(column, now)) changes.push({ kind: 'retype', from: column, to: now });
  }
  for (const column of wanted) if (!matched.has(column)) changes.push({ kind: 'add', column });
  return changes;
}

/** The column of `columns` that `column` became: the same attnum, else the same name. */
export function counterpart(column: Column, columns: Column[]): Column | undefined {
  return columns.find((candidate) =>
    column.attnum !== undefined && candidate.attnum !== undefined ? candidate.attnum === column.attnum : candidate.name === column.name,
  );
}

/** The positions of the table's key columns (its replica identity). */
export function keyColumnsOf(relation: Relation): number[] {
  return relation.columns.flatMap((column, index) => (column.isKey ? [index] : []));
}
