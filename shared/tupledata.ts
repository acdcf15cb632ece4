import { UNCHANGED, type Value } from './events.js';

/**
 * Row images in pgoutput's own binary form (TupleData: a count, then per column 'n' for NULL,
 * 'u' for an unchanged TOASTed value, or 't' + length + text). The producer passes a change's
 * images on exactly as the walsender sent them, undecoded; the consumer's codec decodes them.
 * https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
 */

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
      if (kind === 0x74 /* t */) {
        const length = buffer.readInt32BE(this.offset);
        const start = this.offset + 4;
        this.offset = start + length;
        values[i] = buffer.toString('utf8', start, this.offset);
      } else if (kind === 0x6e /* n */) values[i] = null;
      else if (kind === 0x75 /* u */) values[i] = UNCHANGED;
      else throw new Error(`pgoutput: unexpected tuple value kind ${String.fromCharCode(kind)} (binary mode is not requested)`);
    }
    return values;
  }
}

export type RowOp = 'insert' | 'update' | 'delete';

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
  if (kind === 0x4b /* K */ || kind === 0x4f /* O */) {
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
