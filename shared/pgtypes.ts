/**
 * What we know about Postgres' built-in types, by OID, shared by every destination. A type we
 * do not know is carried as its text form: never an error, never lost.
 */
export const PgType = {
  bool: 16,
  bytea: 17,
  char: 18,
  name: 19,
  int8: 20,
  int2: 21,
  int4: 23,
  text: 25,
  oid: 26,
  json: 114,
  xml: 142,
  float4: 700,
  float8: 701,
  money: 790,
  bpchar: 1042,
  varchar: 1043,
  date: 1082,
  time: 1083,
  timestamp: 1114,
  timestamptz: 1184,
  interval: 1186,
  timetz: 1266,
  numeric: 1700,
  uuid: 2950,
  jsonb: 3802,
} as const;

export type TypeKind =
  | 'boolean'
  | 'smallint'
  | 'integer'
  | 'bigint'
  | 'real'
  | 'double'
  | 'numeric'
  | 'text'
  | 'bytea'
  | 'json'
  | 'uuid'
  | 'date'
  | 'time'
  | 'timetz'
  | 'timestamp'
  | 'timestamptz'
  | 'interval'
  | 'other';

const KINDS = new Map<number, TypeKind>([
  [PgType.bool, 'boolean'],
  [PgType.int2, 'smallint'],
  [PgType.int4, 'integer'],
  [PgType.int8, 'bigint'],
  [PgType.oid, 'bigint'],
  [PgType.float4, 'real'],
  [PgType.float8, 'double'],
  [PgType.numeric, 'numeric'],
  [PgType.text, 'text'],
  [PgType.varchar, 'text'],
  [PgType.bpchar, 'text'],
  [PgType.name, 'text'],
  [PgType.char, 'text'],
  [PgType.bytea, 'bytea'],
  [PgType.json, 'json'],
  [PgType.jsonb, 'json'],
  [PgType.uuid, 'uuid'],
  [PgType.date, 'date'],
  [PgType.time, 'time'],
  [PgType.timetz, 'timetz'],
  [PgType.timestamp, 'timestamp'],
  [PgType.timestamptz, 'timestamptz'],
  [PgType.interval, 'interval'],
]);

export function typeKind(typeOid: number): TypeKind {
  return KINDS.get(typeOid) ?? 'other';
}

/** Precision and scale of a numeric column, or undefined for unconstrained numeric. */
export function numericPrecision(typeModifier: number): { precision: number; scale: number } | undefined {
  if (typeModifier < 4) return undefined;
  const packed = typeModifier - 4;
  // Postgres 15+ allows a scale from -1000 to 1000: 11 bits, signed.
  return { precision: (packed >> 16) & 0xffff, scale: ((packed & 0x7ff) ^ 1024) - 1024 };
}

/**
 * The smallest (precision, scale) with 0 ≤ scale ≤ precision that holds every value of
 * numeric(p, s), for destinations whose decimals need that: numeric(5,-2) holds integers of up
 * to 7 digits (DECIMAL(7,0)); numeric(2,5) values below 0.001 with 5 decimals (DECIMAL(5,5)).
 */
export function decimalHolding({ precision, scale }: { precision: number; scale: number }): { precision: number; scale: number } {
  if (scale < 0) return { precision: precision - scale, scale: 0 };
  if (scale > precision) return { precision: scale, scale };
  return { precision, scale };
}

const JSON_NUMBER = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$/;

/**
 * A value's text as a JSON fragment with its natural JSON type: numbers stay exact (int8 and
 * numeric are written digit for digit, not through a float), json/jsonb are embedded as JSON,
 * booleans are true/false, and everything else is a string.
 */
export function jsonFragment(text: string | null, typeOid: number): string {
  if (text === null) return 'null';
  switch (typeKind(typeOid)) {
    case 'boolean':
      return text === 't' ? 'true' : 'false';
    case 'smallint':
    case 'integer':
    case 'bigint':
    case 'real':
    case 'double':
    case 'numeric':
      return JSON_NUMBER.test(text) ? text : JSON.stringify(text);
    case 'json':
      return text;
    default:
      return JSON.stringify(text);
  }
}
