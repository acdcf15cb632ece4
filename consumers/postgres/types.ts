import type { Column, Value } from '../../shared/events.js';
import { UNCHANGED } from '../../shared/events.js';

/** OIDs below this are built into every Postgres: the same type on the target as on the source. */
const FIRST_USER_OID = 16384;

/**
 * The type a column gets at the target, as a type OID and modifier for format_type(): the
 * source's own for built-in types (with their precision, length, dimensions of arrays), a
 * domain's base type, text for enums and composite types (whose definitions are the source's).
 */
export function targetType(column: Column): { oid: number; typmod: number; array: boolean } {
  if (column.typeOid < FIRST_USER_OID) return { oid: column.typeOid, typmod: column.typeModifier, array: false };
  // An array of an enum or a domain: of the elements' built-in type (text for enums).
  if (column.elementTypeOid !== undefined) return { oid: column.elementTypeOid, typmod: -1, array: true };
  if (column.baseTypeOid !== undefined && column.baseTypeOid < FIRST_USER_OID) return { oid: column.baseTypeOid, typmod: column.typeModifier, array: false };
  return { oid: 25, typmod: -1, array: false };
}

/** One value in Postgres' text COPY format: \N for NULL (and for UNCHANGED, filled in later), the rest escaped. */
export function copyField(value: Value): string {
  if (value === null || value === UNCHANGED) return '\\N';
  return value.replace(/[\\\n\r\t]/g, (character) => ({ '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t' })[character]!);
}

/** A quoted identifier. */
export const ident = (name: string) => `"${name.replace(/"/g, '""')}"`;
