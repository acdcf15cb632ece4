import type { PostgresServer } from './services.js';

/**
 * The type zoo: one column per type with its edge values, copied and then streamed (insert,
 * update, delete), compared value by value. Each comparison turns both sides into the same
 * canonical text: Postgres with `pg`, DuckDB with `duck` (`$` stands for the column).
 */
export type Compare = { pg: string; duck: string; parse?: 'float' | 'json' };
const TEXT: Compare = { pg: '$::text', duck: 'CAST($ AS VARCHAR)' };
const FLOAT: Compare = { pg: '$::text', duck: 'CAST($ AS VARCHAR)', parse: 'float' };
/** The type's output function (what replication sends), where ::text differs from it (char(n) padding, inet masks). */
const OUTPUT: Compare = { pg: '$', duck: 'CAST($ AS VARCHAR)' };
const BOOL: Compare = { pg: "CASE WHEN $ THEN 't' WHEN NOT $ THEN 'f' END", duck: "CASE WHEN $ THEN 't' WHEN NOT $ THEN 'f' END" };
const BYTES: Compare = { pg: "encode($, 'hex')", duck: 'lower(hex($))' };
const NUMBERS: Compare = { pg: '$::numeric::text', duck: 'CAST($ AS VARCHAR)' };
const DAYS: Compare = {
  pg: "CASE WHEN isfinite($) THEN ($ - date '2000-01-01')::text ELSE $::text END",
  duck: "CASE WHEN isinf($) THEN CASE WHEN $ > DATE '2000-01-01' THEN 'infinity' ELSE '-infinity' END ELSE CAST(date_diff('day', DATE '2000-01-01', $) AS VARCHAR) END",
};
const MICROS: Compare = {
  pg: 'CASE WHEN isfinite($) THEN (extract(epoch from $) * 1000000)::bigint::text ELSE $::text END',
  duck: "CASE WHEN isinf($) THEN CASE WHEN epoch_us(CAST($ AS TIMESTAMP)) IS NULL AND CAST($ AS VARCHAR) LIKE '-%' THEN '-infinity' ELSE CASE WHEN CAST($ AS VARCHAR) LIKE '-%' THEN '-infinity' ELSE 'infinity' END END ELSE CAST(epoch_us($) AS VARCHAR) END",
};
const INTERVAL: Compare = {
  pg: "(extract(year from $) * 12 + extract(month from $))::text || ' ' || extract(day from $)::text || ' ' || (extract(hour from $) * 3600000000 + extract(minute from $) * 60000000 + extract(microseconds from $))::bigint::text",
  duck: "CAST(datepart('year', $) * 12 + datepart('month', $) AS VARCHAR) || ' ' || CAST(datepart('day', $) AS VARCHAR) || ' ' || CAST(datepart('hour', $)::BIGINT * 3600000000 + datepart('minute', $)::BIGINT * 60000000 + datepart('microseconds', $) AS VARCHAR)",
};
export const ARRAY: Compare = { pg: 'array_to_json($)::text', duck: 'CAST(to_json($) AS VARCHAR)', parse: 'json' };

export const ZOO: { name: string; type: string; values: string[]; compare: Compare }[] = [
  { name: 'c_int2', type: 'smallint', values: ['-32768', '32767', '0'], compare: TEXT },
  { name: 'c_int4', type: 'integer', values: ['-2147483648', '2147483647'], compare: TEXT },
  { name: 'c_int8', type: 'bigint', values: ['-9223372036854775808', '9223372036854775807'], compare: TEXT },
  { name: 'c_float4', type: 'real', values: ["'NaN'", "'Infinity'", "'-Infinity'", "'-0'", '1.5', '3.4028235e38'], compare: FLOAT },
  { name: 'c_float8', type: 'double precision', values: ["'NaN'", "'-Infinity'", "'-0'", '0.1', '1e308', '5e-324'], compare: FLOAT },
  { name: 'c_numeric_ps', type: 'numeric(12,2)', values: ['123.45', "'NaN'", '-0.01', '9999999999.99'], compare: TEXT },
  { name: 'c_numeric', type: 'numeric', values: [`'${'1'.repeat(1000)}.${'9'.repeat(20)}'`, "'NaN'", "'Infinity'", '-0.000000000000000000001'], compare: TEXT },
  { name: 'c_numeric_wide', type: 'numeric(60,20)', values: ['12345678901234567890123456789012345678.12345678901234567890'], compare: TEXT },
  { name: 'c_money', type: 'money', values: ["'1234.56'", "'-0.01'"], compare: NUMBERS },
  {
    name: 'c_text',
    type: 'text',
    values: ["E'tab\\there\\nnewline \\\\ back \"quote\" ''single'' é 😀'", "''", 'E\'comma, \\r\\n crlf ""\'', "E'unit \\x1f record \\x1e separators'"],
    compare: TEXT,
  },
  { name: 'c_varchar', type: 'varchar(10)', values: ["'short'"], compare: TEXT },
  { name: 'c_char', type: 'char(5)', values: ["'ab'"], compare: OUTPUT },
  { name: 'c_name', type: 'name', values: ["'a_name'"], compare: TEXT },
  { name: 'c_qchar', type: '"char"', values: ["'x'"], compare: TEXT },
  { name: 'c_bytea', type: 'bytea', values: ["'\\x00'", "'\\x0001ff00'", "''"], compare: BYTES },
  { name: 'c_bool', type: 'boolean', values: ['true', 'false'], compare: BOOL },
  { name: 'c_date', type: 'date', values: ["'2024-02-29'", "'0044-03-15 BC'", "'infinity'", "'-infinity'"], compare: DAYS },
  { name: 'c_time', type: 'time', values: ["'00:00:00'", "'23:59:59.999999'", "'24:00:00'"], compare: TEXT },
  { name: 'c_timetz', type: 'timetz', values: ["'12:00:00+05:30'", "'00:00:01.5-08'"], compare: TEXT },
  {
    name: 'c_timestamp',
    type: 'timestamp',
    values: ["'2024-01-01 12:34:56.123456'", "'0044-03-15 10:00:00 BC'", "'infinity'", "'-infinity'"],
    compare: MICROS,
  },
  { name: 'c_timestamptz', type: 'timestamptz', values: ["'2024-01-01 12:34:56.654321+02'", "'1999-12-31 23:59:59.999999-11'", "'infinity'"], compare: MICROS },
  {
    name: 'c_interval',
    type: 'interval',
    values: ["'1 year 2 mons 3 days 04:05:06.789'", "'-1 days +02:00:00'", "'0'", "'-3 mons -00:00:00.000001'"],
    compare: INTERVAL,
  },
  { name: 'c_uuid', type: 'uuid', values: ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"], compare: TEXT },
  { name: 'c_json', type: 'json', values: [`'{"b": [1, 2.50, "é\\\\n\\\\u00e9"],   "a": null}'`], compare: TEXT },
  {
    name: 'c_jsonb',
    type: 'jsonb',
    values: [`'{"b": [1, 2.50, "é\\\\n\\\\u00e9"], "a": {"nested": [true, null]}}'`, "'[]'", '\'"just a string"\''],
    compare: TEXT,
  },
  { name: 'c_xml', type: 'xml', values: ['\'<a x="1">text</a>\''], compare: TEXT },
  { name: 'c_inet', type: 'inet', values: ["'192.168.0.1/24'", "'::1'"], compare: OUTPUT },
  { name: 'c_cidr', type: 'cidr', values: ["'10.0.0.0/8'"], compare: OUTPUT },
  { name: 'c_macaddr', type: 'macaddr', values: ["'08:00:2b:01:02:03'"], compare: TEXT },
  { name: 'c_macaddr8', type: 'macaddr8', values: ["'08:00:2b:01:02:03:04:05'"], compare: TEXT },
  { name: 'c_bit', type: 'bit(4)', values: ["B'1010'"], compare: TEXT },
  { name: 'c_varbit', type: 'varbit', values: ["B'101'", "B''"], compare: TEXT },
  { name: 'c_tsvector', type: 'tsvector', values: ["'a fat cat sat'"], compare: TEXT },
  { name: 'c_point', type: 'point', values: ["'(1.5,-2)'"], compare: TEXT },
  { name: 'c_box', type: 'box', values: ["'((0,0),(1,1))'"], compare: TEXT },
  { name: 'c_polygon', type: 'polygon', values: ["'((0,0),(1,0),(0,1))'"], compare: TEXT },
  { name: 'c_circle', type: 'circle', values: ["'<(0,0),2>'"], compare: TEXT },
  { name: 'c_int4range', type: 'int4range', values: ["'[1,10)'", "'empty'"], compare: TEXT },
  { name: 'c_tstzrange', type: 'tstzrange', values: ["'[2024-01-01 00:00:00+00,infinity)'"], compare: TEXT },
  { name: 'c_multirange', type: 'int4multirange', values: ["'{[1,3),[5,7)}'"], compare: TEXT },
  { name: 'c_oid', type: 'oid', values: ['4294967295'], compare: TEXT },
  { name: 'c_pg_lsn', type: 'pg_lsn', values: ["'16/B374D848'"], compare: TEXT },
  { name: 'c_hstore', type: 'hstore', values: [`'"a"=>"1", "b"=>NULL'`], compare: TEXT },
  { name: 'c_enum', type: 'zoo_mood', values: ["'happy'", "'sad'"], compare: TEXT },
  { name: 'c_domain', type: 'zoo_positive', values: ['42'], compare: TEXT },
  { name: 'c_domain_numeric', type: 'zoo_price', values: ['19.99'], compare: TEXT },
  { name: 'c_composite', type: 'zoo_pair', values: ["ROW(1, 'a b')"], compare: TEXT },
  { name: 'c_int_array', type: 'integer[]', values: ["'{1,NULL,3}'", "'{}'", "'[0:1]={5,6}'"], compare: ARRAY },
  { name: 'c_text_array', type: 'text[]', values: [`'{"a b","c\\"d",NULL,"NULL",""}'`, `'{"{x}",",","back\\\\slash","} ,{",plain}'`], compare: ARRAY },
  { name: 'c_matrix', type: 'integer[][]', values: ["'{{1,2},{3,NULL}}'", "'{}'"], compare: ARRAY },
  { name: 'c_cube', type: 'integer[][][]', values: ["'{{{1,2}},{{3,NULL}}}'", "'{}'"], compare: ARRAY },
  { name: 'c_numeric_array', type: 'numeric(5,2)[]', values: ["'{1.50,-2.25}'"], compare: ARRAY },
  { name: 'c_date_array', type: 'date[]', values: ["'{2024-01-01,NULL}'"], compare: ARRAY },
  { name: 'c_enum_array', type: 'zoo_mood[]', values: ["'{happy,sad}'"], compare: ARRAY },
  { name: 'c_bool_array', type: 'boolean[]', values: ["'{t,f,NULL}'"], compare: ARRAY },
];

export const ROWS = 6;
/** The same zoo without arrays (whose text DuckDB parses itself). */
const FLAT = ZOO.filter((column) => column.compare !== ARRAY);
export const TABLES: [string, typeof ZOO][] = [
  ['zoo', ZOO],
  ['zoo_flat', FLAT],
];
export const valuesFor = (id: number, columns = ZOO) => columns.map((column) => `(${column.values[id % column.values.length]})::${column.type}`);

/** The zoo's types, its two tables (with their rows) and a publication of them. */
export const zooTables = (publication: string) => `
  CREATE EXTENSION IF NOT EXISTS hstore;
  CREATE TYPE zoo_mood AS ENUM ('happy', 'sad');
  CREATE DOMAIN zoo_positive AS integer CHECK (VALUE > 0);
  CREATE DOMAIN zoo_price AS numeric(10,2);
  CREATE TYPE zoo_pair AS (x integer, y text);
  ${TABLES.map(
    ([table, columns]) => `
    CREATE TABLE ${table} (id int PRIMARY KEY, ${columns.map((column) => `${column.name} ${column.type}`).join(', ')});
    INSERT INTO ${table} VALUES ${Array.from({ length: ROWS }, (_, id) => `(${id}, ${valuesFor(id, columns).join(', ')})`).join(', ')};
    INSERT INTO ${table} (id) VALUES (1000);`,
  ).join('\n')}
  CREATE PUBLICATION ${publication} FOR TABLE zoo, zoo_flat;
`;

/** Inserts, updates (every column) and deletes in both zoo tables, streamed. */
export async function changeZoo(pg: PostgresServer): Promise<void> {
  for (const [table, columns] of TABLES) {
    for (let id = ROWS; id < 2 * ROWS; id++) await pg.query(`INSERT INTO ${table} VALUES (${id}, ${valuesFor(id + 1, columns).join(', ')})`);
    await pg.query(`UPDATE ${table} SET (${columns.map((column) => column.name).join(', ')}) = (${valuesFor(3, columns).join(', ')}) WHERE id IN (0, ${ROWS})`);
    await pg.query(`DELETE FROM ${table} WHERE id IN (1, ${ROWS + 1})`);
    await pg.query(`INSERT INTO ${table} (id) VALUES (1001)`);
  }
}
