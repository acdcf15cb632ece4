/** A table's place in DuckDB: its schema and name there. */
export interface TargetName {
  schema: string;
  name: string;
}

/** pg-replicate's own schema in the DuckDB file (the table states). */
export const STATE_SCHEMA = '_pg_replicate';

interface Placed {
  source: TargetName;
  target: TargetName;
}

/**
 * Where a source table goes in DuckDB, which matches identifiers case-insensitively even when
 * quoted: "public"."Orders" beside "public"."orders" would be the same table there. A table
 * with exactly the source name of one placed before (another OID) was dropped and created
 * again: it takes the old one's place (`replaces`). Otherwise the source schema and name are
 * kept unless they collide with a table already placed when case is ignored: then the later
 * table's name gets `__<oid>` ("Orders__16421"). A source schema named like pg-replicate's own goes to "<schema>__source".
 * Schemas DuckDB also uses as catalog names (temp, system) need nothing: every table is
 * addressed with the database's name in front.
 */
export function placeTable(oid: number, source: TargetName, placed: Map<number, Placed>): { target: TargetName; replaces?: number } {
  for (const [other, { source: otherSource, target }] of placed) {
    if (other !== oid && otherSource.schema === source.schema && otherSource.name === source.name) return { target, replaces: other };
  }
  const schema = source.schema.toLowerCase() === STATE_SCHEMA ? `${source.schema}__source` : source.schema;
  const fold = (name: TargetName) => `${name.schema.toLowerCase()}\u0000${name.name.toLowerCase()}`;
  const taken = (name: TargetName) => [...placed].some(([other, { target }]) => other !== oid && fold(target) === fold(name));
  let target = { schema, name: source.name };
  // A source table could even be named like the suffixed name: then a further suffix.
  if (taken(target)) target = { schema, name: `${source.name}__${oid}` };
  for (let n = 2; taken(target); n++) target = { schema, name: `${source.name}__${oid}_${n}` };
  return { target };
}
