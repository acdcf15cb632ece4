import { createHash } from 'node:crypto';
import type { Column } from '../../shared/events.js';
import { decimalHolding, numericPrecision, PgType, typeKind } from '../../shared/pgtypes.js';
import { pgArrayToJson } from '../pgarray.js';

/**
 * How one Postgres column lands in BigQuery. Values travel as STRING through a staging table
 * (loaded as JSON lines), so each type has the JS rewrite of Postgres' text into a form
 * BigQuery's CAST reads, and the SQL that casts it. A value BigQuery cannot hold at all (dates
 * before year 1 or after 9999, infinities, NaN in a NUMERIC) is staged as NULL: documented.
 */
export interface BigQueryType {
  /** Column type as BigQuery DDL writes it. */
  sql: string;
  /** Postgres text → the staged STRING, or null where BigQuery has no such value. */
  stage: (text: string) => string | null;
  /** SQL turning the staged STRING `value` into the column type. */
  cast: (value: string) => string;
}

const same = (text: string) => text;
const castTo = (sql: string) => (value: string) => `CAST(${value} AS ${sql})`;
const typed = (sql: string, stage: (text: string) => string | null = same): BigQueryType => ({ sql, stage, cast: castTo(sql) });
const STRING: BigQueryType = { sql: 'STRING', stage: same, cast: (value) => value };
const JSON_TYPE = (stage: (text: string) => string | null): BigQueryType => ({
  sql: 'JSON',
  stage,
  // "round": JSON numbers beyond FLOAT64 are rounded rather than failing the whole batch.
  cast: (value) => `PARSE_JSON(${value}, wide_number_mode => 'round')`,
});

/** Years BigQuery's DATE, DATETIME and TIMESTAMP hold: 0001 to 9999 (no BC, no infinity). */
const IN_RANGE = /^\d{4}-/;
const inRange = (text: string) => (IN_RANGE.test(text) && !text.endsWith(' BC') ? text : null);

/** NUMERIC holds 29 integer and 9 fractional digits, BIGNUMERIC 38 and 38: past that, STRING keeps every digit. */
function numericType(typeModifier: number): BigQueryType {
  const declared = numericPrecision(typeModifier);
  if (!declared) return STRING;
  const { precision: p, scale: s } = decimalHolding(declared);
  const finite = (text: string) => (/^-?\d/.test(text) ? text : null); // NaN and ±Infinity have no NUMERIC value
  if (s <= 9 && p - s <= 29) return typed(`NUMERIC(${p}, ${s})`, finite);
  if (s <= 38 && p - s <= 38) return typed(`BIGNUMERIC(${p}, ${s})`, finite);
  return STRING;
}

const FLOAT_WORDS: Record<string, string> = { Infinity: 'inf', '-Infinity': '-inf', NaN: 'nan' };

/** Postgres interval text (IntervalStyle postgres) as BigQuery's canonical "Y-M D H:M:S.F". */
export function pgIntervalToBigQuery(text: string): string {
  let months = 0;
  let days = 0;
  let micros = 0n;
  for (const [, amount, unit] of text.matchAll(/([+-]?\d+) (year|mon|day)s?/g)) {
    if (unit === 'year') months += 12 * Number(amount);
    else if (unit === 'mon') months += Number(amount);
    else days += Number(amount);
  }
  const time = /([+-])?(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?$/.exec(text);
  if (time) {
    const [, sign, hours, minutes, seconds, fraction = ''] = time;
    const total = ((BigInt(hours) * 60n + BigInt(minutes)) * 60n + BigInt(seconds)) * 1_000_000n + BigInt(fraction.padEnd(6, '0'));
    micros = sign === '-' ? -total : total;
  }
  const absMonths = Math.abs(months);
  const absMicros = micros < 0n ? -micros : micros;
  const seconds = absMicros / 1_000_000n;
  const fraction = (absMicros % 1_000_000n).toString().padStart(6, '0').replace(/0+$/, '');
  const clock = `${seconds / 3600n}:${(seconds / 60n) % 60n}:${seconds % 60n}${fraction ? `.${fraction}` : ''}`;
  return `${months < 0 ? '-' : ''}${Math.floor(absMonths / 12)}-${absMonths % 12} ${days} ${micros < 0n ? '-' : ''}${clock}`;
}

/** A Postgres array's elements as JSON of their natural type: numbers and booleans as such, json embedded. */
function arrayAsJson(elementOid: number, dimensions: number) {
  const kind = typeKind(elementOid);
  const leaf = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(leaf);
    if (typeof value !== 'string') return value;
    switch (kind) {
      case 'boolean':
        return value === 't';
      case 'smallint':
      case 'integer':
      case 'bigint':
        return Number.isSafeInteger(Number(value)) ? Number(value) : value;
      case 'real':
      case 'double':
      case 'numeric':
        return Number.isFinite(Number(value)) && String(Number(value)) === value ? Number(value) : value;
      case 'json':
        return JSON.parse(value);
      default:
        return value;
    }
  };
  // Any nesting is fine in JSON: the declared dimensions only guide the parse.
  return (text: string) => JSON.stringify(leaf(JSON.parse(pgArrayToJson(text, dimensions))));
}

function scalarType(typeOid: number, typeModifier: number): BigQueryType {
  switch (typeKind(typeOid)) {
    case 'boolean':
      return typed('BOOL', (text) => (text === 't' ? 'true' : 'false'));
    case 'smallint':
    case 'integer':
    case 'bigint':
      return typed('INT64');
    case 'real':
    case 'double':
      return typed('FLOAT64', (text) => FLOAT_WORDS[text] ?? text);
    case 'numeric':
      return numericType(typeModifier);
    case 'bytea':
      // Postgres' hex form (\x…) becomes base64, which FROM_BASE64 reads.
      return { sql: 'BYTES', stage: (text) => Buffer.from(text.slice(2), 'hex').toString('base64'), cast: (value) => `FROM_BASE64(${value})` };
    case 'json':
      return JSON_TYPE(same);
    case 'date':
      return typed('DATE', inRange);
    case 'timestamp':
      return typed('DATETIME', inRange);
    case 'timestamptz':
      // The producer's session is in UTC: the offset is always +00, written +00:00 for BigQuery.
      return typed('TIMESTAMP', (text) => inRange(text)?.replace(/([+-]\d\d)$/, '$1:00') ?? null);
    case 'time':
      return typed('TIME', (text) => (text.startsWith('24:') ? null : text));
    case 'interval':
      return typed('INTERVAL', pgIntervalToBigQuery);
    default:
      if (typeOid === PgType.money) return typed('NUMERIC(19, 2)', (text) => text.replace(/[$,]/g, ''));
      return STRING;
  }
}

export function bigQueryType(column: Pick<Column, 'typeOid' | 'typeModifier' | 'baseTypeOid' | 'elementTypeOid' | 'dimensions'>): BigQueryType {
  if (column.elementTypeOid !== undefined) return JSON_TYPE(arrayAsJson(column.elementTypeOid, column.dimensions ?? 1));
  return scalarType(column.baseTypeOid ?? column.typeOid, column.typeModifier);
}

/**
 * BigQuery names hold letters, digits and _ and do not start with a digit; anything else
 * becomes _. Cleaning can make different names equal (`order-items`, `order_items`; every
 * non-ASCII name): a name that cleaning changed gets `__` and 8 hex digits of its SHA-1, so
 * distinct source names stay distinct, the same way every time.
 */
export function bigQueryName(name: string, mustMark = false): string {
  const cleaned = name.replace(/[^A-Za-z0-9_]/g, '_');
  const named = /^[0-9]/.test(cleaned) ? `_${cleaned}` : cleaned;
  return named === name && !mustMark ? named : `${named}__${createHash('sha1').update(name).digest('hex').slice(0, 8)}`;
}

/**
 * The BigQuery table for a source table: its name for tables in public, schema__name otherwise.
 * A schema or name that holds `__` itself would make that ambiguous (`a.b__c`, `a__b.c`, and
 * public's `a__b` beside `a.b`): such a table is marked as a cleaned name is.
 */
export function bigQueryTableName(relation: { schema: string; name: string }): string {
  const ambiguous = relation.schema.includes('__') || relation.name.includes('__');
  if (relation.schema === 'public') return bigQueryName(relation.name, ambiguous);
  const joined = `${relation.schema}__${relation.name}`;
  return ambiguous
    ? bigQueryName(`${relation.schema}.${relation.name}`)
    : bigQueryName(joined) === joined
      ? joined
      : `${bigQueryName(relation.schema)}__${bigQueryName(relation.name)}`;
}
