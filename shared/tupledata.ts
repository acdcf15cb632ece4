import { UNCHANGED, type Value } from './events.js';

/**
 * Row images in pgoutput's own binary form (TupleData: a count, then per column 'n' for NULL,
 * 'u' for an unchanged TOASTed value, or 't' + length + text). The producer passes a change's
 * images on exactly as the walsender sent them, undecoded; a consumer decodes them into values
 * only where it needs them, and may move them on as bytes instead.
 * https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
 */

/** TupleData value kinds, and the kinds of old tuple an update or delete may carry. */
export const KIND_TEXT = 0x74; // t
export const KIND_NULL = 0x6e; // n
const KIND_UNCHANGED = 0x75; // u
const KIND_KEY = 0x4b; // K
const KIND_OLD = 0x4f; // O

export class ByteReader {
  offset: number;

  constructor(
    readonly buffer: Buffer,
    offset = 0,
  ) {
    this.offset = offset;
  }

  byte(): number {
    return this.buffer[this.offset++];
  }
  int16(): number {
    const value = this.buffer.readInt16BE(this.offset);
    this.offset += 2;
    return value;
  }
  uint16(): number {
    const value = this.buffer.readUInt16BE(this.offset);
    this.offset += 2;
    return value;
  }
  int32(): number {
    const value = this.buffer.readInt32BE(this.offset);
    this.offset += 4;
    return value;
  }
  uint32(): number {
    const value = this.buffer.readUInt32BE(this.offset);
    this.offset += 4;
    return value;
  }
  uint64(): bigint {
    const value = this.buffer.readBigUInt64BE(this.offset);
    this.offset += 8;
    return value;
  }
  /** A NUL-terminated string. */
  cstring(): string {
    const end = this.buffer.indexOf(0, this.offset);
    const value = this.buffer.toString('utf8', this.offset, end);
    this.offset = end + 1;
    return value;
  }
  tuple(): Value[] {
    const count = this.int16();
    const values: Value[] = new Array(count);
    const buffer = this.buffer;
    for (let i = 0; i < count; i++) {
      const kind = buffer[this.offset++];
      if (kind === KIND_TEXT) {
        const length = buffer.readInt32BE(this.offset);
        const start = this.offset + 4;
        this.offset = start + length;
        values[i] = buffer.toString('utf8', start, this.offset);
      } else if (kind === KIND_NULL) values[i] = null;
      else if (kind === KIND_UNCHANGED) values[i] = UNCHANGED;
      else throw new Error(`pgoutput: unexpected tuple value kind ${String.fromCharCode(kind)} (binary mode is not requested)`);
    }
    return values;
  }
}

export type RowOp = 'insert' | 'update' | 'delete';

/*
 * The byte-level view of a change's images, for consumers that move values on without decoding
 * them: where its tuples start (the offset of their column count), and keys read in place.
 */

/** Where the new tuple of an insert or update whose images start at `start` begins; -1 for a delete. */
export function newTupleAt(buffer: Buffer, op: RowOp, start = 0): number {
  if (op === 'delete') return -1;
  return op === 'update' && hasOldTuple(buffer, start) ? tupleEnd(buffer, start + 1) + 1 : start + 1;
}

/** Where the old tuple of a delete (or of an update, when Postgres sent one) begins; -1 when absent. */
export function oldTupleAt(buffer: Buffer, op: RowOp, start = 0): number {
  return op === 'delete' || (op === 'update' && hasOldTuple(buffer, start)) ? start + 1 : -1;
}

/**
 * The key columns' bytes in the tuple at `offset`, equal exactly for equal keys: as one string
 * (latin1: one character per byte; NUL, which Postgres text never holds, between columns), or,
 * for a key of one column written as an integer of up to 15 digits (an id), as that number,
 * which costs no allocation. No two texts give the same key: a number is made only of digits
 * without a leading zero (and no "-0"), so the text is the number's own.
 * Undefined when a key value is NULL or an unchanged TOASTed value, which bytes cannot stand for.
 */
export function tupleKey(images: Buffer, offset: number, keyColumns: number[]): string | number | undefined {
  const count = images.readInt16BE(offset);
  let at = offset + 2;
  let key = '';
  let next = 0;
  for (let column = 0; column < count && next < keyColumns.length; column++) {
    const kind = images[at++];
    if (column !== keyColumns[next]) {
      if (kind === KIND_TEXT) at += 4 + images.readInt32BE(at);
      continue;
    }
    if (kind !== KIND_TEXT) return undefined;
    const length = images.readInt32BE(at);
    if (keyColumns.length === 1) {
      const id = integerAt(images, at + 4, length);
      if (id !== undefined) return id;
    }
    const text = images.toString('latin1', at + 4, at + 4 + length);
    key = next === 0 ? text : `${key}\u0000${text}`;
    at += 4 + length;
    next++;
  }
  return next === keyColumns.length ? key : undefined;
}

const MINUS = 0x2d;
const ZERO = 0x30;
const NINE = 0x39;

/** The integer written in bytes [start, start + length), when it is up to 15 digits after an optional minus, without a leading zero ("0" itself, but not "-0"). */
function integerAt(bytes: Buffer, start: number, length: number): number | undefined {
  const negative = length > 1 && bytes[start] === MINUS;
  const first = negative ? start + 1 : start;
  const digits = start + length - first;
  if (digits === 0 || digits > 15 || (bytes[first] === ZERO && (digits > 1 || negative))) return undefined;
  let value = 0;
  for (let at = first; at < first + digits; at++) {
    const byte = bytes[at];
    if (byte < ZERO || byte > NINE) return undefined;
    value = value * 10 + (byte - ZERO);
  }
  return negative ? -value : value;
}

function hasOldTuple(buffer: Buffer, start: number): boolean {
  return buffer[start] === KIND_KEY || buffer[start] === KIND_OLD;
}

/** The offset just past the tuple whose count is at `offset`. */
function tupleEnd(buffer: Buffer, offset: number): number {
  const count = buffer.readInt16BE(offset);
  let at = offset + 2;
  for (let column = 0; column < count; column++) if (buffer[at++] === KIND_TEXT) at += 4 + buffer.readInt32BE(at);
  return at;
}

/**
 * The images of an insert, update or delete: the part of its pgoutput message after the
 * relation's OID ('N' new tuple; for updates and deletes 'K' key or 'O' old tuple first).
 */
export function readRowImages<T extends { row?: Value[]; old?: Value[] }>(reader: ByteReader, op: RowOp, into: T = {} as T): T {
  if (op === 'insert') {
    reader.byte(); // 'N'
    into.row = reader.tuple();
    return into;
  }
  if (op === 'delete') {
    reader.byte(); // 'K' or 'O'
    into.old = reader.tuple();
    return into;
  }
  const kind = reader.byte();
  if (kind === KIND_KEY || kind === KIND_OLD) {
    into.old = reader.tuple();
    reader.byte(); // 'N'
  }
  into.row = reader.tuple();
  return into;
}

/** The same images built from decoded values (changes that did not come straight from the slot). */
export function rowImages(op: RowOp, row: Value[] | undefined, old: Value[] | undefined): Buffer {
  const parts: Buffer[] = [];
  const tuple = (kind: string, values: Value[]) => {
    parts.push(Buffer.from(kind), int16(values.length));
    for (const value of values) {
      if (value === null) parts.push(Buffer.from('n'));
      else if (value === UNCHANGED) parts.push(Buffer.from('u'));
      else {
        const text = Buffer.from(value, 'utf8');
        parts.push(Buffer.from('t'), int32(text.length), text);
      }
    }
  };
  if (op === 'delete') tuple('K', old ?? []);
  else {
    if (op === 'update' && old) tuple('K', old);
    tuple('N', row ?? []);
  }
  return Buffer.concat(parts);
}

function int16(value: number): Buffer {
  const buffer = Buffer.alloc(2);
  buffer.writeInt16BE(value);
  return buffer;
}

function int32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeInt32BE(value);
  return buffer;
}
