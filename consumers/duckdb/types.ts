import type { Column } from '../../shared/events.js';
import { decimalHolding, numericPrecision, PgType, typeKind } from '../../shared/pgtypes.js';
import { pgArrayListSql } from './arrays.js';

/**
 * How one Postgres column lands in DuckDB: the column type and the SQL that turns Postgres'
 * text (staged as VARCHAR) into it.
 */
export interface DuckDbType {
  sql: string;
  /** Expression converting `value` (the staged VARCHAR) to the column type. */
  cast: (value: string) => string;
  /** Postgres' text output of the type never holds a backslash: a copied value needs no unescaping. */
  backslashFree?: boolean;
  /** DuckDB stores the values as strings (VARCHAR, JSON, BLOB): it weighs a dictionary against FSST for them. */
  strings?: boolean;
}

/** A type DuckDB casts straight from Postgres' text (all but JSON are numbers, times or UUIDs: no backslash). */
const plain = (sql: string): DuckDbType => ({ sql, cast: (value) => `CAST(${value} AS ${sql})`, backslashFree: sql !== 'JSON', strings: sql === 'JSON' });
const TEXT: DuckDbType = { sql: 'VARCHAR', cast: (value) => value, strings: true };

/** Largest DECIMAL width DuckDB holds; wider or unconstrained numerics stay exact as text. */
const MAX_DECIMAL_WIDTH = 38;

/**
 * Dates and timestamps: "0044-03-15 10:00 BC" (Postgres) is "-0043-03-15 10:00" in the
 * astronomical years DuckDB reads. A timestamp after DuckDB's last (294247-01-10; Postgres
 * goes on to 294276) is 'infinity', as any value past the end of the type's range (documented):
 * a value that could not be stored would stop its table's partition for good.
 */
const temporal = (sql: string): DuckDbType => ({
  sql,
  backslashFree: true,
  cast: (value) =>
    `CASE WHEN ${value} IS NULL THEN NULL WHEN ${value} LIKE '% BC' THEN CAST('-' || lpad(CAST(CAST(split_part(${value}, '-', 1) AS INTEGER) - 1 AS VARCHAR), 4, '0') || substr(${value}, strpos(${value}, '-'), length(${value}) - strpos(${value}, '-') - 2) AS ${sql}) ELSE coalesce(TRY_CAST(${value} AS ${sql}), CASE WHEN ${value} SIMILAR TO '[0-9]{6}-.*' THEN CAST('infinity' AS ${sql}) ELSE CAST(${value} AS ${sql}) END) END`,
});

/** The DuckDB type for a built-in Postgres type (domains and enums resolved by the producer). */
function scalarType(typeOid: number, typeModifier: number): DuckDbType {
  switch (typeKind(typeOid)) {
    case 'boolean':
      return plain('BOOLEAN');
    case 'smallint':
      return plain('SMALLINT');
    case 'integer':
      return plain('INTEGER');
    case 'bigint':
      return plain('BIGINT');
    case 'real':
      return plain('FLOAT');
    case 'double':
      return plain('DOUBLE');
    case 'numeric': {
      const declared = numericPrecision(typeModifier);
      const precision = declared && decimalHolding(declared);
      if (!precision || precision.precision > MAX_DECIMAL_WIDTH) return TEXT;
      // DECIMAL has no NaN: it arrives as NULL (documented), the one value this mapping cannot hold.
      const sql = `DECIMAL(${precision.precision}, ${precision.scale})`;
      return { sql, cast: (value) => `CAST(NULLIF(${value}, 'NaN') AS ${sql})`, backslashFree: true };
    }
    case 'bytea':
      // Postgres' hex form is \x followed by the bytes in hex.
      return { sql: 'BLOB', cast: (value) => `unhex(substr(${value}, 3))`, strings: true };
    case 'json':
      return plain('JSON');
    case 'uuid':
      return plain('UUID');
    case 'date':
      return temporal('DATE');
    case 'time':
      return plain('TIME');
    case 'timetz':
      return plain('TIMETZ');
    case 'timestamp':
      return temporal('TIMESTAMP');
    case 'timestamptz':
      return temporal('TIMESTAMPTZ');
    case 'interval':
      // Postgres writes "+3 days" in mixed-sign intervals; DuckDB reads the same without the plus.
      return { sql: 'INTERVAL', cast: (value) => `CAST(replace(${value}, '+', '') AS INTERVAL)`, backslashFree: true };
    default:
      if (typeOid === PgType.money) {
        // lc_monetary=C on our connections: "-$1,234.56".
        return { sql: 'DECIMAL(19, 2)', cast: (value) => `CAST(replace(replace(${value}, '$', ''), ',', '') AS DECIMAL(19, 2))`, backslashFree: true };
      }
      return TEXT;
  }
}

/**
 * Arrays become DuckDB lists nested as deep as the column's declared dimensions, their elements
 * mapped like scalars: DuckDB reads the array text and casts each element.
 */
function listType(element: DuckDbType, dimensions: number): DuckDbType {
  const transform = (value: string, depth: number): string => {
    const variable = `e${depth}`;
    const inner = depth === dimensions ? element.cast(variable) : transform(variable, depth + 1);
    return `list_transform(${value}, ${variable} -> ${inner})`;
  };
  return {
    sql: `${element.sql}${'[]'.repeat(dimensions)}`,
    cast: (value) => transform(pgArrayListSql(value, dimensions, element.strings === true), 1),
  };
}

/**
 * From this share of distinct values on (Postgres' statistics), a string column is stored with
 * FSST, or uncompressed where FSST does not pay, and DuckDB does not weigh a dictionary for it:
 * that weighing was a quarter of DuckDB's CPU in a copy of mostly distinct strings. Left to
 * choose, DuckDB took a dictionary with each value on 10 neighbouring rows, FSST already with 2
 * (measured); where a dictionary wins it makes queries faster, so below this DuckDB chooses.
 */
const MOSTLY_DISTINCT = 0.5;

/** The column's definition in CREATE TABLE: its name, type and, where it is known to pay, its compression. */
export function duckDbColumnSql(column: Column, name: string): string {
  const type = duckDbType(column);
  const storage = type.strings && (column.distinctShare ?? 0) >= MOSTLY_DISTINCT ? ' USING COMPRESSION fsst' : '';
  return `${name} ${type.sql}${storage}`;
}

export function duckDbType(column: Pick<Column, 'typeOid' | 'typeModifier' | 'baseTypeOid' | 'elementTypeOid' | 'dimensions'>): DuckDbType {
  if (column.elementTypeOid !== undefined) {
    const element = scalarType(column.elementTypeOid, column.typeModifier);
    return listType(element, column.dimensions ?? 1);
  }
  return scalarType(column.baseTypeOid ?? column.typeOid, column.typeModifier);
}
