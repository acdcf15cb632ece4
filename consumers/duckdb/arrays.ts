/**
 * Postgres array text ("{1,NULL,"a b"}", "{{1,2},{3,4}}", "[0:1]={1,2}") read into DuckDB
 * lists of VARCHAR by SQL, so that no array passes through JS: DuckDB parses them on all its
 * threads, in the same statement that casts the elements.
 *
 * Postgres quotes an element when it is empty, NULL as text, or holds a quote, a backslash, a
 * brace, a comma or white space; inside quotes only `"` and `\` are escaped, by a backslash.
 * An unquoted element is therefore a run of anything but `,{}"`, and arrays are rectangular:
 * the first element's depth is the array's. Elements of numbers, times, booleans or UUIDs hold
 * none of these, nor anything DuckDB's own cast of a list literal reads specially (a quote
 * mark, brackets): their arrays are cast by DuckDB with the braces made brackets, half the work
 * of parsing them with regular expressions (measured). Strings, which may hold anything, are
 * parsed by the expressions.
 */

const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;

const QUOTED = String.raw`"(?:[^"\\]|\\.)*"`;
const ELEMENT = String.raw`${QUOTED}|[^,{}"]+`;

/** A sub-array `depth` levels deep: elements at depth 1, sub-arrays of depth − 1 above. */
function subArrayPattern(depth: number): string {
  if (depth === 1) return String.raw`\{(?:(?:${ELEMENT})(?:,(?:${ELEMENT}))*)?\}`;
  const inner = subArrayPattern(depth - 1);
  return String.raw`\{(?:${inner}(?:,${inner})*)?\}`;
}

/** The elements of a one-level array `value` ("{…}"), unquoted and unescaped; NULL for the NULL element. */
function elementsSql(value: string): string {
  // Values without a quote, nearly all of them for numbers, dates and plain words, are split at commas.
  const pieces = `CASE WHEN ${value} = '{}' THEN []::VARCHAR[] WHEN contains(${value}, '"') THEN regexp_extract_all(${value}, ${literal(ELEMENT)}) ELSE string_split(${value}[2:-2], ',') END`;
  const unquoted = `CASE WHEN e = 'NULL' THEN NULL WHEN e[1] <> '"' THEN e WHEN contains(e, '\\') THEN regexp_replace(e[2:-2], '\\\\(.)', '\\1', 'g') ELSE e[2:-2] END`;
  return `list_transform(${pieces}, e -> ${unquoted})`;
}

function nestedSql(value: string, depth: number): string {
  if (depth === 1) return elementsSql(value);
  const variable = `a${depth}`;
  return `list_transform(regexp_extract_all(${value}[2:-2], ${literal(subArrayPattern(depth - 1))}), ${variable} -> ${nestedSql(variable, depth - 1)})`;
}

/**
 * SQL reading the Postgres array text `value` as a VARCHAR list nested `dimensions` deep, its
 * elements `strings` (which may hold any character) or not. An array of another depth than the
 * column declares (Postgres does not hold columns to it) is an error naming the fix, which the
 * destination takes as a refusal of the rows.
 */
export function pgArrayListSql(value: string, dimensions: number, strings: boolean): string {
  // An explicit lower bound ("[0:1]=") is not kept: DuckDB lists start at 1.
  const body = `CASE WHEN starts_with(${value}, '[') THEN substr(${value}, strpos(${value}, '=') + 1) ELSE ${value} END`;
  const opening = '{'.repeat(dimensions);
  const wrongDepth = (more: 'more' | 'fewer') =>
    `error(${literal(`an array with ${more} dimensions than the column declares (${dimensions}): declare the column with its dimensions (e.g. int[][]) on the source`)})`;
  const list = strings ? nestedSql(body, dimensions) : `CAST(translate(${body}, '{}', '[]') AS VARCHAR${'[]'.repeat(dimensions)})`;
  return `CASE WHEN ${value} IS NULL THEN NULL WHEN ${body} = '{}' THEN ${nestedSql("'{}'", dimensions)} WHEN starts_with(${body}, '${opening}{') THEN ${wrongDepth('more')} WHEN NOT starts_with(${body}, '${opening}') THEN ${wrongDepth('fewer')} ELSE ${list} END`;
}
