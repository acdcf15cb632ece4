import type { Relation } from '../shared/events.js';
import type { Step } from './destination.js';

/**
 * The relation with column names a destination that ignores case (DuckDB; BigQuery's columns)
 * can tell apart: a column whose name equals an earlier one's when case is ignored ("ID"
 * beside "id") is named `<name>__<attnum>`. It depends on the
 * columns alone, so every batch gives the same names; were the earlier column dropped, the
 * later one would be renamed back, as a source rename is followed.
 */
export function withDistinctColumnNames<T extends Relation>(relation: T): T {
  const seen = new Set<string>();
  let renamed = false;
  const columns = relation.columns.map((column, index) => {
    let name = column.name;
    for (let n = 1; seen.has(name.toLowerCase()); n++) name = `${column.name}__${column.attnum ?? index + 1}${n > 1 ? `_${n}` : ''}`;
    seen.add(name.toLowerCase());
    if (name === column.name) return column;
    renamed = true;
    return { ...column, name };
  });
  return renamed ? { ...relation, columns } : relation;
}

/** The steps with every relation's columns named apart (withDistinctColumnNames); their changes are the same arrays. */
export function withDistinctColumnNamesIn(steps: Step[]): Step[] {
  return steps.map((step) =>
    step.kind === 'truncate'
      ? { ...step, relations: step.relations.map(withDistinctColumnNames) }
      : { ...step, relation: withDistinctColumnNames(step.relation) },
  );
}
