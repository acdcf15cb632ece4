import type { Column } from '../../shared/events.js';
import { PgType, numericPrecision, typeKind } from '../../shared/pgtypes.js';
import { pgArrayToJson } from './arrays.js';

/**
 * How one Postgres column lands in DuckDB: the column type, an optional rewrite of the text in
 * JS before staging (for forms DuckDB does not read), and the SQL that casts the staged VARCHAR.
 */
export interface DuckDbType {
  sql: string;
  /** Rewrites Postgres' text into what `cast` reads; null for a value DuckDB cannot hold. */
  stage?: (text: string) => string | null;
  /** Expression converting `value` (the staged VARCHAR) to the column type. */
  cast: (value: string) => string;
}

const plain = (sql: string, stage?: DuckDbType['stage']): DuckDbType => ({ sql, cast: (value) => `CAST(${value} AS ${sql})`, ...(stage ? { stage } : {}) });
const TEXT: DuckDbType = { sql: 'VARCHAR', cast: (value) => value };

/** Largest DECIMAL width DuckDB holds; wider or unconstrained numerics stay exact as text. */
const MAX_DECIMAL_WIDTH = 38;

/** "0044-03-15 BC" (Postgres) → "-0043-03-15" (astronomical years, which DuckDB reads). */
function fromEra(text: string): string {
  if (!text.endsWith(' BC')) return text;
  const dash = text.indexOf('-');
  const year = Number(text.slice(0, dash));
  return `-${String(year - 1).padStart(4, '0')}${text.slice(dash, -3)}`;
}

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
      const precision = numericPrecision(typeModifier);
      if (!precision || precision.precision > MAX_DECIMAL_WIDTH) return TEXT;
      // DECIMAL has no NaN: it arrives as NULL (documented), the one value this mapping cannot hold.
      return plain(`DECIMAL(${precision.precision}, ${precision.scale})`, (text) => (text === 'NaN' ? null : text));
    }
    case 'bytea':
      // Postgres' hex form is \x followed by the bytes in hex.
      return { sql: 'BLOB', cast: (value) => `unhex(substr(${value}, 3))` };
    case 'json':
      return plain('JSON');
    case 'uuid':
      return plain('UUID');
    case 'date':
      return plain('DATE', fromEra);
    case 'time':
      return plain('TIME');
    case 'timetz':
      return plain('TIMETZ');
    case 'timestamp':
      return plain('TIMESTAMP', fromEra);
    case 'timestamptz':
      return plain('TIMESTAMPTZ', fromEra);
    case 'interval':
      // Postgres writes "+3 days" in mixed-sign intervals; DuckDB reads the same without the plus.
      return { sql: 'INTERVAL', cast: (value) => `CAST(replace(${value}, '+', '') AS INTERVAL)` };
    default:
      if (typeOid === PgType.money) {
        // lc_monetary=C on our connections: "-$1,234.56".
        return { sql: 'DECIMAL(19, 2)', cast: (value) => `CAST(replace(replace(${value}, '$', ''), ',', '') AS DECIMAL(19, 2))` };
      }
      return TEXT;
  }
}

/**
 * Arrays become DuckDB lists nested as deep as the column's declared dimensions, their elements
 * mapped like scalars; the text is rewritten to JSON in JS, then each element is cast in SQL.
 */
function listType(element: DuckDbType, dimensions: number): DuckDbType {
  const varcharList = `VARCHAR${'[]'.repeat(dimensions)}`;
  const transform = (value: string, depth: number): string => {
    const variable = `e${depth}`;
    const inner = depth === dimensions ? element.cast(variable) : transform(variable, depth + 1);
    return `list_transform(${value}, ${variable} -> ${inner})`;
  };
  const stageElement = element.stage;
  return {
    sql: `${element.sql}${'[]'.repeat(dimensions)}`,
    stage: (text) => pgArrayToJson(text, dimensions, stageElement),
    cast: (value) => transform(`CAST(CAST(${value} AS JSON) AS ${varcharList})`, 1),
  };
}

export function duckDbType(column: Pick<Column, 'typeOid' | 'typeModifier' | 'baseTypeOid' | 'elementTypeOid' | 'dimensions'>): DuckDbType {
  if (column.elementTypeOid !== undefined) {
    const element = scalarType(column.elementTypeOid, column.typeModifier);
    return listType(element, column.dimensions ?? 1);
  }
  return scalarType(column.baseTypeOid ?? column.typeOid, column.typeModifier);
}
