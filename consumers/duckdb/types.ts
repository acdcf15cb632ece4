import type { Column } from '../../shared/events.js';
import { numericPrecision, typeKind } from '../../shared/pgtypes.js';

/** The DuckDB column type for a Postgres column, and the SQL that turns its staged text into it. */
export interface DuckDbType {
  sql: string;
  /** Expression converting `value` (the staged VARCHAR) to the column type. */
  cast: (value: string) => string;
}

const plain = (sql: string): DuckDbType => ({ sql, cast: (value) => `CAST(${value} AS ${sql})` });
const TEXT: DuckDbType = { sql: 'VARCHAR', cast: (value) => value };

/** Largest DECIMAL width DuckDB holds; wider or unconstrained numerics stay exact as text. */
const MAX_DECIMAL_WIDTH = 38;

export function duckDbType(column: Pick<Column, 'typeOid' | 'typeModifier'>): DuckDbType {
  switch (typeKind(column.typeOid)) {
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
      const precision = numericPrecision(column.typeModifier);
      if (!precision || precision.precision > MAX_DECIMAL_WIDTH) return TEXT;
      return plain(`DECIMAL(${precision.precision}, ${precision.scale})`);
    }
    case 'bytea':
      // Postgres' hex form is \x followed by the bytes in hex.
      return { sql: 'BLOB', cast: (value) => `unhex(substr(${value}, 3))` };
    case 'json':
      return plain('JSON');
    case 'uuid':
      return plain('UUID');
    case 'date':
      return plain('DATE');
    case 'time':
      return plain('TIME');
    case 'timetz':
      return plain('TIMETZ');
    case 'timestamp':
      return plain('TIMESTAMP');
    case 'timestamptz':
      return plain('TIMESTAMPTZ');
    case 'interval':
      // Postgres writes "+3 days" in mixed-sign intervals; DuckDB reads the same without the plus.
      return { sql: 'INTERVAL', cast: (value) => `CAST(replace(${value}, '+', '') AS INTERVAL)` };
    default:
      return TEXT;
  }
}
